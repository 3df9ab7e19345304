"""CDC prompt tuning (our reconstruction of iVPT, docs/methods.md §3): identities, the method's maths checked against
independent references written here, and the PEFT behaviours shared with the core."""

from __future__ import annotations

import copy
import functools
import json
import math

import peft
import pytest
import torch
from tiny_models import (
    CLIP_STYLE_TOWERS,
    DEPTH,
    HIDDEN,
    NUM_LABELS,
    TINY_BACKBONES,
    pixel_values,
    tiny_beit,
    tiny_clip_model,
)
from torch import nn

import gated_vpt
from gated_vpt import CDCPromptConfig, ConfigError, UnsupportedModelError, find_prompt_site
from gated_vpt.cdc.layer import CDCPromptBlock, num_reinforced

NUM_PROMPTS = 3


@functools.cache
def _site(backbone_name: str):
    return find_prompt_site(TINY_BACKBONES[backbone_name](head=True))


def _has_cls(backbone_name: str) -> bool:
    return _site(backbone_name).cls_token_index is not None


def _start(backbone_name: str) -> int:
    return _site(backbone_name).num_prefix_tokens


def _needs_cls(backbone_name: str) -> None:
    if not _has_cls(backbone_name):
        pytest.skip("no CLS token: AR is unavailable (its refusal is tested separately)")


CLS_FREE_BACKBONES = sorted(n for n in TINY_BACKBONES if not _has_cls(n))
# The method's maths runs on every family (fixture `backbone_name`); PEFT plumbing, which does not depend on the
# family's position mechanics, on a representative few to keep this file fast: plain ViT, several prefix tokens,
# relative position biases and tuple outputs, RoPE, no CLS token.
REPRESENTATIVE = [n for n in ("vit", "dinov2_registers", "beit", "dinov3", "siglip") if n in TINY_BACKBONES]


def _config(**overrides) -> CDCPromptConfig:
    fields = dict(num_prompts=NUM_PROMPTS, prompt_dropout=0.0, modules_to_save=["classifier"])
    return CDCPromptConfig(**{**fields, **overrides})


def _wrap(backbone_name: str, **overrides):
    """The tiny classifier with a CDC adapter; AR is on by default where the backbone has a CLS token."""
    overrides.setdefault("attentive_reinforcement", _has_cls(backbone_name))
    return peft.get_peft_model(TINY_BACKBONES[backbone_name](head=True), _config(**overrides))


def _blocks(model: nn.Module) -> list[CDCPromptBlock]:
    return [m for m in model.modules() if isinstance(m, CDCPromptBlock)]


def _prompted(model: nn.Module, adapter: str = "default") -> list[CDCPromptBlock]:
    return [b for b in _blocks(model) if adapter in b.prompt_roles]


