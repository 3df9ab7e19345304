"""examples/semantic_segmentation.py end to end on a tiny UperNet + DINOv2 model, for every method (its preset): the
loss drops, the adapter saves and reloads to identical logits, and the prompts leave the output and feature-map shapes
of the base model unchanged.

The script's `main(argv)` is imported, not spawned. One training run is shared by the module's tests."""

from __future__ import annotations

import json

import pytest
import semantic_segmentation as example  # examples/semantic_segmentation.py (examples/ is on sys.path: conftest.py)
import torch
from methods import METHOD_CASES

import gated_vpt

IMAGE_SIZE = 32
SEED = 0


@pytest.fixture(scope="module", params=sorted(case.preset for case in METHOD_CASES.values()))
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"seg_{request.param}")
    argv = [
        "--method",
        request.param,
        "--steps",
        "40",
        "--lr",
        "1e-2",
        "--batch-size",
        "8",
        "--image-size",
        str(IMAGE_SIZE),
        "--num-prompts",
        "4",
        "--num-eval",
        "16",
        "--seed",
        str(SEED),
        "--output-dir",
        str(out),
    ]
    return example.main(argv), out


def test_loss_drops_and_results_written(run):
    results, out = run
    print(
        f"{results['method']}: loss {results['initial_loss']:.3f} -> {results['final_loss']:.3f}, "
        f"mIoU {results['initial_miou']:.3f} -> {results['miou']:.3f}, {results['wall_s']:.1f} s"
    )
    assert results["model_class"] == "UperNetForSemanticSegmentation"
    assert results["final_loss"] < 0.8 * results["initial_loss"]
    assert 0.0 <= results["miou"] <= 1.0
    assert results["trainable_params"] < results["total_params"]
    assert json.loads((out / "results.json").read_text())["final_loss"] == results["final_loss"]


def test_adapter_reloads_to_identical_logits_and_prompt_free_features(run):
    results, out = run
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()

    base = example.build_base_model(None, IMAGE_SIZE, SEED)
    pixel_values, _ = example.make_batch(2, IMAGE_SIZE, torch.Generator().manual_seed(123))
    with torch.no_grad():
        base_logits = base(pixel_values=pixel_values).logits
        base_maps = [m.clone() for m in base.backbone(pixel_values).feature_maps]

    # A second, independently built base (same seed) receives the saved adapter twice: the two must agree exactly.
    loaded = gated_vpt.from_pretrained(example.build_base_model(None, IMAGE_SIZE, SEED), str(out)).eval()
    again = gated_vpt.from_pretrained(example.build_base_model(None, IMAGE_SIZE, SEED), str(out)).eval()
    with torch.no_grad():
        logits = loaded(pixel_values=pixel_values).logits
        logits_again = again(pixel_values=pixel_values).logits
        maps = loaded.base_model.model.backbone(pixel_values).feature_maps

    assert torch.equal(logits, logits_again)
    assert logits.shape == base_logits.shape == (2, example.NUM_LABELS, IMAGE_SIZE, IMAGE_SIZE)
    assert not torch.allclose(logits, base_logits)  # the trained adapter (prompts + decoder) is in effect
    assert [m.shape for m in maps] == [m.shape for m in base_maps]
    assert len(maps) == len(example.OUT_FEATURES)
    assert all(m.shape == (2, 32, IMAGE_SIZE // 8, IMAGE_SIZE // 8) for m in maps)


def test_reloaded_adapter_reproduces_the_trained_model(run):
    """The held-out mIoU the script reported is reproduced exactly by the reloaded adapter."""
    results, out = run
    loaded = gated_vpt.from_pretrained(example.build_base_model(None, IMAGE_SIZE, SEED), str(out)).eval()
    eval_x, eval_y = example.make_batch(16, IMAGE_SIZE, torch.Generator().manual_seed(SEED + 10_000))
    miou, _ = example.mean_iou(example.predict(loaded, eval_x), eval_y)
    assert miou == pytest.approx(results["miou"], abs=1e-9)


def test_importing_the_example_changes_no_process_wide_setting(monkeypatch):
    import importlib
    import os

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # what the example used to set for the whole process
    environ, threads = dict(os.environ), torch.get_num_threads()
    importlib.reload(example)
    assert dict(os.environ) == environ and torch.get_num_threads() == threads
