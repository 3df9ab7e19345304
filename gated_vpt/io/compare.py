# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The live adapter against its file: the file must hold exactly the tensors (names and shapes) of the adapter its
config describes, checked right after PEFT created the parameters and before any value is copied."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Mapping
from typing import Optional

import torch
from torch import nn

from .errors import HeadSizeError, weights_error
from .names import CONFIG_NAME, WEIGHTS_NAME
from .weights_file import CheckedWeights, apply_key_mapping, is_saved_module_key


def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Every tensor of `adapter_name` in `model`, keyed as in the saved file (minus `base_model.model.`).

    Walks PEFT's tuner layers (their per-adapter `adapter_layer_names` containers) and auxiliary wrappers
    (`modules_to_save`), the same places PEFT's `get_peft_model_state_dict` reads."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    if isinstance(model, PeftModel):
        model = model.base_model.model  # names below the wrapped model, as saved
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        dot = f"{name}." if name else ""
        if isinstance(module, AuxiliaryTrainingWrapper):
            state = module.state_dict(keep_vars=True)
            for saved, stored in module.adapter_state_dict_load_map(adapter_name).items():
                out[dot + saved] = state[stored]
        elif isinstance(module, BaseTunerLayer):
            for layer_name in getattr(module, "adapter_layer_names", ()):
                container = getattr(module, layer_name, None)
                if container is None or adapter_name not in container:
                    continue
                item = container[adapter_name]
                if torch.is_tensor(item):
                    out[f"{dot}{layer_name}"] = item
                else:
                    for key, tensor in item.state_dict(keep_vars=True).items():
                        out[f"{dot}{layer_name}.{key}"] = tensor
    return out


