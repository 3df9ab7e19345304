"""Visual Adaptive Prompt Tuning: the identities of ../shared/docs/METHODS_NEXT.md §5.5 on our implementation.

(The shared PEFT behaviours, save / load, several adapters, mixed batches, checkpointing, compile, the families and
timm, run on VAPT through its row in tests/methods.py.)"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values
from torch.nn import functional

from gated_vpt import AdaptivePromptConfig, ConfigError, UnsupportedModelError, find_prompt_site

HIDDEN = 32  # the tiny backbones' width


def _prompted(backbone: str = "vit", seed: int = 0, **fields):
    torch.manual_seed(seed)
    config = AdaptivePromptConfig(**{"num_prompts": 3, "prompt_dropout": 0.0, **fields})
    return get_peft_model(TINY_BACKBONES[backbone](), config).eval()


def _blocks(model):
    return [m for m in model.modules() if type(m).__name__ == "AdaptivePromptBlock"]


def _block_inputs(model, x):
    seen = []
    handles = [b.base_layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())) for b in _blocks(model)]
    with torch.no_grad():
        model(pixel_values=x)
    for handle in handles:
        handle.remove()
    return seen


def _randomize_generator(model, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "vapt_" in name and "vapt_prompts" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


@pytest.mark.parametrize("backbone", ["vit", "dinov2_registers", "clip"])
def test_every_generated_prompt_is_exactly_zero_at_initialisation(backbone):
    model = _prompted(backbone)
    start = find_prompt_site(model.base_model.model).num_prefix_tokens
    inputs = _block_inputs(model, pixel_values())
    static = _blocks(model)[0].vapt_prompts["default"].detach()
    assert torch.equal(inputs[0][0, start : start + 3], static.to(inputs[0].dtype))
    for block_input in inputs[1:]:  # what every later block sees in its prompt slots
        assert torch.count_nonzero(block_input[:, start : start + 3]) == 0


def test_the_token_projector_is_sized_to_the_grid_after_the_convolution():
    model = _prompted(kernel_size=2)
    height, width = find_prompt_site(model.base_model.model).patch_grid
    block = _blocks(model)[1]
    assert block.vapt_token_weights["default"].shape == (3, (height - 1) * (width - 1))
    assert block.vapt_kernels["default"].shape == (2, 2)
    assert _blocks(model)[0].vapt_projector_down["default"].shape == (8, HIDDEN)


def _reference(block, tokens, config):
    """The generator written with torch's own layers: LayerNorm, a depthwise conv2d with the one kernel repeated for
    every channel, a Linear map over grid cells, and the projector as two bias-free Linears."""
    height, width = block.patch_grid
    params = {name: getattr(block, name)["default"] for name in ("vapt_kernels", "vapt_token_weights")}
    if config.generator_layer_norm:
        tokens = functional.layer_norm(
            tokens, (HIDDEN,), block.vapt_norm_weights["default"], block.vapt_norm_biases["default"]
        )
    grid = tokens.transpose(1, 2).reshape(-1, HIDDEN, height, width)
    kernel = params["vapt_kernels"].expand(HIDDEN, 1, -1, -1)
    conv = functional.conv2d(grid, kernel, groups=HIDDEN).flatten(2)  # [B, D, H'W']
    mixed = functional.linear(conv, params["vapt_token_weights"]).transpose(1, 2) + block.vapt_token_biases[
        "default"
    ].unsqueeze(-1)
    owner = block.projector_owner["default"]
    hidden = torch.relu(functional.linear(mixed, owner.vapt_projector_down["default"]))
    projected = functional.linear(hidden, owner.vapt_projector_up["default"])
    return mixed + projected if config.feature_residual else projected


@pytest.mark.parametrize("layer_norm, residual", [(True, True), (False, True), (True, False)])
def test_the_generator_is_conv_then_token_projector_then_shared_mlp(layer_norm, residual):
    model = _prompted(generator_layer_norm=layer_norm, feature_residual=residual)
    _randomize_generator(model)
    block = _blocks(model)[2]
    role = block.prompt_roles["default"]
    hidden_states = torch.randn(2, 1 + 3 + 16, HIDDEN, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = block.generated_prompts("default", role, hidden_states)
        expected = _reference(block, hidden_states[:, 4:], role.config)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_before_the_projector_the_generator_is_linear_in_the_patches():
    model = _prompted(generator_layer_norm=False)
    _randomize_generator(model)
    block = _blocks(model)[1]
    with torch.no_grad():
        block.vapt_token_biases["default"].zero_()
        block.projector_owner["default"].vapt_projector_up["default"].zero_()  # P = G
    role = block.prompt_roles["default"]
    states = torch.randn(2, 20, HIDDEN)
    with torch.no_grad():
        once = block.generated_prompts("default", role, states)
        scaled_states = states.clone()
        scaled_states[:, 4:] *= 3.0
        torch.testing.assert_close(block.generated_prompts("default", role, scaled_states), 3.0 * once)


def test_kernel_one_and_uniform_weights_pool_the_patches():
    model = _prompted(kernel_size=1, generator_layer_norm=False)
    block = _blocks(model)[1]
    with torch.no_grad():
        block.vapt_kernels["default"].fill_(1.0)
        block.vapt_token_weights["default"].fill_(1.0 / 16)
        block.projector_owner["default"].vapt_projector_up["default"].zero_()
    states = torch.randn(2, 20, HIDDEN)
    with torch.no_grad():
        prompts = block.generated_prompts("default", block.prompt_roles["default"], states)
    expected = states[:, 4:].mean(dim=1, keepdim=True).expand(-1, 3, -1)
    torch.testing.assert_close(prompts, expected)


def test_prompts_adapt_to_the_image_and_ignore_the_prefix_and_prompt_slots():
    model = _prompted("dinov2_registers")
    _randomize_generator(model)
    block = _blocks(model)[1]
    role = block.prompt_roles["default"]
    start = block.num_prefix_tokens + 3
    states = torch.randn(2, start + 16, HIDDEN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = block.generated_prompts("default", role, states)
        other_prefix = states.clone()
        other_prefix[:, :start] = torch.randn(2, start, HIDDEN)  # CLS, registers and the old prompt slots
        assert torch.equal(block.generated_prompts("default", role, other_prefix), base)
        assert not torch.allclose(base[0], base[1])  # two images, two sets of prompts
        permuted = states.clone()
        permuted[:, start:] = states[:, start:].flip(1)  # the grid order matters
        assert not torch.allclose(block.generated_prompts("default", role, permuted), base)


def test_a_backbone_without_a_patch_grid_is_refused_and_left_untouched():
    base = TINY_BACKBONES["vit_mae"]()
    keys = list(base.state_dict())
    with pytest.raises(UnsupportedModelError, match="no known grid"):
        get_peft_model(base, AdaptivePromptConfig())
    assert list(base.state_dict()) == keys


def test_a_kernel_larger_than_the_grid_is_refused():
    with pytest.raises(UnsupportedModelError, match="kernel_size"):
        get_peft_model(TINY_BACKBONES["vit"](), AdaptivePromptConfig(kernel_size=5))


def test_another_image_size_is_refused_with_the_fix():
    model = _prompted()
    x = torch.randn(1, 3, 48, 48)
    with pytest.raises(RuntimeError, match=r"patch grid.*patch_grid=\[H, W\]"):
        model(pixel_values=x, interpolate_pos_encoding=True)


def test_an_adapter_built_for_another_image_size_runs_at_it(tmp_path):
    model = _prompted(patch_grid=[6, 6])  # 48 px images, patch 8, on a backbone configured for 32 px
    _randomize_generator(model)
    assert _blocks(model)[1].vapt_token_weights["default"].shape == (3, 25)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        out = model(pixel_values=x, interpolate_pos_encoding=True).logits
    assert torch.isfinite(out).all()
    model.save_pretrained(tmp_path)
    from peft import PeftModel

    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(TINY_BACKBONES["vit"]().eval(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=x, interpolate_pos_encoding=True).logits, out)


@pytest.mark.parametrize(
    "field, bad",
    [
        ("kernel_size", 0),
        ("kernel_size", 2.5),
        ("projector_hidden_size", 0),
        ("generator_dropout", 1.0),
        ("generator_layer_norm", "yes"),
        ("feature_residual", None),
        ("patch_grid", [4]),
        ("patch_grid", [0, 4]),
    ],
)
def test_bad_values_are_refused(field, bad):
    with pytest.raises(ConfigError, match=field):
        AdaptivePromptConfig(**{field: bad})


def test_a_single_prompted_block_has_no_generator():
    model = _prompted(layers_to_transform=[2])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == ["base_model.model.vit.layers.2.vapt_prompts.default"]


def test_the_generator_trains_from_zero():
    model = _prompted()
    model.train()
    model(pixel_values=pixel_values()).logits.square().mean().backward()
    block = _blocks(model)[1]
    assert block.vapt_token_weights["default"].grad.abs().sum() > 0  # the zero init is not a dead end


def test_bf16_backbone_keeps_fp32_generator_weights():
    torch.manual_seed(0)
    base = TINY_BACKBONES["vit"]().to(torch.bfloat16)
    model = get_peft_model(base, AdaptivePromptConfig(num_prompts=3)).eval()
    _randomize_generator(model)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "vapt_" in n)
    with torch.no_grad():
        out = model(pixel_values=pixel_values().to(torch.bfloat16)).logits
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        model.to(torch.bfloat16)  # a user casting everything: the generator still computes in float32
        assert torch.isfinite(model(pixel_values=pixel_values().to(torch.bfloat16)).logits).all()
