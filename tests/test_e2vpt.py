"""E²VPT's key-value prompts: the identities of ../shared/docs/METHODS_NEXT.md §4.6 on our implementation.

(The shared PEFT behaviours, save / load, several adapters, mixed batches, checkpointing, compile, the families and
timm, run on E²VPT through its row in tests/methods.py; tests/test_timm.py checks the fused-qkv path against the
Hugging Face ViT with the same weights.)"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import main_output
from peft import get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values
from torch.nn import functional

from gated_vpt import ConfigError, KeyValuePromptConfig, UnsupportedModelError, preset_config

HIDDEN, HEAD_DIM = 32, 8  # the tiny ViT: 4 heads of 8
HEADS = HIDDEN // HEAD_DIM


def _prompted(backbone: str = "vit", seed: int = 0, attn_implementation=None, **fields):
    torch.manual_seed(seed)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    base = TINY_BACKBONES[backbone](**kwargs).eval()
    config = KeyValuePromptConfig(**{"num_prompts": 3, "prompt_dropout": 0.0, **fields})
    return get_peft_model(base, config).eval()


def _blocks(model):
    return [m for m in model.modules() if type(m).__name__ == "KeyValuePromptBlock"]


@pytest.mark.parametrize("backbone", ["vit", "dinov2_registers", "clip", "siglip", "beit"])
def test_without_key_value_prompts_it_is_vpt_deep_exactly(backbone):
    x = pixel_values()
    torch.manual_seed(0)
    vpt = get_peft_model(TINY_BACKBONES[backbone]().eval(), preset_config("vpt-deep", num_prompts=3)).eval()
    with torch.no_grad():
        plain = main_output(_prompted(backbone, num_key_value_prompts=0)(pixel_values=x))
        reference = main_output(vpt(pixel_values=x))
        with_kv = main_output(_prompted(backbone)(pixel_values=x))
    assert torch.equal(plain, reference)
    assert not torch.equal(with_kv, reference)
    assert with_kv.shape == reference.shape


def _projection(linear, hidden):
    """The projection itself, without the adapter's hooks on it."""
    return functional.linear(hidden, linear.weight, linear.bias)


def _reference_attention(attention, hidden, keys_extra, values_extra):
    """softmax([Q K^T, Q K~^T] / sqrt(d)) [V ; V~] per head, then the output projection: the formula, by hand."""
    batch, length, _ = hidden.shape
    head_dim = HIDDEN // HEADS

    def heads(x):
        return x.view(batch, -1, HEADS, head_dim).transpose(1, 2)

    q = heads(_projection(attention.q_proj, hidden))
    k = heads(torch.cat((_projection(attention.k_proj, hidden), keys_extra.expand(batch, -1, -1)), 1))
    v = heads(torch.cat((_projection(attention.v_proj, hidden), values_extra.expand(batch, -1, -1)), 1))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).softmax(-1)
    return attention.o_proj((weights @ v).transpose(1, 2).reshape(batch, length, HIDDEN))


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_the_attention_is_the_formula_with_m_more_keys_and_values(share, attn_implementation):
    model = _prompted(attn_implementation=attn_implementation, share_key_value=share, num_key_value_prompts=4)
    block = _blocks(model)[1]
    attention = block.key_value_parts.attention
    hidden = torch.randn(2, 7, HIDDEN, generator=torch.Generator().manual_seed(0))
    keys = block.e2vpt_key_prompts["default"]
    values = block.e2vpt_value_prompts["default"] if not share else keys
    with torch.no_grad():
        ours = attention(hidden)
        ours = ours[0] if isinstance(ours, tuple) else ours
        expected = _reference_attention(attention, hidden, keys, values)
    assert ours.shape == (2, 7, HIDDEN)  # no output rows for the key-value prompts
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_zero_value_prompts_only_rescale_the_attention():
    """Split mode, zero values: each query's attention output is the plain one times Z / (Z + sum_t exp(q k~_t))."""
    model = _prompted(share_key_value=False, num_key_value_prompts=3)
    block = _blocks(model)[0]
    attention = block.key_value_parts.attention
    with torch.no_grad():
        block.e2vpt_value_prompts["default"].zero_()
    hidden = torch.randn(1, 6, HIDDEN, generator=torch.Generator().manual_seed(1))
    captured = []
    handle = attention.o_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    with torch.no_grad():
        attention(hidden)
        with model.disable_adapter():
            attention(hidden)
    handle.remove()
    prompted, plain = captured[0][:, :6], captured[1]  # (the o_proj input still holds the m placeholder rows)
    head_dim = HIDDEN // HEADS
    q = _projection(attention.q_proj, hidden).view(1, 6, HEADS, head_dim).transpose(1, 2)
    k = _projection(attention.k_proj, hidden).view(1, 6, HEADS, head_dim).transpose(1, 2)
    extra = block.e2vpt_key_prompts["default"].view(1, 3, HEADS, head_dim).transpose(1, 2)
    z = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).exp().sum(-1)  # [1, H, T]
    z_extra = (q @ extra.transpose(-1, -2) / math.sqrt(head_dim)).exp().sum(-1)
    scale = (z / (z + z_extra)).transpose(1, 2).unsqueeze(-1)  # [1, T, H, 1]
    expected = (plain.view(1, 6, HEADS, head_dim) * scale).reshape(1, 6, HIDDEN)
    torch.testing.assert_close(prompted, expected.detach(), rtol=1e-5, atol=1e-6)