def _fill(model: nn.Module, *, scale=None, weight_std=None, bias=None, seed: int = 0) -> None:
    """Set AR scales (a float, or "random"), DA weights (random with `weight_std`) and aggregation biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in _blocks(model):
            for p in block.cdc_reinforce_scales.values():
                if scale == "random":
                    p.copy_(0.5 + torch.rand((), generator=generator))
                elif scale is not None:
                    p.fill_(scale)
            for p in block.cdc_aggregation_weights.values():
                if weight_std is not None:
                    p.copy_(torch.randn(p.shape, generator=generator) * weight_std)
            for p in block.cdc_aggregation_biases.values():
                if bias is not None:
                    p.fill_(bias)


class _ReferenceVPTDeepBlock(nn.Module):
    """VPT-deep written from docs/methods.md §1, independently of the library: the first prompted block inserts its
    prompts after the prefix, later ones overwrite the prompt slots with their own, the last drops them after the
    block."""

    def __init__(self, block: nn.Module, prompts: torch.Tensor, start: int, first: bool, last: bool) -> None:
        super().__init__()
        self.block, self.prompts, self.start, self.first, self.last = block, prompts, start, first, last

    def _pad(self, value, free_len: int):
        # Masks / biases sized to the prompt-free sequence (BEiT, Data2Vec): prompt rows and columns get zero bias.
        # A rotary (cos, sin) over every token (MLCD): the prompts get the identity rotation.
        n, start = self.prompts.shape[0], self.start
        if isinstance(value, (tuple, list)) and len(value) == 2 and all(torch.is_tensor(v) for v in value):
            cos, sin = value
            if cos.dim() >= 2 and cos.shape[-2] == free_len:
                shape = list(cos.shape)
                shape[-2] = n
                d = cos.dim() - 2
                cat = lambda t, fill: torch.cat([t.narrow(d, 0, start), fill, t.narrow(d, start, free_len - start)], d)  # noqa: E731
                return type(value)((cat(cos, cos.new_ones(shape)), cat(sin, sin.new_zeros(shape))))
        if not torch.is_tensor(value) or value.dim() < 3:
            return value
        for dim in (value.dim() - 2, value.dim() - 1):
            if value.shape[dim] == free_len:
                shape = list(value.shape)
                shape[dim] = n
                zeros = value.new_zeros(shape)
                value = torch.cat([value.narrow(dim, 0, start), zeros, value.narrow(dim, start, free_len - start)], dim)
        return value

    def forward(self, hidden_states, *args, **kwargs):
        n, start = self.prompts.shape[0], self.start
        prompts = self.prompts.unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
        tail = hidden_states[:, start:] if self.first else hidden_states[:, start + n :]
        free_len = hidden_states.shape[1] - (0 if self.first else n)
        args = tuple(self._pad(a, free_len) for a in args)
        kwargs = {k: self._pad(v, free_len) for k, v in kwargs.items()}
        out = self.block(torch.cat([hidden_states[:, :start], prompts, tail], dim=1), *args, **kwargs)
        if self.last:
            hidden = out[0] if isinstance(out, tuple) else out
            hidden = torch.cat([hidden[:, :start], hidden[:, start + n :]], dim=1)
            out = (hidden, *out[1:]) if isinstance(out, tuple) else hidden
        return out


def _reference_vpt_deep(backbone_name: str, adapted: nn.Module) -> nn.Module:
    """A fresh base model whose prompted blocks run VPT-deep with the adapter's own prompt tensors."""
    reference = TINY_BACKBONES[backbone_name](head=True)
    site = find_prompt_site(reference)
    # Sequence-sized position biases computed inside the encoder (BEiT, Data2Vec) must give the prompt slots zero
    # bias, as in the adapted model: the library's family hooks do that (they are no part of the method under test).
    site.install_encoder_hooks(reference)
    stack = reference.get_submodule(site.stack_name)
    prompted = _prompted(adapted)
    for i, wrapper in enumerate(prompted):
        role = wrapper.prompt_roles["default"]
        stack[role.index] = _ReferenceVPTDeepBlock(
            stack[role.index],
            wrapper.cdc_prompts["default"].detach().clone(),
            site.num_prefix_tokens,
            first=i == 0,
            last=i == len(prompted) - 1,
        )
    # The adapted model trains its own copy of the head; use the same weights.
    head = adapted.base_model.model.classifier.modules_to_save["default"]
    reference.classifier.load_state_dict(head.state_dict())
    return reference.eval()


def _capture_inner(model: nn.Module):
    """Record every prompted block's inner input and output (the output after AR: appended forward hooks run last)."""
    records, handles = [], []
    for wrapper in _prompted(model):
        record = {"wrapper": wrapper}
        records.append(record)
        handles.append(
            wrapper.base_layer.register_forward_pre_hook(
                lambda m, a, k, r=record: r.update(input=a[0], args=a, kwargs=k), with_kwargs=True
            )
        )
        handles.append(
            wrapper.base_layer.register_forward_hook(
                lambda m, a, o, r=record: r.__setitem__("output", o[0] if isinstance(o, tuple) else o)
            )
        )
    return records, handles


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def test_public_api_and_defaults():
    cfg = CDCPromptConfig(
        num_prompts=10,
        cross_layer=True,
        dynamic_aggregation=True,
        attentive_reinforcement=True,
        reinforce_ratio=0.25,
        modules_to_save=["classifier"],
    )
    assert cfg.peft_type == gated_vpt.CDC_PROMPT == peft.PeftType.CDC_PROMPT
    assert cfg.aggregation_bias_init == -4.0 and cfg.reinforce_scale_init == 0.0
    assert gated_vpt.CDCPromptModel.prefix == "cdc_"


