"""Visual Fourier Prompt Tuning: the identities of ../shared/docs/METHODS_NEXT.md §3.5 on our implementation.

(The shared PEFT behaviours, save / load, several adapters, mixed batches, checkpointing, compile, the families and
timm, run on VFPT through its row in tests/methods.py.)"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers import main_output
from peft import get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

from gated_vpt import ConfigError, FourierPromptConfig, preset_config
from gated_vpt.fourier.layer import fourier_prompts


def _prompted(config, backbone: str = "vit", seed: int = 0):
    torch.manual_seed(seed)
    return get_peft_model(TINY_BACKBONES[backbone](), config).eval()


def _blocks(model):
    return [m for m in model.modules() if type(m).__name__ == "FourierPromptBlock"]


@pytest.mark.parametrize("backbone", ["vit", "dinov2_registers", "clip"])
def test_without_fourier_prompts_it_is_vpt_deep_exactly(backbone):
    x = pixel_values()
    with torch.no_grad():
        vfpt = main_output(_prompted(FourierPromptConfig(fourier_fraction=0.0), backbone)(pixel_values=x))
        vpt = main_output(_prompted(preset_config("vpt-deep"), backbone)(pixel_values=x))
        with_fourier = main_output(_prompted(FourierPromptConfig(), backbone)(pixel_values=x))
    assert torch.equal(vfpt, vpt)
    assert not torch.equal(with_fourier, vpt)


def test_the_transform_is_the_real_part_of_the_unnormalised_2d_dft():
    prompts = torch.randn(7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = fourier_prompts(prompts, 5)
    assert np.allclose(out[:5].numpy(), np.fft.fft2(prompts[:5].numpy()).real, atol=1e-12)
    assert torch.equal(out[5:], prompts[5:])
    # DC term: the sum of every entry; the real form C X C - S X S
    assert math.isclose(out[0, 0].item(), prompts[:5].sum().item(), rel_tol=1e-12)
    m, d = 5, 12
    angles_m = 2 * math.pi * torch.outer(torch.arange(m), torch.arange(m)).double() / m
    angles_d = 2 * math.pi * torch.outer(torch.arange(d), torch.arange(d)).double() / d
    cos_m, sin_m, cos_d, sin_d = angles_m.cos(), angles_m.sin(), angles_d.cos(), angles_d.sin()
    torch.testing.assert_close(out[:5], cos_m @ prompts[:5] @ cos_d - sin_m @ prompts[:5] @ sin_d)
    # the sequence and the hidden transforms commute
    assert torch.allclose(torch.fft.fft(torch.fft.fft(prompts[:5], dim=0), dim=1).real, out[:5])


def test_the_odd_part_of_a_fourier_prompt_gets_no_gradient():
    """Re FFT2 kills the odd part X_odd[t, c] = (X[t, c] - X[-t, -c]) / 2: a property of the method."""
    prompts = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 6, dtype=torch.float64)
    (fourier_prompts(prompts, 4) * weights).sum().backward()
    grad = prompts.grad
    flipped = torch.roll(torch.flip(grad, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # G[-t mod m, -c mod D]
    torch.testing.assert_close(grad, flipped)  # the gradient is even, so it is orthogonal to every odd direction


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.3, 3), (0.5, 5), (0.7, 7), (1.0, 10)])
def test_the_number_of_fourier_prompts_is_the_floor_of_alpha_times_the_prompts(fraction, expected):
    assert FourierPromptConfig(num_prompts=10, fourier_fraction=fraction).num_fourier_prompts == expected


def test_each_block_inserts_the_transformed_prompts_first():
    config = FourierPromptConfig(num_prompts=4, fourier_fraction=0.5, prompt_dropout=0.0)
    model = _prompted(config)
    seen = {}
    blocks = _blocks(model)
    handles = [
        block.base_layer.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach()))
        for i, block in enumerate(blocks)
    ]
    with torch.no_grad():
        model(pixel_values=pixel_values())
    for handle in handles:
        handle.remove()
    for i, block in enumerate(blocks):
        own = block.vfpt_prompts["default"].detach()
        slots = seen[i][:, 1:5]  # after the CLS token
        expected = torch.cat((torch.fft.fft2(own[:2]).real, own[2:]))
        torch.testing.assert_close(slots, expected.expand_as(slots), rtol=0, atol=0)


def test_it_adds_no_parameters_to_vpt_deep():
    def count(model):
        return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)

    assert count(_prompted(FourierPromptConfig())) == count(_prompted(preset_config("vpt-deep")))


def test_bf16_runs_the_transform_in_float32():
    model = _prompted(FourierPromptConfig(num_prompts=4, prompt_dropout=0.0))
    model.to(torch.bfloat16)
    block = _blocks(model)[0]
    captured = []
    handle = block.base_layer.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        out = model(pixel_values=pixel_values().to(torch.bfloat16)).logits
    handle.remove()
    assert torch.isfinite(out).all()
    own = block.vfpt_prompts["default"].detach().to(torch.bfloat16)
    expected = torch.fft.fft2(own[:2].float()).real.to(torch.bfloat16)
    assert torch.equal(captured[0][0, 1:3], expected)


def test_training_moves_the_prompts_through_the_transform():
    model = _prompted(FourierPromptConfig(num_prompts=4, prompt_dropout=0.0))
    model.train()
    model(pixel_values=pixel_values()).logits.square().mean().backward()
    grads = [b.vfpt_prompts["default"].grad for b in _blocks(model)]
    assert all(g is not None and g[:2].abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "half", True])
def test_a_fraction_outside_zero_to_one_is_refused(bad):
    with pytest.raises(ConfigError, match="fourier_fraction"):
        FourierPromptConfig(fourier_fraction=bad)


def test_a_copy_of_the_config_is_what_was_saved(tmp_path):
    model = _prompted(FourierPromptConfig(fourier_fraction=0.3))
    model.save_pretrained(tmp_path)
    from peft import PeftConfig

    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, FourierPromptConfig) and loaded.fourier_fraction == 0.3
    assert copy.deepcopy(loaded).num_fourier_prompts == 3