def test_shared_mode_holds_one_tensor_and_split_mode_two():
    shared, split = _prompted(), _prompted(share_key_value=False)
    assert all(len(b.e2vpt_value_prompts) == 0 and len(b.e2vpt_key_prompts) == 1 for b in _blocks(shared))
    assert all(len(b.e2vpt_value_prompts) == 1 for b in _blocks(split))

    def count(model):
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    vpt = _prompted(num_key_value_prompts=0)
    depth = len(_blocks(shared))
    assert count(shared) == count(vpt) + depth * 5 * HIDDEN  # L * m * D on top of VPT-deep
    assert count(split) == count(vpt) + 2 * depth * 5 * HIDDEN


def test_key_value_prompts_start_uniform_with_the_official_bound():
    block = _blocks(_prompted(num_key_value_prompts=50))[0]
    assert block.key_value_parts.head_dim == HEAD_DIM
    bound = math.sqrt(6.0 / (50 * HEAD_DIM))
    values = block.e2vpt_key_prompts["default"]
    assert values.abs().max() <= bound and values.abs().max() > 0.9 * bound


def test_the_key_value_prompts_train():
    model = _prompted()
    model.train()
    model(pixel_values=pixel_values()).logits.square().mean().backward()
    assert all(b.e2vpt_key_prompts["default"].grad.abs().sum() > 0 for b in _blocks(model))


@pytest.mark.parametrize(
    "backbone, reason",
    [("dinov3", "rotary position embedding"), ("mlcd", "rotary position embedding"), ("data2vec_vision", "relative")],
)
def test_families_whose_attention_cannot_take_extra_keys_are_refused_with_the_reason(backbone, reason):
    base = TINY_BACKBONES[backbone]()
    keys = list(base.state_dict())
    with pytest.raises(UnsupportedModelError, match=rf"{reason}.*num_key_value_prompts=0"):
        get_peft_model(base, KeyValuePromptConfig())
    assert list(base.state_dict()) == keys and not any(m._forward_hooks for m in base.modules())
    # VPT-deep's part works there
    model = get_peft_model(base, KeyValuePromptConfig(num_key_value_prompts=0))
    with torch.no_grad():
        assert torch.isfinite(main_output(model(pixel_values=pixel_values()))).all()


def test_a_video_vit_that_numbers_its_tokens_is_refused():
    from tiny_models import OTHER_INPUT_BACKBONES

    with pytest.raises(UnsupportedModelError, match="token count.*num_key_value_prompts=0"):
        get_peft_model(OTHER_INPUT_BACKBONES["vjepa2"].build(head=False), KeyValuePromptConfig())


def test_without_key_value_prompts_no_hook_is_installed():
    model = _prompted(num_key_value_prompts=0)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.base_model.model.vit.layers[0].modules())


@pytest.mark.parametrize(
    "field, bad", [("num_key_value_prompts", -1), ("num_key_value_prompts", 2.5), ("share_key_value", "no")]
)
def test_bad_values_are_refused(field, bad):
    with pytest.raises(ConfigError, match=field):
        KeyValuePromptConfig(**{field: bad})
