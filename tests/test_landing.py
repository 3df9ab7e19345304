"""The check where tensors land: whichever path calls `load_state_dict` (PEFT's `set_peft_model_state_dict`, a plain
`model.load_state_dict`, transformers' adapter API, our loaders), a hostile tensor for an adapter is refused before
any value is copied, and the model is left exactly as it was."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers import main_output, perturb_adapter
from methods import method_config
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from tiny_models import TINY_BACKBONES, pixel_values

import gated_vpt


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _model(method: str, backbone: str = "vit", dtype: torch.dtype = torch.float32):
    base = TINY_BACKBONES[backbone]().to(dtype)
    config = method_config(method, base, visible=True, modules_to_save=["classifier"], prompt_dropout=0.0)
    return get_peft_model(base, config).eval()


def _prompt_key(state: dict) -> str:
    return next(k for k in state if k.rsplit(".", 1)[-1].endswith("_prompts"))


def _head_key(state: dict) -> str:
    return next(k for k in state if "classifier" in k and k.endswith("weight"))


def _huge_float64(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.double().clone()
    tensor.view(-1)[0] = 1e300
    return tensor


# name -> (which tensor, what it becomes, what the error says)
DAMAGE = {
    "prompts-3e38": (_prompt_key, lambda t: torch.full_like(t, 3e38), r"magnitude 3e\+38, beyond 10000"),
    "prompts-nan": (_prompt_key, lambda t: t * float("nan"), r"NaN"),
    "prompts-shape": (_prompt_key, lambda t: torch.zeros(t.shape[0] + 3, t.shape[1]), r"has shape"),
    "prompts-meta": (_prompt_key, lambda t: torch.empty(t.shape, device="meta"), r"meta tensor"),
    "prompts-int": (_prompt_key, lambda t: t.round().long(), r"int64 for a torch.float32 weight"),
    "head-float64-1e300": (_head_key, _huge_float64, r"beyond the range of torch.float32"),
    "head-bool": (_head_key, lambda t: t > 0, r"0 / 1"),
    "head-not-a-tensor": (_head_key, lambda t: t.tolist(), r"not a tensor"),
}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model, before: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    with torch.no_grad():
        assert torch.equal(main_output(model(pixel_values())), logits)


def _as_loaded(saved: dict) -> dict:
    """`saved` (as `get_peft_model_state_dict` gives it) under the names `model.state_dict()` has."""
    out = {}
    for key, value in saved.items():
        module, _, leaf = key.rpartition(".")
        out[f"{module}.modules_to_save.default.{leaf}" if leaf in ("weight", "bias") else f"{key}.default"] = value
    return out


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("path", ["set_peft_model_state_dict", "load_state_dict"])
def test_a_hostile_state_dict_is_refused_and_the_model_is_untouched(method, damage, path):
    # Before: these paths skipped every check (only the file loaders had them): a 3e38 prompt, a float64 1e300 or
    # bool head loaded as NaN-producing, infinite or 0/1 weights, a wrong shape loaded everything else first.
    model = _model(method)
    perturb_adapter(model)
    saved = get_peft_model_state_dict(model)
    pick, make, message = DAMAGE[damage]
    key = pick(saved)
    hostile = {**saved, key: make(saved[key])}
    before = _snapshot(model)
    with torch.no_grad():
        logits = main_output(model(pixel_values()))
    if path == "load_state_dict":
        hostile = _as_loaded(hostile)
        load = lambda: model.load_state_dict(hostile, strict=False)  # noqa: E731
    else:
        load = lambda: set_peft_model_state_dict(model, hostile)  # noqa: E731
    with pytest.raises(gated_vpt.AdapterWeightsError, match=message):
        load()
    _assert_untouched(model, before, logits)


def test_good_state_dicts_still_load_through_both_paths(method):
    model = _model(method)
    other = _model(method)
    perturb_adapter(model)
    saved = get_peft_model_state_dict(model)
    set_peft_model_state_dict(other, saved)
    with torch.no_grad():
        assert torch.equal(main_output(other(pixel_values())), main_output(model(pixel_values())))
    # a full checkpoint (backbone included), as the HF Trainer restores one
    fresh = _model(method)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(main_output(fresh(pixel_values())), main_output(model(pixel_values())))


def test_a_temperature_outside_its_range_is_refused_where_it_lands():
    model = _model("gpt")
    saved = get_peft_model_state_dict(model)
    key = next(k for k in saved if "gpt_temperatures" in k)
    before = _snapshot(model)
    with torch.no_grad():
        logits = main_output(model(pixel_values()))
    with pytest.raises(gated_vpt.AdapterWeightsError, match=r"outside `temperature_range`"):
        set_peft_model_state_dict(model, {**saved, key: torch.tensor(50.0)})
    _assert_untouched(model, before, logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_outputs_stay_finite_with_every_value_at_its_bound(backbone_name, method, dtype, sign):
    """What the bounds refuse is what overflows: at the bounds themselves every output is finite."""
    _assert_finite_at_the_bounds(method, backbone_name, dtype, sign)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gpt_outputs_stay_finite_at_the_bounds_in_float16(backbone_name, sign):
    # (CDC's reinforcement can overflow float16 at its bounds; docs/reliability.md says so.)
    _assert_finite_at_the_bounds("gpt", backbone_name, torch.float16, sign)


def _assert_finite_at_the_bounds(method: str, backbone_name: str, dtype: torch.dtype, sign: float) -> None:
    model = _model(method, backbone_name, dtype)
    with torch.no_grad():
        for block in model.modules():
            if not isinstance(getattr(block, "prompt_roles", None), dict):
                continue
            for layer_name in block.adapter_layer_names:
                for adapter, param in getattr(block, layer_name).items():
                    config = block.prompt_roles[adapter].config
                    bound = config.value_bound(layer_name)
                    if layer_name == "gpt_temperatures":
                        param.fill_(config.temperature_range[0])  # the smallest temperature: the sharpest logits
                    else:
                        param.fill_(sign * bound)
        output = main_output(model(pixel_values().to(dtype)))
    assert torch.isfinite(output).all()


def test_a_refused_load_through_transformers_adapter_state_dict_leaves_the_model(tmp_path):
    model = _model("gpt")
    saved = get_peft_model_state_dict(model)
    config = copy.deepcopy(model.peft_config["default"])
    key = _prompt_key(saved)
    base = TINY_BACKBONES["vit"]()
    before = _snapshot(base)
    with pytest.raises(gated_vpt.AdapterWeightsError):
        base.load_adapter(adapter_state_dict={**saved, key: torch.full_like(saved[key], 3e38)}, peft_config=config)
    after = base.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("entry", ["transformers load_adapter", "PeftModel.from_pretrained"])
def test_a_file_swapped_after_its_check_is_not_what_loads(entry, tmp_path, monkeypatch):
    # Before: transformers' `load_adapter` read adapter_model.safetensors again after our check, so a file swapped in
    # between overwrote the frozen `cls_token` (and could carry any value).
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    import gated_vpt.io.patches as integrations

    trained = _model("gpt")
    perturb_adapter(trained)
    trained.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    good = dict(load_file(weights))
    hostile = dict(good)
    hostile["base_model.model.vit.embeddings.cls_token"] = torch.full((1, 1, 32), 7.0)
    prompts = _prompt_key(hostile)
    hostile[prompts] = torch.full_like(hostile[prompts], 9.0)
    checked = integrations.check_adapter_files

    def check_then_swap(*args, **kwargs):
        save_file(good, weights)  # every check sees the good file ...
        result = checked(*args, **kwargs)
        save_file(hostile, weights)  # ... and the attacker swaps it right after, before the load
        return result

    monkeypatch.setattr(integrations, "check_adapter_files", check_then_swap)
    base = TINY_BACKBONES["vit"]()
    cls_token = base.vit.embeddings.cls_token.detach().clone()
    if entry == "transformers load_adapter":
        base.load_adapter(str(tmp_path))  # loads the checked tensors, never the swapped file
        model = base
    else:
        # PEFT reads the file again itself: what lands is compared with what was checked, and refused if it differs
        with pytest.raises(gated_vpt.AdapterWeightsError, match="not a tensor of adapter|not the tensor checked"):
            PeftModel.from_pretrained(base, tmp_path)
        assert torch.equal(base.vit.embeddings.cls_token, cls_token)
        monkeypatch.setattr(integrations, "check_adapter_files", checked)
        save_file(good, weights)
        model = PeftModel.from_pretrained(base, tmp_path)
    assert torch.equal(base.vit.embeddings.cls_token, cls_token)
    loaded = dict(model.named_parameters())
    live = next(v for k, v in loaded.items() if "gpt_prompts" in k)
    assert not torch.equal(live, torch.full_like(live, 9.0))
    expected = next(v for k, v in trained.named_parameters() if "gpt_prompts" in k)
    assert torch.equal(live, expected)