@pytest.mark.parametrize(
    "field, value",
    [
        ("reinforce_ratio", 0.0),
        ("reinforce_ratio", -0.1),
        ("reinforce_ratio", 1.01),
        ("reinforce_ratio", float("nan")),
        ("reinforce_ratio", "0.5"),
        ("reinforce_ratio", True),
        ("aggregation_bias_init", float("nan")),
        ("aggregation_bias_init", float("-inf")),
        ("aggregation_bias_init", None),
        ("reinforce_scale_init", float("inf")),
        ("cross_layer", "yes"),
        ("cross_layer", 1),
        ("dynamic_aggregation", None),
        ("attentive_reinforcement", 0),
        ("reinforce_final_block", "no"),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"`{field}`"):
        CDCPromptConfig(**{field: value})


def test_reinforced_token_count():
    assert num_reinforced(1.0, 196) == 196
    assert num_reinforced(0.25, 196) == 49
    assert num_reinforced(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point
    assert num_reinforced(0.251, 196) == 50
    assert num_reinforced(1e-6, 16) == 1


# ---------------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers, cross_layer, dynamic_aggregation, attentive_reinforcement, final",
    [
        (None, True, True, True, True),
        (None, True, False, True, True),
        (None, False, True, True, True),
        (None, True, True, False, True),
        (None, False, False, False, True),
        (None, True, True, True, False),
        ([1, 2], True, True, True, False),  # the final block is not prompted: every prompted block has its lambda
    ],
)
@pytest.mark.parametrize("backbone_name", ["vit"])
def test_parameter_count(backbone_name, layers, cross_layer, dynamic_aggregation, attentive_reinforcement, final):
    attentive_reinforcement = attentive_reinforcement and _has_cls(backbone_name)
    model = _wrap(
        backbone_name,
        layers_to_transform=layers,
        cross_layer=cross_layer,
        dynamic_aggregation=dynamic_aggregation,
        attentive_reinforcement=attentive_reinforcement,
        reinforce_final_block=final,
    )
    num_blocks = DEPTH if layers is None else len(layers)
    head = model.base_model.model.classifier.modules_to_save["default"]
    # N_p * D per prompted block + (L - 1)(2D + 1) with DA or (L - 1) without + L lambdas with AR + head.
    expected = NUM_PROMPTS * HIDDEN * num_blocks + head.weight.numel() + head.bias.numel()
    if cross_layer:
        expected += (num_blocks - 1) * ((2 * HIDDEN + 1) if dynamic_aggregation else 1)
    if attentive_reinforcement:
        expected += num_blocks - (1 if not final and layers is None else 0)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected, trainable
    # No parameter that can never get a gradient (DDP): the first prompted block aggregates nothing.
    first = _prompted(model)[0]
    assert "default" not in first.cdc_aggregation_biases and "default" not in first.cdc_aggregation_weights
    if not (cross_layer and dynamic_aggregation):
        assert not any("aggregation_weights" in n for n in trainable)


# Hosts whose head reads only the prefix tokens of the final block (CLS, DeiT's distillation token): there the
# final block's AR scale could never learn, and the default `reinforce_final_block=None` does not create it.
PREFIX_ONLY_HOSTS = {"vit", "deit", "vit_msn"}
# The tests' own linear probes (ViTMAE, DINOv3 and the CLIP-style towers here have no classifier) read CLS only too,
# but gated-vpt cannot know a custom head: they pass `reinforce_final_block=False` themselves, as the config's docs
# tell users.
CUSTOM_PREFIX_ONLY_HOSTS = {"vit_mae", "dinov3", *CLIP_STYLE_TOWERS}


def test_every_parameter_gets_a_gradient(backbone_name):
    overrides = {"reinforce_final_block": False} if backbone_name in CUSTOM_PREFIX_ONLY_HOSTS else {}
    model = _wrap(backbone_name, **overrides)
    head = model.base_model.model.classifier.modules_to_save["default"]
    final_lambda = backbone_name not in PREFIX_ONLY_HOSTS | CUSTOM_PREFIX_ONLY_HOSTS
    lambdas = (DEPTH - 1 + final_lambda) if _has_cls(backbone_name) else 0
    expected = (
        NUM_PROMPTS * HIDDEN * DEPTH
        + (DEPTH - 1) * (2 * HIDDEN + 1)
        + lambdas
        + head.weight.numel()
        + head.bias.numel()
    )
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert model.peft_config["default"].reinforce_final_block is final_lambda  # resolved, and saved so
    _fill(model, scale="random", weight_std=0.1)
    model.train()
    model(pixel_values()).logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


@pytest.mark.parametrize(
    "build, final_lambda",
    [
        (lambda: TINY_BACKBONES["beit"](head=True), True),  # mean pooling over the patches (BEiT's default)
        (lambda: tiny_beit(head=True, use_mean_pooling=False), False),
        (lambda: tiny_clip_model(), False),  # the image embedding is the projected CLS token
        (lambda: TINY_BACKBONES["vit"](head=False), True),  # a bare encoder: users read its patch tokens
    ],
    ids=["beit-mean-pooling", "beit-cls", "clip-model", "vit-bare"],
)
def test_final_block_reinforcement_follows_the_host_head(build, final_lambda):
    model = peft.get_peft_model(build(), _config(modules_to_save=None))
    last = _prompted(model)[-1]
    assert ("default" in last.cdc_reinforce_scales) is final_lambda
    assert model.peft_config["default"].reinforce_final_block is final_lambda
    explicit = peft.get_peft_model(build(), _config(modules_to_save=None, reinforce_final_block=True))
    assert "default" in _prompted(explicit)[-1].cdc_reinforce_scales  # an explicit value is kept


def test_resolved_final_block_choice_survives_a_save(tmp_path):
    model = _wrap("vit")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["reinforce_final_block"] is False
    reloaded = gated_vpt.from_pretrained(TINY_BACKBONES["vit"](head=True), tmp_path)
    assert "default" not in _prompted(reloaded)[-1].cdc_reinforce_scales


# ---------------------------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone_name, layers", [(n, None) for n in sorted(TINY_BACKBONES)] + [("vit", [1, 2]), ("beit", [1, 2])]
)
def test_without_cdc_and_ar_equals_vpt_deep_exactly(backbone_name, layers):
    model = _wrap(backbone_name, cross_layer=False, attentive_reinforcement=False, layers_to_transform=layers).eval()
    reference = _reference_vpt_deep(backbone_name, model)
    images = pixel_values(batch=3)
    with torch.no_grad():
        assert torch.equal(model(images).logits, reference(images).logits)


