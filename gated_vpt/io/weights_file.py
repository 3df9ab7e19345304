# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""`adapter_model.safetensors`: opened with safetensors only (a pickle file is refused unopened), every tensor's dtype
and finiteness checked, before any model is built."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch

from ..prompting.prompt_config import PromptConfigBase
from ..prompting.registration import adapter_parameter_markers
from .config_file import load_adapter_config
from .errors import AdapterFileError, AdapterWeightsError, pickle_refusal, weights_error
from .locate import Unresolvable, locate
from .names import CONFIG_NAME, PICKLE_WEIGHTS_NAMES, WEIGHTS_NAME

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
# Integer buffers are legitimate in `modules_to_save` (BatchNorm's `num_batches_tracked` in a segmentation head);
# the prompt-tuning parameters themselves (`gpt_*`, `cdc_*`) are always floating point.
INTEGER_DTYPES = ("I64", "I32", "I16", "I8", "U8", "BOOL")
_PEFT_PREFIX = "base_model.model."


def is_saved_module_key(key: str) -> bool:
    """Whether `key` belongs to a `modules_to_save` copy (e.g. the classifier head), not to the prompt adapter."""
    return not any(f".{prefix}" in f".{key}" for prefix in adapter_parameter_markers())


def _may_be_integer(key: str) -> bool:
    return is_saved_module_key(key)


@dataclasses.dataclass
class CheckedWeights:
    """What `check_weights_file` found: the file and the shape of each tensor (keys without `base_model.model.`),
    and, for the checks against the live model (`compare`), each tensor's dtype and largest magnitude."""

    path: str
    shapes: dict[str, tuple[int, ...]]
    key_mapping: Optional[Mapping[str, str]] = None
    dtypes: dict[str, torch.dtype] = dataclasses.field(default_factory=dict)
    # The element of largest magnitude of each floating-point tensor, in the file's dtype: a cast is monotonic, so
    # if it fits the dtype the model holds the tensor in, every element does.
    peaks: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    # (smallest, largest) value of each floating-point tensor, for the methods' own range checks
    # (`PromptConfigBase.saved_values_problem`, e.g. GPT's temperatures).
    bounds: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    # The tensors checked, as read: a loader is given these, never a second read of the file (which could have
    # been replaced in between).
    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def folder(self) -> str:
        """The folder the weights file was found in (a local folder, or the snapshot folder in the Hub cache)."""
        return os.path.dirname(self.path)


def strip_prefix(key: str) -> str:
    """`key` without the `base_model.model.` prefix PEFT saves adapters with."""
    return key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key


def apply_key_mapping(key: str, key_mapping: Optional[Mapping[str, str]]) -> str:
    """PEFT's `load_peft_weights(key_mapping=...)` on one (prefix-free) key."""
    if not key_mapping:
        return key
    for pattern, replacement in key_mapping.items():
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


_TORCH_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


def _non_finite_error(path: str, key: str, tensor: torch.Tensor, finite: torch.Tensor) -> AdapterWeightsError:
    bad = int((~finite).sum())
    kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
    return weights_error(
        path,
        f"tensor `{strip_prefix(key)}` holds {bad} {kind} value(s) of {tensor.numel()}: the adapter diverged in "
        "training or "
        "the file is damaged, and it would only produce NaN / infinite outputs",
        "Use an earlier checkpoint, or train again (e.g. with a lower learning rate).",
    )


def check_key_spellings(keys: Iterable[str], path: str, prefixed: bool = False) -> None:
    """No tensor twice under two spellings of its name (with and without `base_model.model.`): the checks are keyed
    by the stripped name, and which spelling a loader copies last is not ours to guess, so neither is loaded.
    `prefixed`: every key must carry the prefix, as in a file `save_pretrained` wrote."""
    spelled: dict[str, str] = {}
    for key in keys:
        twin = spelled.setdefault(strip_prefix(key), key)
        if twin != key:
            raise weights_error(
                path,
                f"holds the same tensor twice, as `{twin}` and as `{key}` (the file was edited or assembled by "
                "other code)",
            )
    for key in keys if prefixed else ():
        if not key.startswith(_PEFT_PREFIX):
            raise weights_error(
                path,
                f"tensor `{key}` lacks the `{_PEFT_PREFIX}` prefix every key of a saved adapter has (the file was "
                "written by other code)",
                f"Save the adapter with `model.save_pretrained`, or prefix every key with `{_PEFT_PREFIX}`.",
            )


