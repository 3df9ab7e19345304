"""The behaviours a user relies on, on each device and in each precision: every method and a few families, in fp32
and under bf16 / fp16 autocast, on the CPU and (marker `cuda`, skipped without a GPU) on CUDA.

`python -m pytest -m cuda tests/test_devices.py` is the correctness part of `benchmarks/gpu_check.py`. The CPU
parameters run in the default suite, so the tests cannot rot on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from helpers import main_output, perturb_adapter
from methods import METHOD_CASES, extra_attention_keys, method_config
from peft import PeftModel, get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
]
PRECISIONS = ["fp32", "bf16", "fp16"]
# One family per code path that matters on a device: CLS (ViT), registers (DINOv2), pre-norm CLIP tower, no CLS
# (SigLIP).
FAMILIES = ["vit", "dinov2_registers", "clip", "siglip"]
# What two runs of the same computation may differ by: exact in fp32, the last bits of the format under autocast
# (a batch of another size may pick another kernel).
TOLERANCE = {"fp32": dict(rtol=1e-5, atol=1e-5), "bf16": dict(rtol=2e-2, atol=2e-2), "fp16": dict(rtol=5e-3, atol=5e-3)}


def autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def adapted(method: str, family: str, device: str, **overrides):
    """(the adapted model, a copy of its base model taken before adapting), both on `device`, eval mode."""
    base = TINY_BACKBONES[family](head=True, attn_implementation="sdpa")
    reference = copy.deepcopy(base)
    config = method_config(method, base, visible=True, prompt_dropout=0.0, modules_to_save=["classifier"], **overrides)
    model = get_peft_model(base, config)
    perturb_adapter(model)
    return model.to(device).eval(), reference.to(device).eval()


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=PRECISIONS)
def precision(request):
    return request.param


@pytest.mark.parametrize("family", FAMILIES)
def test_disable_equals_the_base_model_on_every_device(device, precision, method, family):
    model, reference = adapted(method, family, device)
    x = pixel_values().to(device)
    with torch.no_grad(), autocast(device, precision):
        adapted_out = main_output(model(pixel_values=x))
        with model.disable_adapter():
            disabled = main_output(model(pixel_values=x))
        base_out = main_output(reference(pixel_values=x))
    assert torch.isfinite(adapted_out).all()
    assert not torch.equal(adapted_out, base_out)  # the adapter does something ...
    assert torch.equal(disabled, base_out)  # ... and disabling it gives exactly the base model


def test_save_and_load_are_bit_identical_on_every_device(device, precision, method, tmp_path):
    model, _ = adapted(method, "vit", device)
    x = pixel_values().to(device)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(TINY_BACKBONES["vit"](head=True, attn_implementation="sdpa"), tmp_path)
    loaded = loaded.to(device).eval()
    with torch.no_grad(), autocast(device, precision):
        assert torch.equal(main_output(loaded(pixel_values=x)), main_output(model(pixel_values=x)))


@pytest.mark.parametrize("family", ["vit", "clip"])
def test_mixed_batches_equal_each_adapter_alone_on_every_device(device, precision, method, family):
    model, base = adapted(method, family, device)
    model.add_adapter(
        "other",
        method_config(method, base, visible=True, prompt_dropout=0.0, num_prompts=2, modules_to_save=["classifier"]),
    )
    model.set_adapter("other")
    perturb_adapter(model, seed=2)
    model.to(device).eval()
    names = ["default", "other", "__base__", "other"]
    x = pixel_values(len(names)).to(device)
    with torch.no_grad(), autocast(device, precision):
        mixed = main_output(model(pixel_values=x, adapter_names=names))
        alone = {}
        for name in ("default", "other"):
            model.set_adapter(name)
            alone[name] = main_output(model(pixel_values=x))
        with model.disable_adapter():
            alone["__base__"] = main_output(model(pixel_values=x))
    expected = torch.stack([alone[name][i] for i, name in enumerate(names)])
    torch.testing.assert_close(mixed.float(), expected.float(), **TOLERANCE[precision])


def _fused_backend(device: str, precision: str):
    from torch.nn.attention import SDPBackend

    # flash attention on the CPU and for half precision on CUDA; CUDA's memory-efficient kernel for fp32
    return SDPBackend.EFFICIENT_ATTENTION if device == "cuda" and precision == "fp32" else SDPBackend.FLASH_ATTENTION


def test_sdpa_runs_a_fused_kernel_with_prompts_in_the_sequence(device, precision, method, monkeypatch):
    """With only the fused kernel allowed, SDPA raises if it cannot use it: the forward succeeding (and SDPA being
    called once per block) shows the prompts keep attention on flash / memory-efficient attention."""
    from torch.nn.attention import sdpa_kernel

    model, _ = adapted(method, "vit", device)
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    x = pixel_values().to(device)
    with torch.no_grad(), autocast(device, precision), sdpa_kernel([_fused_backend(device, precision)]):
        output = main_output(model(pixel_values=x))
    assert torch.isfinite(output).all()
    depth = len(model.get_base_model().vit.layers)
    assert len(calls) == depth
    config = model.peft_config["default"]
    length = 17 + config.num_prompts + extra_attention_keys(method, config)  # CLS + 16 patches + the prompts
    assert all(shape[-2] == length for shape in calls)


COMPILE_CASES = [
    pytest.param("cpu", "gpt", id="cpu-gpt"),
    *(
        pytest.param(
            "cuda",
            m,
            id=f"cuda-{m}",
            marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")],
        )
        for m in sorted(METHOD_CASES)
    ),
]


@pytest.mark.parametrize(("compile_device", "compile_method"), COMPILE_CASES)
def test_torch_compile_without_graph_breaks_matches_eager(compile_device, compile_method):
    model, _ = adapted(compile_method, "vit", compile_device)
    x = pixel_values().to(compile_device)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager = main_output(model(pixel_values=x))
        fast = main_output(compiled(pixel_values=x))
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)
    model.train()
    loss = main_output(compiled(pixel_values=x)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
