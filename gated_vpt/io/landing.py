# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The check on what lands: every tensor a `load_state_dict` would copy into an adapter, seen before any is copied.

The file checks (`weights_file`, `compare`) guard the loaders we wrap. This guards the place every path ends in:
`PeftModel.from_pretrained`, `load_adapter`, transformers' `load_adapter`, `peft.set_peft_model_state_dict` and a plain
`model.load_state_dict` all reach `load_state_dict` on the model the adapter is injected into, and torch runs that
module's load pre-hooks before it or any of its submodules copies a value. So one pre-hook there, installed by the
tuner, sees the whole incoming state dict, and a refusal leaves every tensor as it was.

What it checks, for each incoming tensor that lands in one of our adapters (prompt-method parameters and the
`modules_to_save` copies next to them; other keys, e.g. a full checkpoint's backbone weights, are the caller's):
the value is a real tensor of the live tensor's shape; a floating-point weight gets floating-point values; every value
stays finite in the live tensor's dtype; and each method's value rules hold (`PromptConfigBase.saved_values_problem`:
magnitudes no training produces, GPT's temperature range).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from .compare import pending_load
from .errors import AdapterWeightsError
from .weights_file import apply_key_mapping, strip_prefix

_FIX = (
    "The state dict was damaged or not written for this adapter: load the adapter with `PeftModel.from_pretrained` "
    "from a folder `save_pretrained` wrote, or pass the tensors `get_peft_model_state_dict` returned. The model was "
    "left unchanged."
)


def _landing_targets(model: nn.Module) -> dict[str, tuple[torch.Tensor, Any, str, str, bool]]:
    """name -> (live tensor, the adapter's config or None, the name in a saved file, the adapter, whether it is a
    prompt-method parameter) of every tensor of our adapters, named as `model.state_dict()` names them."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    targets: dict[str, tuple[torch.Tensor, Any, str, str, bool]] = {}
    for module_name, module in model.named_modules():
        dot = f"{module_name}." if module_name else ""
        if isinstance(module, BaseTunerLayer) and isinstance(getattr(module, "prompt_roles", None), dict):
            # a prompt method's block wrapper (`PromptBlock`, which io/ may not import)
            for layer_name in module.adapter_layer_names:
                for adapter, tensor in getattr(module, layer_name).items():
                    role = module.prompt_roles.get(adapter)
                    config = role.config if role is not None else None
                    targets[f"{dot}{layer_name}.{adapter}"] = (tensor, config, f"{dot}{layer_name}", adapter, True)
        elif isinstance(module, AuxiliaryTrainingWrapper):
            copies = getattr(module, "modules_to_save", None)
            if isinstance(copies, nn.ModuleDict):
                for name, tensor in copies.state_dict(keep_vars=True).items():
                    adapter, _, leaf = name.partition(".")
                    targets[f"{dot}modules_to_save.{name}"] = (tensor, None, f"{dot}{leaf}", adapter, False)
    return targets


def landing_problem(name: str, value: Any, live: torch.Tensor) -> Optional[str]:
    """What is wrong with copying `value` into the live tensor `live` (None when nothing is)."""
    if not torch.is_tensor(value):
        return f"`{name}` is a {type(value).__name__}, not a tensor"
    if value.device.type == "meta":
        return f"`{name}` is a meta tensor (a shape without values)"
    if tuple(value.shape) != tuple(live.shape):
        return f"`{name}` has shape {list(value.shape)}, the adapter's tensor {list(live.shape)}"
    if not live.is_floating_point():
        return None
    if not value.is_floating_point():
        return (
            f"`{name}` has dtype {value.dtype} for a {live.dtype} weight: it would load as "
            f"{'0 / 1' if value.dtype == torch.bool else 'whole numbers'}"
        )
    if value.numel() == 0:
        return None
    as_loaded = value.detach().to(live.dtype)
    finite = torch.isfinite(as_loaded)
    if not bool(finite.all()):
        source = value.detach()
        what = "NaN" if bool(torch.isnan(source).any()) else "infinite"
        if bool(torch.isfinite(source).all()):
            what = f"beyond the range of {live.dtype} (the dtype of this weight in the model)"
        return f"`{name}` holds {int((~finite).sum())} value(s) of {value.numel()} {what}"
    return None


def check_landing(model: nn.Module, state_dict: Mapping[str, Any], prefix: str) -> None:
    """Refuse `state_dict` (raise `AdapterWeightsError`) if a tensor in it would damage one of our adapters in
    `model`, which `load_state_dict` reaches under `prefix`."""
    targets = None
    # A load one of our loaders runs (after checking its file): exactly the checked tensors may land, nothing else.
    pending = pending_load()
    checked = None
    # id of an adapter's config -> (config, (smallest, largest) value of each incoming tensor by saved name)
    bounds: dict[int, tuple[Any, dict[str, tuple[float, float]]]] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        if targets is None:
            targets = _landing_targets(model)
            if not targets:
                return
        target = targets.get(key[len(prefix) :])
        if target is None:
            if pending is not None:
                raise AdapterWeightsError(
                    f"load_state_dict: `{key}` is not a tensor of adapter `{pending[0]}`, whose file "
                    f"{pending[1].path} was checked; the load was refused. {_FIX}"
                )
            continue
        live, config, saved_name, adapter, own = target
        problem = landing_problem(key, value, live)
        if problem is None and pending is not None and adapter == pending[0]:
            if checked is None:
                weights = pending[1]
                checked = {
                    apply_key_mapping(strip_prefix(k), weights.key_mapping): v for k, v in weights.tensors.items()
                }
            expected = checked.get(saved_name)
            if expected is None or not torch.equal(value.detach().cpu(), expected.to("cpu", value.dtype)):
                problem = (
                    f"`{key}` is not the tensor checked in {pending[1].path} (the file changed after its check, or "
                    "another state dict was passed)"
                )
        if problem is not None:
            raise AdapterWeightsError(f"load_state_dict: {problem}. {_FIX}")
        if own and config is not None and live.is_floating_point() and value.numel():
            entry = bounds.setdefault(id(config), (config, {}))
            entry[1][saved_name] = (float(value.min()), float(value.max()))
    for config, by_name in bounds.values():
        problem = config.saved_values_problem(by_name)
        if problem is not None:
            raise AdapterWeightsError(f"load_state_dict: {problem}. {_FIX}")


def landing_pre_hook(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
    """`module.register_load_state_dict_pre_hook` form of `check_landing`."""
    check_landing(module, state_dict, prefix)
