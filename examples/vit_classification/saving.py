# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""What a run leaves in ``--output-dir`` and how to get the trained classifier back.

``adapter/`` for the PEFT methods (``save_pretrained``: the adapter and its classifier head) and for ``linear`` (the
head's weights alone), ``model/`` for ``full`` (the whole fine-tuned model); ``load_trained`` rebuilds the classifier
from either, and ``push_to_hub`` uploads it.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Optional

from torch import nn

import gated_vpt

from .backbone import load_base_model
from .methods import PEFT_METHODS

HEAD_FILE = "classifier.safetensors"


def saved_dir(output_dir: str | os.PathLike[str], method: str) -> pathlib.Path:
    """Where `run` saves what it trained: `model/` for full fine-tuning (a whole model, not an adapter), else
    `adapter/` (a PEFT adapter with its head, or for linear the head alone)."""
    return pathlib.Path(output_dir) / ("model" if method == "full" else "adapter")


def save_trained(model: nn.Module, method: str, path: pathlib.Path) -> None:
    """PEFT methods: `save_pretrained` (adapter + head). linear: the head's weights only. full: the whole model."""
    path.mkdir(parents=True, exist_ok=True)
    if method in PEFT_METHODS or method == "full":
        model.save_pretrained(path)
    else:
        from safetensors.torch import save_file

        head = {k: v.detach().contiguous() for k, v in model.classifier.state_dict().items()}
        save_file(head, path / HEAD_FILE, metadata={"format": "pt"})


def dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load_trained(
    model_path: str,
    trained_dir: str | os.PathLike[str],
    class_names: Sequence[str],
    attn_implementation: Optional[str] = None,
) -> nn.Module:
    """Rebuild the trained classifier, in eval mode, from what `save_trained` wrote: `--output-dir/adapter` (PEFT
    methods, linear), `--output-dir/model` (full), or `--output-dir` itself (whichever of the two it holds).
    `attn_implementation` (results.json's, for the run's exact numbers) is transformers' default where None."""
    trained_dir = pathlib.Path(trained_dir)
    if not any((trained_dir / name).is_file() for name in ("adapter_config.json", HEAD_FILE, "config.json")):
        found = [d for d in (trained_dir / "adapter", trained_dir / "model") if d.is_dir()]
        if len(found) != 1:
            raise FileNotFoundError(f"{trained_dir} holds no trained adapter or model (nor one adapter/ or model/).")
        trained_dir = found[0]
    if (trained_dir / "adapter_config.json").is_file():
        base = load_base_model(model_path, class_names, attn_implementation)
        return gated_vpt.from_pretrained(base, trained_dir).eval()
    if (trained_dir / HEAD_FILE).is_file():
        from safetensors.torch import load_file

        model = load_base_model(model_path, class_names, attn_implementation)
        model.classifier.load_state_dict(load_file(trained_dir / HEAD_FILE))
        return model.eval()
    from transformers import AutoModelForImageClassification

    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return AutoModelForImageClassification.from_pretrained(trained_dir, **extra).eval()


def push_to_hub(model: nn.Module, method: str, repo_id: str, saved: pathlib.Path, private: bool) -> str:
    """Upload what `save_trained` wrote. Our prompt adapters go through `gated_vpt.io.hub.push_adapter_to_hub` (PEFT's
    `push_to_hub` is routed there), which writes a model card saying how to load them."""
    if method in PEFT_METHODS or method == "full":
        result = model.push_to_hub(repo_id, private=private, commit_message=f"Upload {method} adapter (gated-vpt)")
    else:
        from huggingface_hub import HfApi

        api = HfApi()
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        result = api.upload_folder(repo_id=repo_id, folder_path=str(saved), commit_message="Upload linear head")
    return str(getattr(result, "commit_url", None) or result)
