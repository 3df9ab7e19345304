"""Property-based tests (hypothesis) over config fields, batch sizes, image sizes, dtypes and train / eval mode.

Two kinds of property:
- validation: any value of any field either builds a config or raises the documented `ConfigError`, and exactly the
  values the documented ranges allow are accepted (a reference predicate written from the docs decides);
- forward: for every valid config on the tiny ViT and DINOv2, in float32 and bfloat16, train and eval mode, with any
  batch size and image size, the model runs (the only error allowed is the documented `ConfigError` for blocks the
  backbone does not have), outputs have the standard shapes and the tuner produces no NaN / Inf (also in gradients).

Runs derandomized (the same examples every run, no example database written) with modest `max_examples`.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from peft import get_peft_model
from tiny_models import DEPTH, HIDDEN, NUM_LABELS, PATCH_SIZE, TINY_BACKBONES

import gated_vpt
from gated_vpt import ConfigError, GatedPromptConfig
from gated_vpt.prompting.prompt_config import FLOAT32_MAX, MAX_NUM_PROMPTS, MIN_TEMPERATURE

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None)
MODEL = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------------------------------------------
# Validation: ConfigError exactly for the values the docs exclude
# ----------------------------------------------------------------------------------------------------------------

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300),  # too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-3, 8), max_size=4),
    st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite32(v) -> bool:
    try:
        return _real(v) and math.isfinite(v) and abs(v) <= FLOAT32_MAX
    except OverflowError:
        return False


def _valid_layers(v) -> bool:
    if v is None:
        return True
    layers = [v] if _int(v) else v
    if not isinstance(layers, (list, tuple)) or not layers or not all(_int(i) and i >= 0 for i in layers):
        return False
    layers = sorted(set(layers))
    return layers == list(range(layers[0], layers[-1] + 1))


def _valid_temperature_range(v) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(_finite32(x) for x in v)
        and MIN_TEMPERATURE <= v[0] <= v[1]
    )


# field -> (values to try, the documented rule)
GATED_FIELDS = {
    "num_prompts": (
        st.one_of(ANYTHING, st.integers(-2, MAX_NUM_PROMPTS + 2)),
        lambda v: _int(v) and 1 <= v <= MAX_NUM_PROMPTS,
    ),
    "prompt_dropout": (st.one_of(ANYTHING, st.floats(-0.5, 1.5)), lambda v: _real(v) and 0 <= v < 1),
    "prompt_init": (
        st.one_of(ANYTHING, st.sampled_from(["xavier", "normal", "kaiming"])),
        lambda v: v in ("xavier", "normal"),
    ),
    "gate_init": (st.one_of(ANYTHING, st.floats(-4e38, 4e38)), _finite32),
    "temperature_range": (
        st.one_of(
            ANYTHING, st.tuples(st.floats(-1, 20), st.floats(-1, 20)), st.tuples(st.floats(0, 1e-3), st.floats(0, 1))
        ),
        _valid_temperature_range,
    ),
    "use_gates": (ANYTHING, lambda v: isinstance(v, bool)),
    "learn_temperature": (ANYTHING, lambda v: isinstance(v, bool)),
    "layers_to_transform": (
        st.one_of(ANYTHING, st.integers(-1, 6), st.lists(st.integers(-1, 6), max_size=5)),
        _valid_layers,
    ),
}


def _check_validation(config_cls, field, value, valid) -> None:
    try:
        config_cls(**{field: value})
    except ConfigError as error:
        assert not valid(value), f"{field}={value!r} is documented as valid but was refused: {error}"
        assert str(error).startswith(f"`{field}` must be "), str(error)
    else:
        assert valid(value), f"{field}={value!r} is documented as invalid but was accepted"


@pytest.mark.parametrize("field", sorted(GATED_FIELDS))
def test_gated_config_accepts_exactly_the_documented_values(field):
    strategy, valid = GATED_FIELDS[field]

    @FAST
    @given(strategy)
    def check(value):
        _check_validation(GatedPromptConfig, field, value, valid)

    check()


CDC_FIELDS = {
    "cross_layer": (ANYTHING, lambda v: isinstance(v, bool)),
    "dynamic_aggregation": (ANYTHING, lambda v: isinstance(v, bool)),
    "attentive_reinforcement": (ANYTHING, lambda v: isinstance(v, bool)),
    "reinforce_final_block": (ANYTHING, lambda v: v is None or isinstance(v, bool)),
    "aggregation_bias_init": (st.one_of(ANYTHING, st.floats(-4e38, 4e38)), _finite32),
    "reinforce_scale_init": (st.one_of(ANYTHING, st.floats(-4e38, 4e38)), lambda v: _finite32(v) and abs(v) <= 100),
    "reinforce_ratio": (st.one_of(ANYTHING, st.floats(-0.5, 1.5)), lambda v: _finite32(v) and 0 < v <= 1),
    "num_prompts": GATED_FIELDS["num_prompts"],
    "layers_to_transform": GATED_FIELDS["layers_to_transform"],
}


@pytest.mark.parametrize("field", sorted(CDC_FIELDS))
def test_cdc_config_accepts_exactly_the_documented_values(field):
    strategy, valid = CDC_FIELDS[field]

    @FAST
    @given(strategy)
    def check(value):
        _check_validation(gated_vpt.CDCPromptConfig, field, value, valid)

    check()


# ----------------------------------------------------------------------------------------------------------------
# Forward: any valid config, batch, image size, dtype and mode
# ----------------------------------------------------------------------------------------------------------------

_PRISTINE: dict[str, torch.nn.Module] = {}


def _base(backbone: str, dtype: torch.dtype) -> torch.nn.Module:
    if backbone not in _PRISTINE:
        _PRISTINE[backbone] = TINY_BACKBONES[backbone]()
    return copy.deepcopy(_PRISTINE[backbone]).to(dtype)


LAYERS = st.one_of(
    st.none(),
    st.integers(0, DEPTH),  # DEPTH itself is out of range: the documented ConfigError
    st.tuples(st.integers(0, DEPTH), st.integers(0, DEPTH - 1)).map(lambda t: list(range(t[0], t[0] + t[1] + 1))),
)
COMMON = dict(
    num_prompts=st.integers(1, 24),
    prompt_dropout=st.one_of(st.just(0.0), st.floats(0, 0.95)),
    prompt_init=st.sampled_from(["xavier", "normal"]),
    layers_to_transform=LAYERS,
)
GATED = st.fixed_dictionaries(
    {
        **COMMON,
        "gate_init": st.one_of(st.floats(-20, 20), st.sampled_from([-3e38, 3e38, 0.0])),
        "use_gates": st.booleans(),
        "learn_temperature": st.booleans(),
        "temperature_range": st.tuples(st.floats(MIN_TEMPERATURE, 1e4), st.floats(MIN_TEMPERATURE, 1e4)).map(
            lambda t: tuple(sorted(t))
        ),
    }
)
CDC = st.fixed_dictionaries(
    {
        **COMMON,
        "cross_layer": st.booleans(),
        "dynamic_aggregation": st.booleans(),
        "aggregation_bias_init": st.one_of(st.floats(-20, 20), st.sampled_from([-3e38, 3e38])),
        "attentive_reinforcement": st.booleans(),
        "reinforce_ratio": st.floats(0.01, 1.0),
        "reinforce_scale_init": st.floats(-100, 100),
        "reinforce_final_block": st.booleans(),
    }
)
SHAPES = st.fixed_dictionaries({"batch": st.integers(1, 3), "patches": st.integers(1, 6)})  # images of 8-48 px
# Every combination of backbone, dtype and mode is covered explicitly; hypothesis draws the rest.
COMBINATIONS = [
    pytest.param(backbone, dtype, train, id=f"{backbone}-{str(dtype)[6:]}-{'train' if train else 'eval'}")
    for backbone in ("vit", "dinov2")
    for dtype in (torch.float32, torch.bfloat16)
    for train in (False, True)
]


def _run_property(config_cls, fields: dict, run: dict) -> None:
    config = config_cls(modules_to_save=["classifier"], **fields)  # every drawn value is valid
    base = _base(run["backbone"], run["dtype"])
    try:
        model = get_peft_model(base, config)
    except ConfigError as error:  # the documented error for blocks the backbone does not have
        assert "layers_to_transform" in str(error) and max(config.layers_to_transform) >= DEPTH
        event("ConfigError: layers beyond the backbone")
        return
    event(f"layers {config.layers_to_transform}")
    model.train(run["train"])
    size = run["patches"] * PATCH_SIZE
    x = torch.randn(run["batch"], 3, size, size, generator=torch.Generator().manual_seed(0)).to(run["dtype"])
    kwargs = {"interpolate_pos_encoding": True} if run["backbone"] == "vit" else {}
    with torch.set_grad_enabled(run["train"]):
        out = model(pixel_values=x, output_hidden_states=True, **kwargs)
    assert out.logits.shape == (run["batch"], NUM_LABELS)
    assert out.logits.dtype == run["dtype"]
    assert torch.isfinite(out.logits).all()
    tokens = 1 + run["patches"] ** 2  # CLS + patches: the prompt slots never leak into the outputs
    assert len(out.hidden_states) == DEPTH + 1
    for hidden in out.hidden_states:
        assert hidden.shape == (run["batch"], tokens, HIDDEN)
        assert torch.isfinite(hidden).all()
    if run["train"]:
        out.logits.float().square().mean().backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable
        for param in trainable:
            assert param.grad is None or torch.isfinite(param.grad).all()
    else:
        with torch.no_grad():  # eval mode is deterministic
            assert torch.equal(model(pixel_values=x, **kwargs).logits, out.logits)


@pytest.mark.parametrize(("backbone", "dtype", "train"), COMBINATIONS)
@MODEL
@given(fields=GATED, shapes=SHAPES)
def test_gated_prompt_forward_is_finite_with_standard_shapes(backbone, dtype, train, fields, shapes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _run_property(GatedPromptConfig, fields, dict(shapes, backbone=backbone, dtype=dtype, train=train))


@pytest.mark.parametrize(("backbone", "dtype", "train"), COMBINATIONS)
@MODEL
@given(fields=CDC, shapes=SHAPES)
def test_cdc_prompt_forward_is_finite_with_standard_shapes(backbone, dtype, train, fields, shapes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _run_property(gated_vpt.CDCPromptConfig, fields, dict(shapes, backbone=backbone, dtype=dtype, train=train))