def checked_weights(
    tensors: Mapping[str, torch.Tensor], path: str, key_mapping: Optional[Mapping[str, str]] = None
) -> CheckedWeights:
    """Check the dtype and finiteness of every tensor and record what `compare` checks against the live model.

    Finiteness is checked in the dtype the values are loaded in: the prompt-tuning parameters are float32, so a
    float64 `1e300` (finite in the file) is refused here; `modules_to_save` weights take the dtype of the model's
    module, known only once the adapter is built (`compare.check_weights_match`)."""
    if not tensors:
        raise weights_error(path, "holds no tensors")
    check_key_spellings(tensors, path)
    checked = CheckedWeights(path, {}, key_mapping, tensors=dict(tensors))
    for key, tensor in tensors.items():
        if not torch.is_tensor(tensor):
            raise weights_error(path, f"`{strip_prefix(key)}` is a {type(tensor).__name__}, not a tensor")
        if not tensor.is_floating_point() and not (_may_be_integer(key) and tensor.dtype in _TORCH_INTEGER_DTYPES):
            raise weights_error(
                path,
                f"tensor `{strip_prefix(key)}` has dtype {tensor.dtype}; adapter weights are floating point (the "
                "file is "
                "damaged or not an adapter)",
            )
        name = strip_prefix(key)
        if tensor.device.type == "meta":
            raise weights_error(path, f"tensor `{name}` is a meta tensor (a shape without values)")
        checked.shapes[name] = tuple(tensor.shape)
        checked.dtypes[name] = tensor.dtype
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            raise _non_finite_error(path, key, tensor, finite)
        if tensor.numel():
            checked.peaks[name] = tensor.detach().reshape(-1)[tensor.detach().abs().argmax()].clone()
            checked.bounds[name] = (float(tensor.min()), float(tensor.max()))
        if not is_saved_module_key(key) and tensor.dtype != torch.float32:
            as_loaded = torch.isfinite(tensor.to(torch.float32))
            if not bool(as_loaded.all()):
                raise weights_error(
                    path,
                    f"tensor `{name}` holds {int((~as_loaded).sum())} value(s) of {tensor.numel()} beyond the range of "
                    f"torch.float32, the adapter's dtype (largest magnitude {float(checked.peaks[name].abs()):.3g} in "
                    f"the file's {tensor.dtype}): they would load as infinite and produce NaN / infinite outputs",
                    "Use an earlier checkpoint, or train again (e.g. with a lower learning rate).",
                )
    return checked


