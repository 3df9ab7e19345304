"""push_to_hub, tested offline with a recording fake of the Hub API, then loaded back from what was "pushed"."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel, get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

import gated_vpt.io.hub
from gated_vpt import GatedPromptConfig


class RecordingHfApi:
    """Stands in for `huggingface_hub.HfApi`: records calls and copies each uploaded folder to `store/repo_id`."""

    calls: list = []
    store: Path

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, commit_message=None, revision=None, create_pr=False, **kwargs):
        self.calls.append(("upload_folder", repo_id, commit_message, revision, create_pr))
        target = self.store / repo_id
        shutil.copytree(folder_path, target, dirs_exist_ok=True)
        return SimpleNamespace(commit_url=f"fake://{repo_id}", oid="0" * 40)


def test_push_to_hub_uploads_a_loadable_adapter_with_a_gated_vpt_card(tmp_path, monkeypatch):
    RecordingHfApi.calls = []
    RecordingHfApi.store = tmp_path
    monkeypatch.setattr(gated_vpt.io.hub, "HfApi", RecordingHfApi)

    base = TINY_BACKBONES["vit"]()
    model = get_peft_model(base, GatedPromptConfig(num_prompts=4, modules_to_save=["classifier"])).eval()
    with torch.no_grad():
        model.base_model.model.vit.layers[0].gpt_prompts["default"].mul_(3.0)
    result = model.push_to_hub("someone/eurosat-gpt", private=True, commit_message="first")

    assert [c[0] for c in RecordingHfApi.calls] == ["create_repo", "upload_folder"]
    assert RecordingHfApi.calls[0] == ("create_repo", "someone/eurosat-gpt", True, True)
    assert RecordingHfApi.calls[1][2] == "first"
    assert result.commit_url == "fake://someone/eurosat-gpt"

    pushed = tmp_path / "someone" / "eurosat-gpt"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = ModelCard.load(pushed / "README.md")
    assert card.data.library_name == "peft"
    assert {"gated-vpt", "peft"} <= set(card.data.tags)
    assert "import gated_vpt" in card.text
    assert 'PeftModel.from_pretrained(base, "someone/eurosat-gpt")' in card.text

    reloaded = PeftModel.from_pretrained(TINY_BACKBONES["vit"](), pushed).eval()
    x = pixel_values()
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)


def test_save_pretrained_card_says_how_to_load(tmp_path):
    model = get_peft_model(TINY_BACKBONES["dinov2"](), GatedPromptConfig(num_prompts=2))
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # saving twice adds the section once
    text = (tmp_path / "README.md").read_text()
    assert text.count("## How to load this adapter") == 1 and text.count("## What it is") == 1
    assert "import gated_vpt" in text and "GATED_PROMPT" in text


def test_other_peft_adapters_keep_peft_behaviour(tmp_path):
    from peft import LoraConfig

    model = get_peft_model(TINY_BACKBONES["vit"](), LoraConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    assert "gated-vpt" not in (tmp_path / "README.md").read_text()


def _into_offline_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out as huggingface_hub's cache does for a downloaded `repo_id` (`HF_HUB_OFFLINE=1` reads it)."""
    commit = "1" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def _python_block(markdown: str) -> str:
    return markdown.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_cards_loading_snippet_runs_as_written_for_a_retrained_head(tmp_path, monkeypatch):
    # The common case: a checkpoint with a 5-class head, an adapter trained with a new 3-class head. The card's code,
    # run verbatim in a fresh interpreter against an offline Hub cache holding both repos, rebuilds the same model.
    import subprocess
    import sys

    from transformers import ViTForImageClassification

    checkpoint = tmp_path / "checkpoint"
    TINY_BACKBONES["vit"]().save_pretrained(checkpoint)  # tiny_models' head: 3 labels
    five = ViTForImageClassification.from_pretrained(checkpoint, num_labels=5, ignore_mismatched_sizes=True)
    five.save_pretrained(checkpoint)
    base = ViTForImageClassification.from_pretrained(checkpoint, num_labels=3, ignore_mismatched_sizes=True)
    base.name_or_path = "tiny-org/vit-5-classes"  # as if loaded from the Hub
    model = get_peft_model(base, GatedPromptConfig(num_prompts=4, modules_to_save=["classifier"])).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3)
    RecordingHfApi.calls, RecordingHfApi.store = [], tmp_path / "pushed"
    monkeypatch.setattr(gated_vpt.io.hub, "HfApi", RecordingHfApi)
    model.push_to_hub("someone/vit-gpt-3-classes")
    pushed = tmp_path / "pushed" / "someone" / "vit-gpt-3-classes"

    card = (pushed / "README.md").read_text()
    assert card.index("## How to load this adapter") < card.index("## What it is") < card.index("## Model Details")
    assert "pip install gated-vpt" in card
    assert str(tmp_path) not in card
    snippet = _python_block(card)
    assert "num_labels=3, ignore_mismatched_sizes=True" in snippet

    cache = tmp_path / "hub"
    _into_offline_hub_cache(cache, "tiny-org/vit-5-classes", checkpoint)
    _into_offline_hub_cache(cache, "someone/vit-gpt-3-classes", pushed)
    x = pixel_values()
    with torch.no_grad():
        torch.save({"x": x, "logits": model(x).logits}, tmp_path / "expected.pt")
    check = """
import torch
expected = torch.load("expected.pt")
with torch.no_grad():
    diff = (model(expected["x"]).logits - expected["logits"]).abs().max().item()
print("diff", diff)
assert diff < 1e-5  # another process (another thread count): the same values up to rounding
print("card snippet ok")
"""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    result = subprocess.run(
        [sys.executable, "-c", snippet + check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-3000:]
    assert "card snippet ok" in result.stdout


def test_a_head_of_another_size_names_the_base_models_num_labels_and_the_fix(tmp_path):
    from transformers import ViTForImageClassification

    model = get_peft_model(TINY_BACKBONES["vit"](), GatedPromptConfig(num_prompts=4, modules_to_save=["classifier"]))
    model.save_pretrained(tmp_path / "adapter")
    TINY_BACKBONES["vit"]().save_pretrained(tmp_path / "checkpoint")
    five = ViTForImageClassification.from_pretrained(
        tmp_path / "checkpoint", num_labels=5, ignore_mismatched_sizes=True
    )
    pristine = {k: v.clone() for k, v in five.state_dict().items()}
    message = (
        r"the adapter's trained head \(`modules_to_save`\) does not fit the base model's head: `classifier.bias` is "
        r"\[3\] in the adapter, \[5\] in the base model.*built with `num_labels=5`.*from_pretrained\(base_id, "
        r"num_labels=3, ignore_mismatched_sizes=True\)"
    )
    with pytest.raises(gated_vpt.HeadSizeError, match=message):
        PeftModel.from_pretrained(five, tmp_path / "adapter")
    assert five.state_dict().keys() == pristine.keys()
    assert all(torch.equal(v, pristine[k]) for k, v in five.state_dict().items())


def test_the_card_never_shows_a_local_path(tmp_path):
    base = TINY_BACKBONES["vit"]()
    base.name_or_path = str(tmp_path / "my-checkpoint")
    (tmp_path / "my-checkpoint").mkdir()
    model = get_peft_model(base, GatedPromptConfig(num_prompts=2))
    model.save_pretrained(tmp_path / "adapter")
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert str(tmp_path) not in str(card)
    assert card.data.get("base_model") is None
    assert '"<Hub id or folder of the base model>"' in _python_block(card.text)
