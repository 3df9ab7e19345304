# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Loading our adapters and sharing them on the Hub.

PEFT discovers no plugins: `PeftModel.from_pretrained` on a `GATED_PROMPT` adapter fails with a bare
`KeyError: 'GATED_PROMPT'` unless `gated_vpt` was imported first. `from_pretrained` here is the loader that always
works (importing it imports the package) and checks the adapter before touching the model.

`PeftModel.push_to_hub` comes from transformers' `PushToHubMixin`, which replaces PEFT's model card with a generic
one (`library_name: transformers`, no loading instructions). For adapters of our types only, we route
`push_to_hub` through `push_adapter_to_hub` and add a section to the card that PEFT writes, saying what the adapter
is and how to load it (import included). Other PEFT adapters are left to PEFT's own code.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

from huggingface_hub import HfApi
from peft import PeftConfig, PeftModel

from .prompt_config import PromptConfigBase

CARD_MARKER = "<!-- gated-vpt adapter -->"
CARD_TAGS = ("gated-vpt", "visual-prompt-tuning", "peft")


def _prompt_config(model: PeftModel) -> Optional[PromptConfigBase]:
    config = model.peft_config.get(model.active_adapter) if model.peft_config else None
    return config if isinstance(config, PromptConfigBase) else None


def from_pretrained(
    model: Any, model_id: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False, **kwargs: Any
) -> PeftModel:
    """Load a gated-vpt adapter (local folder or Hub repo) onto `model`; same arguments as
    `peft.PeftModel.from_pretrained`. Unlike a bare `PeftModel.from_pretrained`, this works without a prior
    `import gated_vpt`, and it refuses an adapter saved for a different backbone before touching the model."""
    hub_kwargs = {k: kwargs[k] for k in ("revision", "subfolder", "token", "cache_dir") if k in kwargs}
    config = PeftConfig.from_pretrained(str(model_id), **hub_kwargs)
    return PeftModel.from_pretrained(
        model, str(model_id), adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
    )


def card_section(config: PromptConfigBase, repo_id: Optional[str] = None) -> str:
    """The model-card text for one of our adapters: what it is and how to load it."""
    backbone = config.backbone or {}
    first, last = backbone.get("prompted_blocks", ["?", "?"])
    base = config.base_model_name_or_path or "<the base model it was trained on>"
    source = repo_id or "<this repo or folder>"
    return f"""{CARD_MARKER}
## gated-vpt adapter

A **{config.peft_type.value}** visual prompt tuning adapter made with
[gated-vpt](https://pypi.org/project/gated-vpt/) on top of PEFT: {config.num_prompts} prompt tokens,
prompted blocks {first}–{last} of a `{backbone.get("model_type", "?")}` backbone
(width {backbone.get("hidden_size", "?")}, {backbone.get("num_hidden_layers", "?")} blocks). The backbone is frozen
and not included; this repo holds only the adapter (and any `modules_to_save`, e.g. the classifier).

### How to load

```python
import gated_vpt  # registers the {config.peft_type.value} tuner type with PEFT: import it before loading
from peft import PeftModel
from transformers import AutoModelForImageClassification

base = AutoModelForImageClassification.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{source}")
# or, without the explicit import: gated_vpt.from_pretrained(base, "{source}")
```
"""


def _add_card_section(model: PeftModel, output_dir: str, repo_id: Optional[str] = None) -> None:
    from huggingface_hub import ModelCard

    config = _prompt_config(model)
    path = os.path.join(output_dir, "README.md")
    if config is None or not os.path.exists(path):
        return
    card = ModelCard.load(path)
    card.data["library_name"] = "peft"
    card.data["tags"] = sorted(set(card.data.get("tags") or []) | set(CARD_TAGS))
    # Our section is always the card's last one: replace it (a push knows the repo id a local save did not).
    card.text = card.text.split(CARD_MARKER)[0].rstrip() + "\n\n" + card_section(config, repo_id) + "\n"
    card.save(path)


def push_adapter_to_hub(
    model: PeftModel,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    **save_kwargs: Any,
) -> Any:
    """Save the adapter (config, safetensors weights, a card saying how to load it) and upload it in one commit."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp_dir:
        model.save_pretrained(tmp_dir, **save_kwargs)
        _add_card_section(model, tmp_dir, repo_id)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp_dir,
            commit_message=commit_message or "Upload gated-vpt adapter",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


def install_peft_model_patches() -> None:
    """Route `save_pretrained`'s card and `push_to_hub` of *our* adapters through this module (idempotent)."""
    if getattr(PeftModel, "_gated_vpt_patched", False):
        return
    original_card = PeftModel.create_or_update_model_card
    original_push = PeftModel.push_to_hub

    def create_or_update_model_card(self: PeftModel, output_dir: str) -> None:
        original_card(self, output_dir)
        _add_card_section(self, output_dir)

    def push_to_hub(self: PeftModel, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        if _prompt_config(self) is None:
            return original_push(self, repo_id, *args, **kwargs)
        kwargs.pop("max_shard_size", None)  # adapters are tiny; transformers' sharding option does not apply
        kwargs.pop("tags", None)
        return push_adapter_to_hub(self, repo_id, **kwargs)

    PeftModel.create_or_update_model_card = create_or_update_model_card
    PeftModel.push_to_hub = push_to_hub
    PeftModel._gated_vpt_patched = True