def test_ar_with_zero_scale_changes_nothing(backbone_name):
    _needs_cls(backbone_name)
    # CDC off, AR on at its init (lambda = 0): exactly VPT-deep, although AR ranks and scatters in every block.
    model = _wrap(backbone_name, cross_layer=False, attentive_reinforcement=True, reinforce_final_block=True).eval()
    assert all(float(b.cdc_reinforce_scales["default"]) == 0.0 for b in _prompted(model))
    reference = _reference_vpt_deep(backbone_name, model)
    images = pixel_values(batch=3)
    with torch.no_grad():
        assert torch.equal(model(images).logits, reference(images).logits)


@pytest.mark.parametrize(
    "backbone_name, dynamic_aggregation",
    [(n, True) for n in sorted(TINY_BACKBONES)] + [("vit", False), ("dinov3", False)],
)
def test_aggregation_with_alpha_zero_equals_vpt_deep_exactly(backbone_name, dynamic_aggregation):
    # alpha forced to exactly 0 (sigmoid(-1e4) underflows to 0 in float32), AR on with lambda = 0: exactly VPT-deep.
    assert torch.sigmoid(torch.tensor(-1e4)) == 0
    model = _wrap(backbone_name, dynamic_aggregation=dynamic_aggregation).eval()
    _fill(model, bias=-1e4, weight_std=0.01 if dynamic_aggregation else None)
    reference = _reference_vpt_deep(backbone_name, model)
    images = pixel_values(batch=3)
    with torch.no_grad():
        assert torch.equal(model(images).logits, reference(images).logits)