def check_weights_file(path: str, key_mapping: Optional[Mapping[str, str]] = None) -> CheckedWeights:
    """Open `adapter_model.safetensors` (never anything else) and check it fully."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise weights_error(path, "not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise weights_error(path, "is empty (0 bytes): the save or download was interrupted")
    tensors = {}
    try:
        with safe_open(path, framework="pt") as file:
            for key in file.keys():
                dtype = file.get_slice(key).get_dtype()
                if dtype not in FLOAT_DTYPES and not (_may_be_integer(key) and dtype in INTEGER_DTYPES):
                    raise weights_error(
                        path,
                        f"tensor `{strip_prefix(key)}` has dtype {dtype}; adapter weights are floating point (the "
                        "file is "
                        "damaged or not an adapter)",
                    )
                tensors[key] = file.get_tensor(key)
    except AdapterWeightsError:
        raise
    except Exception as error:  # safetensors' SafetensorError, OSError, ...
        detail = str(error).strip().rstrip(".") or type(error).__name__
        raise weights_error(
            path,
            f"not a valid safetensors file ({detail}): it is corrupted or was cut short ({size} bytes)",
            "Download or copy the adapter again, or save it again with `model.save_pretrained`.",
        ) from None
    check_key_spellings(tensors, path, prefixed=True)
    return checked_weights(tensors, path, key_mapping)


def check_adapter_files(
    model_id: str | os.PathLike,
    config: Optional[PromptConfigBase] = None,
    hub_kwargs: Optional[Mapping[str, Any]] = None,
    key_mapping: Optional[Mapping[str, str]] = None,
) -> Optional[tuple[PromptConfigBase, CheckedWeights]]:
    """Check both files of the adapter at `model_id` before anything is built.

    `config`: a config the caller already has (then `adapter_config.json` is not read). Returns (config, weights),
    or None when the adapter is not one of ours (PEFT's own code then loads it). A Hub repo that neither the Hub nor
    the local cache can give is refused: what cannot be checked is not loaded."""
    if config is None:
        config = load_adapter_config(model_id, hub_kwargs)
        if config is None:
            return None
    elif config.backbone is None:
        config = _with_saved_backbone(config, model_id, hub_kwargs)
    try:
        path = locate(model_id, WEIGHTS_NAME, hub_kwargs)
    except Unresolvable as error:
        unresolved: Optional[Unresolvable] = error
        path = None
    else:
        unresolved = None
    if path is None:
        for name in PICKLE_WEIGHTS_NAMES:
            try:
                pickle_path = locate(model_id, name, hub_kwargs, download=False)
            except Unresolvable:  # whether there is one only changes the message: the load is refused either way
                continue
            if pickle_path is not None:
                raise pickle_refusal(pickle_path)
    if unresolved is not None:
        raise weights_error(
            str(unresolved),
            "the adapter's weights cannot be checked, so it is not loaded",
            "Download the adapter once with the Hub reachable (it is then cached), or check the repo id, `revision` "
            "and `token`, or pass the folder that `save_pretrained` wrote.",
        )
    if path is None:
        folder = os.path.join(os.fspath(model_id), (hub_kwargs or {}).get("subfolder") or "")
        raise weights_error(
            os.path.join(folder, WEIGHTS_NAME),
            f"no such file: the adapter's weights are missing (only {CONFIG_NAME} is there)",
            "Copy the weights file from the original save, or save the adapter again with `model.save_pretrained`.",
        )
    weights = check_weights_file(path, key_mapping)
    check_saved_values(config, weights)
    return config, weights


def _with_saved_backbone(
    config: PromptConfigBase, model_id: str | os.PathLike, hub_kwargs: Optional[Mapping[str, Any]]
) -> PromptConfigBase:
    """A caller's `config=` without a backbone record, given the record of the adapter_config.json saved with the
    weights (the backbone they were trained for), so that the tuner refuses another backbone as for any load. The
    prompted blocks are the caller's to choose: only the backbone's identity is taken."""
    try:
        saved = load_adapter_config(model_id, hub_kwargs)
    except (AdapterFileError, Unresolvable):  # the caller may pass `config=` because the saved one is unusable
        return config
    if saved is None or not saved.backbone:
        return config
    config = copy.deepcopy(config)
    config.backbone = {k: v for k, v in saved.backbone.items() if k != "prompted_blocks"}
    return config


def check_saved_values(config: PromptConfigBase, weights: CheckedWeights) -> None:
    """The method's rules for the values of its own tensors (`PromptConfigBase.saved_values_problem`)."""
    own = {name: bounds for name, bounds in weights.bounds.items() if not is_saved_module_key(name)}
    problem = config.saved_values_problem(own)
    if problem is not None:
        raise weights_error(
            weights.path,
            problem,
            "The file was edited or written by other code: save the adapter again with `model.save_pretrained` "
            "(which keeps every value in range), or restore the original file.",
        )