def _fmt_keys(keys: Iterable[str], limit: int = 4) -> str:
    keys = sorted(keys)
    shown = ", ".join(f"`{k}`" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_weights_match(model: nn.Module, adapter_name: str, weights: CheckedWeights) -> None:
    """The file holds exactly the tensors, with the shapes, of the adapter built from its config (raise otherwise).
    Called after PEFT created the adapter's parameters and before any value is loaded into them."""
    live = adapter_tensors(model, adapter_name)
    expected = {k: tuple(v.shape) for k, v in live.items()}
    found = {apply_key_mapping(k, weights.key_mapping): v for k, v in weights.shapes.items()}
    fix = (
        f"{CONFIG_NAME} and {WEIGHTS_NAME} must come from the same save: copy both from it, or save the adapter "
        "again with `model.save_pretrained`."
    )
    unexpected = set(found) - set(expected)
    if unexpected:
        raise weights_error(
            weights.path,
            f"holds tensors that are not part of the adapter described by {CONFIG_NAME}: {_fmt_keys(unexpected)} "
            "(refused: nothing outside the adapter, such as the frozen backbone, is ever loaded from an adapter file)",
            fix,
        )
    missing = set(expected) - set(found)
    if missing:
        raise weights_error(
            weights.path,
            f"lacks tensors of the adapter described by {CONFIG_NAME}: {_fmt_keys(missing)} (they would stay at "
            "their random initialisation)",
            fix,
        )
    wrong = sorted(k for k in expected if expected[k] != found[k])
    heads = [k for k in wrong if is_saved_module_key(k)]
    if heads:
        raise _head_size_error(model, adapter_name, weights.path, {k: (found[k], expected[k]) for k in heads})
    if wrong:
        details = "; ".join(
            f"`{k}` is {list(found[k])} in the file, {list(expected[k])} in the adapter" for k in wrong[:3]
        )
        raise weights_error(
            weights.path, f"tensor shapes do not match the adapter described by {CONFIG_NAME}: {details}", fix
        )
    _check_values_as_loaded(live, weights)


def _check_values_as_loaded(live: Mapping[str, torch.Tensor], weights: CheckedWeights) -> None:
    """Each value must survive the cast to the dtype of the tensor it is copied into (PEFT and transformers cast
    silently): an integer or bool file tensor for a floating-point weight would load as whole numbers or 0 / 1, and
    a value beyond the target dtype's range as infinite. Integer buffers (BatchNorm's `num_batches_tracked`) stay
    integers."""
    dtypes = {apply_key_mapping(k, weights.key_mapping): v for k, v in weights.dtypes.items()}
    peaks = {apply_key_mapping(k, weights.key_mapping): v for k, v in weights.peaks.items()}
    for key in sorted(live):
        target, stored = live[key].dtype, dtypes.get(key)
        if stored is None or not target.is_floating_point:
            continue
        if not stored.is_floating_point:
            raise weights_error(
                weights.path,
                f"tensor `{key}` has dtype {stored} in the file, but it is a {target} weight in the model: loading "
                f"would cast it to {'0 / 1' if stored == torch.bool else 'whole numbers'} (the file is damaged or not "
                "an adapter)",
            )
        peak = peaks.get(key)
        if peak is not None and not bool(torch.isfinite(peak.to(target))):
            raise weights_error(
                weights.path,
                f"tensor `{key}` holds values beyond the range of {target}, the dtype of this weight in the model "
                f"(largest magnitude {float(peak.abs()):.3g} in the file's {stored}): they would load as infinite "
                "and produce NaN / infinite outputs",
                "Load the base model in a wider dtype (e.g. `dtype=torch.float32`), or use an earlier checkpoint.",
            )


def _head_size_error(
    model: nn.Module, adapter_name: str, path: str, shapes: Mapping[str, tuple[tuple, tuple]]
) -> HeadSizeError:
    details = "; ".join(
        f"`{k}` is {list(a)} in the adapter, {list(b)} in the base model" for k, (a, b) in shapes.items()
    )
    config = getattr(model, "peft_config", {}).get(adapter_name)
    trained = getattr(config, "base_model_num_labels", None)
    if trained is None:  # adapters saved before the record existed: the head's output size
        trained = next((a[0] for k, (a, _) in shapes.items() if k.endswith("weight") and len(a) == 2), None)
    host_config = getattr(model, "config", None)
    current = getattr(host_config, "num_labels", None)
    built = f" (it was built with `num_labels={current}`)" if current is not None else ""
    labels = f"num_labels={trained}, " if trained is not None else "the training num_labels, "
    return HeadSizeError(
        f"{path}: the adapter's trained head (`modules_to_save`) does not fit the base model's head: {details}. The "
        f"base model's head has another size{built} than the one the adapter was trained with. Fix: build the base "
        f"model as for training, e.g. `AutoModelForImageClassification.from_pretrained(base_id, {labels}"
        "ignore_mismatched_sizes=True)`; the head's weights then come from the adapter. The model was left unchanged."
    )


# The weights being loaded, announced by the loaders in `gated_vpt.io.hub` and checked by the tuner right after it
# created the adapter's parameters (`check_pending_weights`), before PEFT or transformers copy any value.
_PENDING: contextvars.ContextVar[Optional[tuple[str, CheckedWeights]]] = contextvars.ContextVar(
    "gated_vpt_pending_weights", default=None
)


@contextlib.contextmanager
def pending_weights(adapter_name: str, weights: CheckedWeights) -> Iterator[None]:
    token = _PENDING.set((adapter_name, weights))
    try:
        yield
    finally:
        _PENDING.reset(token)


def pending_load() -> Optional[tuple[str, CheckedWeights]]:
    """(adapter name, the checked weights) of the load one of our loaders is running in this context, if any."""
    return _PENDING.get()


def check_pending_weights(model: nn.Module, adapter_name: str) -> None:
    """Called by the tuner after injecting `adapter_name`: no-op unless a loader announced weights for it."""
    pending = _PENDING.get()
    if pending is not None and pending[0] == adapter_name:
        check_weights_match(model, adapter_name, pending[1])