@pytest.mark.parametrize("backbone_name, dynamic_aggregation", [(n, True) for n in REPRESENTATIVE] + [("vit", False)])
def test_default_init_mixes_with_sigmoid_of_bias(backbone_name, dynamic_aggregation):
    # At the default init (w = 0, b = -4, lambda = 0) the only difference from VPT-deep is that every block after the
    # first sees P_l + sigmoid(-4) (Z_{l-1} - P_l) instead of P_l: |difference| <= 0.018 |Z_{l-1} - P_l|.
    model = _wrap(backbone_name, dynamic_aggregation=dynamic_aggregation).eval()
    start = _start(backbone_name)
    records, handles = _capture_inner(model)
    with torch.no_grad():
        model(pixel_values(batch=2))
    for handle in handles:
        handle.remove()
    alpha = torch.sigmoid(torch.tensor(-4.0))
    for previous, record in zip(records, records[1:], strict=False):
        z = previous["output"][:, start : start + NUM_PROMPTS]
        own = record["wrapper"].cdc_prompts["default"].detach()
        entering = record["input"][:, start : start + NUM_PROMPTS]
        assert torch.allclose(entering, own + alpha * (z - own), atol=1e-6)
        assert not torch.equal(entering, own.expand_as(entering))


# ---------------------------------------------------------------------------------------------------------------
# The method's maths
# ---------------------------------------------------------------------------------------------------------------


def test_dynamic_aggregation_is_input_conditioned(backbone_name):
    model = _wrap(backbone_name, attentive_reinforcement=False).eval()
    _fill(model, weight_std=2.0, bias=0.0)
    start = _start(backbone_name)
    records, handles = _capture_inner(model)
    with torch.no_grad():
        model(torch.cat([pixel_values(batch=1, seed=1), 3 * pixel_values(batch=1, seed=2)]))
    for handle in handles:
        handle.remove()
    for previous, record in zip(records, records[1:], strict=False):
        block = record["wrapper"]
        z = previous["output"][:, start : start + NUM_PROMPTS]
        own = block.cdc_prompts["default"].detach().expand_as(z)
        w = block.cdc_aggregation_weights["default"].detach()
        b = block.cdc_aggregation_biases["default"].detach()
        # alpha by hand: sigmoid(w^T [Z; P] + b), per sample and per prompt token.
        alpha = torch.sigmoid(torch.cat([z, own], dim=-1) @ w + b).unsqueeze(-1)
        entering = record["input"][:, start : start + NUM_PROMPTS]
        assert torch.allclose(entering, own + alpha * (z - own), atol=1e-6)
        # Different images give different mixing weights (small where layer scale keeps prompt outputs near their
        # input, as in BEiT, but far above float round-off).
        assert (alpha[0] - alpha[1]).abs().max() > 1e-5


