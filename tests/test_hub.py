"""push_to_hub, tested offline with a recording fake of the Hub API, then loaded back from what was "pushed"."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
from huggingface_hub import ModelCard
from peft import PeftModel, get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

import gated_vpt.hub
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
    monkeypatch.setattr(gated_vpt.hub, "HfApi", RecordingHfApi)

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
    assert text.count("## gated-vpt adapter") == 1
    assert "import gated_vpt" in text and "GATED_PROMPT" in text


def test_other_peft_adapters_keep_peft_behaviour(tmp_path):
    from peft import LoraConfig

    model = get_peft_model(TINY_BACKBONES["vit"](), LoraConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    assert "gated-vpt" not in (tmp_path / "README.md").read_text()