@pytest.mark.parametrize("backbone_name", ["vit"])
def test_prompt_dropout_applies_to_every_blocks_own_prompts(backbone_name):
    model = _wrap(backbone_name, cross_layer=False, attentive_reinforcement=False, prompt_dropout=0.5).train()
    start = _start(backbone_name)
    records, handles = _capture_inner(model)
    torch.manual_seed(0)
    with torch.no_grad():
        model(pixel_values(batch=4))
    for handle in handles:
        handle.remove()
    for record in records:
        own = record["wrapper"].cdc_prompts["default"].detach()
        entering = record["input"][:, start : start + NUM_PROMPTS]
        kept = entering != 0
        assert 0.2 < kept.float().mean() < 0.8
        assert torch.allclose(entering[kept], (2 * own.expand_as(entering))[kept])


def _eager_twin(backbone_name: str, model: nn.Module) -> nn.Module:
    """The same adapted model (same weights) on a base model built with eager attention, for `output_attentions`."""
    base = TINY_BACKBONES[backbone_name](head=True, attn_implementation="eager")
    twin = peft.get_peft_model(base, copy.deepcopy(model.peft_config["default"]))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def test_attentive_reinforcement_adds_to_the_top_cls_attended_patches(backbone_name):
    _needs_cls(backbone_name)
    ratio = 0.25
    model = _wrap(backbone_name, reinforce_ratio=ratio, reinforce_final_block=True).eval()  # AR in every block
    assert all(
        m.config._attn_implementation == "sdpa"
        for m in model.modules()
        if hasattr(m, "config") and hasattr(m, "base_model_prefix")
    )
    _fill(model, scale="random", weight_std=0.1)
    start = _start(backbone_name)
    patch_start = start + NUM_PROMPTS
    images = pixel_values(batch=3)
    records, handles = _capture_inner(model)
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()

    # The reference ranking: CLS row of the attention maps of an eager-attention twin, mean over heads.
    twin = _eager_twin(backbone_name, model)
    with torch.no_grad():
        attentions = twin(images, output_attentions=True).attentions
    for record in records:
        block, index = record["wrapper"], record["wrapper"].prompt_roles["default"].index
        length = record["output"].shape[1]  # keys past the block's output (X-CLIP's message token) are no candidates
        scores = attentions[index][:, :, 0, patch_start:length].mean(dim=1)  # [B, N_patches]
        k = math.ceil(ratio * scores.shape[1])
        expected_rows = torch.zeros_like(scores, dtype=torch.bool).scatter(1, scores.topk(k, dim=1).indices, True)
        with torch.no_grad():
            # `.forward` skips the block's own hooks, so no AR; the same arguments (masks, biases, RoPE) as the call.
            plain = block.base_layer.forward(*record["args"], **record["kwargs"])
            plain = plain[0] if isinstance(plain, tuple) else plain
        added = record["output"] - plain
        # Nothing changes outside the reinforced patch rows (bit-exact), and exactly k rows change per image.
        changed_rows = added.ne(0).any(dim=-1)
        assert not changed_rows[:, :patch_start].any()
        assert torch.equal(changed_rows[:, patch_start:], expected_rows)
        # What is added: lambda_l * mean of the block's prompt outputs.
        delta = block.cdc_reinforce_scales["default"].detach() * plain[:, start:patch_start].mean(dim=1)
        assert torch.allclose(added[:, patch_start:][expected_rows], delta.repeat_interleave(k, dim=0), atol=1e-6)


def test_recorded_hidden_states_are_what_the_next_block_receives(backbone_name):
    model = _wrap(backbone_name).eval()
    _fill(model, scale="random", weight_std=0.1)
    start = _start(backbone_name)
    inputs, handles = [], []
    wrappers = _blocks(model)
    for wrapper in wrappers:
        handles.append(wrapper.register_forward_pre_hook(lambda m, a: inputs.append(a[0])))
    final = []
    handles.append(
        wrappers[-1].register_forward_hook(lambda m, a, o: final.append(o[0] if isinstance(o, tuple) else o))
    )
    with torch.no_grad():
        states = model(pixel_values(batch=2), output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    assert len(states) == len(wrappers) + 1
    for i, received in enumerate(inputs):
        if received.shape[1] != states[i].shape[1]:  # carries the prompt slots between prompted blocks
            received = torch.cat([received[:, :start], received[:, start + NUM_PROMPTS :]], dim=1)
        assert torch.equal(states[i], received), i
    assert torch.equal(states[-1], final[0])


# ---------------------------------------------------------------------------------------------------------------
# Backbones AR cannot serve
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone_name", CLS_FREE_BACKBONES)
def test_ar_without_cls_token_is_refused_before_the_model_is_modified(backbone_name):
    base = TINY_BACKBONES[backbone_name](head=True)
    before = {n: type(m) for n, m in base.named_modules()}
    with pytest.raises(UnsupportedModelError, match="attentive_reinforcement=False"):
        peft.get_peft_model(base, _config(attentive_reinforcement=True))
    assert {n: type(m) for n, m in base.named_modules()} == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in base.modules() if "layers" in type(m).__name__)
    # The fix named by the message works.
    model = peft.get_peft_model(base, _config(attentive_reinforcement=False))
    with torch.no_grad():
        assert model(pixel_values()).logits.shape == (2, NUM_LABELS)


# ---------------------------------------------------------------------------------------------------------------
# PEFT behaviours
# ---------------------------------------------------------------------------------------------------------------


def test_concurrent_plain_forwards_with_attentive_reinforcement_each_get_their_own_outputs():
    # Before: AR's captures of a plain forward lived on the block, shared by every thread: concurrent forwards got
    # each other's attention rows (6-10 wrong outputs and 53-70 raw errors in 160 calls). A thread may be switched out
    # at any line of AR's hooks: there, a forward on other images runs in another thread (a trace function
    # simulates the switch at each line), and both must get exactly their single-threaded outputs.
    import sys
    import threading

    from gated_vpt.cdc import layer

    model = _wrap("vit").eval()
    _fill(model, scale=0.5, weight_std=0.3, bias=0.0)
    x, other = pixel_values(seed=1), pixel_values(seed=2)
    with torch.no_grad():
        expected, expected_other = model(x).logits, model(other).logits
    outcomes: list = []

    def other_thread() -> None:
        try:
            with torch.no_grad():
                outcomes.append(torch.equal(model(other).logits, expected_other))
        except Exception as error:  # noqa: BLE001 - reported below
            outcomes.append(error)

    lines = iter(range(10**9))

    def switch_here(frame, event, arg):
        if event == "line" and next(lines) % 2 == 0:
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        return switch_here

    def trace(frame, event, arg):
        in_ar = frame.f_code.co_filename == layer.__file__ and "scratch" not in frame.f_code.co_name
        return switch_here if in_ar and threading.current_thread() is threading.main_thread() else None

    sys.settrace(trace)
    try:
        with torch.no_grad():
            actual = model(x).logits
    finally:
        sys.settrace(None)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(outcomes) > 10 and not errors, errors[:3]
    assert all(outcomes), f"{outcomes.count(False)} wrong of {len(outcomes)}"
    assert torch.equal(actual, expected)


@pytest.mark.parametrize(("preset", "hooked"), [("vpt-deep", False), ("cdc-no-ar", False), ("cdc", True)])
def test_only_attentive_reinforcement_hooks_the_attention(preset, hooked):
    # Before: every CDC block hooked its attention for AR (16 of VPT-deep's 20 hooks on a 4-block ViT), AR on or off.
    model = peft.get_peft_model(TINY_BACKBONES["vit"](), gated_vpt.preset_config(preset, num_prompts=NUM_PROMPTS))
    reinforcing = 0
    for block in _blocks(model):
        inside = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in block.base_layer.modules())
        reinforces = "default" in block.cdc_reinforce_scales  # (the final block only when its head reads patches)
        reinforcing += reinforces
        assert (inside > 0) == reinforces, (preset, inside)
    assert (reinforcing > 0) == hooked
