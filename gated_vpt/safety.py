# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Loading and saving our adapters safely: bad files give a clear error, nothing is unpickled, a failed load leaves
the model exactly as it was, and a save is atomic.

Everything here is off the hot path: it runs when an adapter is loaded or saved, never in `forward`.

Why the checks live here and not (only) in the tuner: PEFT's own flow (`PeftModel.from_pretrained`,
`PeftModel.load_adapter`, transformers' `load_adapter`) builds and injects the adapter modules *first* and reads the
weights file afterwards, and the tuner never sees the file's path. So `gated_vpt.hub` wraps those three entry points
for our adapter types only, and they call into this module:

1. `check_adapter_files` reads `adapter_config.json` and `adapter_model.safetensors` *before* anything is built: JSON,
   field names and values, the recorded backbone, the safetensors header, dtypes, finiteness. A pickle weights file
   (`adapter_model.bin`) is refused without being opened.
2. While PEFT injects the adapter, the tuner calls `check_pending_weights` right after creating the new parameters
   and before any value is loaded: the file must hold exactly the tensors (names and shapes) of the adapter that
   `adapter_config.json` describes. So an unexpected tensor can never be written into the frozen backbone.
3. `preserved_on_error` snapshots the model's structure (children, parameters, buffers, hooks, attributes,
   `requires_grad`, train/eval mode) and restores it if anything fails, so even a failure after injection leaves no
   wrapper, hook or half-loaded adapter behind.

`atomic_save` writes a save into a temporary folder next to the target and switches it in atomically.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import dataclasses
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Optional

import torch
from torch import nn

from .prompt_config import ConfigError, PromptConfigBase, backbone_record_problem

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# Pickle-based weight files that PEFT / transformers fall back to; loading them runs arbitrary code from the file.
PICKLE_WEIGHTS_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.pkl")
# A real adapter_config.json is about 1 KB; refuse to parse a hostile multi-gigabyte one.
MAX_CONFIG_BYTES = 1 << 20
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
# Integer buffers are legitimate in `modules_to_save` (BatchNorm's `num_batches_tracked` in a segmentation head);
# the prompt-tuning parameters themselves (`gpt_*`, `cdc_*`) are always floating point.
INTEGER_DTYPES = ("I64", "I32", "I16", "I8", "U8", "BOOL")
ADAPTER_PARAMETER_MARKERS = (".gpt_", ".cdc_")


def _is_saved_module_key(key: str) -> bool:
    """Whether `key` belongs to a `modules_to_save` copy (e.g. the classifier head), not to the prompt adapter."""
    return not any(marker in f".{key}" for marker in ADAPTER_PARAMETER_MARKERS)


def _may_be_integer(key: str) -> bool:
    return _is_saved_module_key(key)


# Fields newer versions added, which adapters saved before them lack (their defaults apply).
FIELDS_ADDED_LATER = ("base_model_class", "base_model_num_labels")
_PEFT_PREFIX = "base_model.model."
_HUB_KEYS = ("subfolder", "revision", "token", "cache_dir", "local_files_only")

RESAVE = "Save the adapter again with `model.save_pretrained(folder)`, or copy the complete folder of a good save."


class AdapterFileError(ValueError):
    """A file of a saved adapter is missing, unreadable, unsafe or does not match the adapter it describes."""


class AdapterConfigError(AdapterFileError, ConfigError):
    """`adapter_config.json` is missing, not JSON, or holds fields or values a gated-vpt adapter cannot have."""


class AdapterWeightsError(AdapterFileError):
    """`adapter_model.safetensors` is missing, corrupted, or does not hold the tensors of the adapter."""


class HeadSizeError(AdapterWeightsError):
    """The adapter's trained head (`modules_to_save`) has another size than the base model's head: the base model
    was built with another `num_labels` than the one the adapter was trained with."""


class UnsafeAdapterFileError(AdapterWeightsError):
    """The adapter's weights are only available as a pickle file, which gated-vpt never opens."""


# ----------------------------------------------------------------------------------------------------------------
# Locating the files (local folder or Hub repo)
# ----------------------------------------------------------------------------------------------------------------


class _Unresolvable(Exception):
    """The adapter lives on the Hub and could not be reached: leave the error to PEFT / transformers."""


def hub_kwargs_of(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in _HUB_KEYS if kwargs.get(k) is not None}


def _looks_local(model_id: str) -> bool:
    return os.path.isabs(model_id) or model_id.startswith(("./", "../", "~", ".\\", "..\\")) or os.path.exists(model_id)


def locate(
    model_id: str | os.PathLike,
    filename: str,
    hub_kwargs: Optional[Mapping[str, Any]] = None,
    download: bool = True,
) -> Optional[str]:
    """Path of `filename` of the adapter at `model_id` (a folder, or a Hub repo: downloaded into the cache as PEFT
    would), or None if it has no such file. With `download=False` a Hub file is only looked up (its repo path is
    returned). Raises `_Unresolvable` when the Hub cannot answer."""
    hub_kwargs = dict(hub_kwargs or {})
    model_id = os.fspath(model_id)
    subfolder = hub_kwargs.pop("subfolder", None)
    folder = os.path.join(model_id, subfolder) if subfolder else model_id
    if os.path.isdir(folder):
        path = os.path.join(folder, filename)
        return path if os.path.lexists(path) else None
    if _looks_local(model_id):
        if os.path.isdir(model_id):
            return None  # the subfolder is missing
        problem = "not a folder" if os.path.exists(model_id) else "no such folder"
        raise AdapterConfigError(
            f"{model_id}: {problem}. Pass the folder that `save_pretrained` wrote (it holds {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}), or a Hub repo id."
        )
    try:
        from huggingface_hub import file_exists, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        if not download:
            repo_path = f"{subfolder}/{filename}" if subfolder else filename
            found = file_exists(model_id, repo_path, revision=hub_kwargs.get("revision"), token=hub_kwargs.get("token"))
            return f"{model_id}/{repo_path}" if found else None
        try:
            return hf_hub_download(model_id, filename, subfolder=subfolder, **hub_kwargs)
        except EntryNotFoundError:
            return None
    except Exception as error:  # offline, unknown repo, invalid id, ...: PEFT reports these itself
        raise _Unresolvable(str(error)) from error


# ----------------------------------------------------------------------------------------------------------------
# adapter_config.json
# ----------------------------------------------------------------------------------------------------------------


def _config_error(path: str, problem: str, fix: str = RESAVE) -> AdapterConfigError:
    return AdapterConfigError(f"{path}: {problem}. {fix}")


def read_config_json(path: str) -> dict[str, Any]:
    """The JSON object in `path`, or a clear `AdapterConfigError`."""
    if not os.path.isfile(path):
        raise _config_error(path, "not a regular file")
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise _config_error(path, f"is {size} bytes, far more than an adapter config (about 1 KB); refused")
    with open(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _config_error(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _config_error(
            path, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except RecursionError:
        raise _config_error(path, "not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise _config_error(path, f"must hold a JSON object; it holds a {type(data).__name__}")
    return data


def config_class_for(data: Mapping[str, Any], path: str) -> type:
    """The PEFT config class named by `peft_type`, or a clear error if there is none."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = data.get("peft_type")
    ours = sorted(str(getattr(t, "value", t)) for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items() if _is_ours(c))
    if not isinstance(peft_type, str):
        raise _config_error(
            path,
            f"`peft_type` must be the adapter type as a string (gated-vpt writes one of {ours}); got {peft_type!r}",
        )
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise _config_error(
            path,
            f"unknown `peft_type` {peft_type!r}: neither PEFT nor gated-vpt (types {ours}) defines it",
            "Check that the file is a PEFT adapter config; for another PEFT plugin, import its package first.",
        )
    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]


def _is_ours(config_cls: Any) -> bool:
    return isinstance(config_cls, type) and issubclass(config_cls, PromptConfigBase)


def is_our_config_dict(data: Mapping[str, Any]) -> bool:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = data.get("peft_type")
    return isinstance(peft_type, str) and _is_ours(PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type))


def _check_backbone_record(backbone: Any, path: str) -> None:
    fix = (
        "Every gated-vpt save writes this record; restore adapter_config.json from the original save (do not edit "
        "`backbone` by hand)."
    )
    if backbone is None:
        raise _config_error(
            path,
            "`backbone` is null: without the record of the backbone the adapter was trained for, loading it onto a "
            "different backbone could not be refused",
            fix,
        )
    problem = backbone_record_problem(backbone)
    if problem is not None:
        raise _config_error(path, problem, fix)


def _check_peft_fields(data: Mapping[str, Any], path: str) -> None:
    for key in ("base_model_name_or_path", "revision", "task_type"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise _config_error(path, f"`{key}` must be a string or null; got {value!r}")
    if "inference_mode" in data and not isinstance(data["inference_mode"], bool):
        raise _config_error(path, f"`inference_mode` must be true or false; got {data['inference_mode']!r}")
    if data.get("auto_mapping") is not None and not isinstance(data["auto_mapping"], dict):
        raise _config_error(path, f"`auto_mapping` must be an object or null; got {data['auto_mapping']!r}")


def build_config(data: Mapping[str, Any], path: str) -> Optional[PromptConfigBase]:
    """Our config built from a parsed `adapter_config.json`, every field checked; None if it is not one of ours."""
    from peft.config import PeftConfig

    config_cls = config_class_for(data, path)
    if not _is_ours(config_cls):
        return None
    known = {f.name for f in dataclasses.fields(config_cls)}
    peft_fields = {f.name for f in dataclasses.fields(PeftConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _config_error(
            path,
            f"unknown fields {unknown} for {config_cls.__name__}",
            "The adapter was probably saved by a newer gated-vpt: upgrade (`pip install -U gated-vpt`). If the "
            "fields were added by hand, remove them.",
        )
    missing = sorted(known - peft_fields - set(data) - set(FIELDS_ADDED_LATER))
    if missing:
        raise _config_error(
            path,
            f"fields {missing} are missing (every save writes all fields of {config_cls.__name__})",
            "The file was cut short or edited: " + RESAVE,
        )
    _check_peft_fields(data, path)
    _check_backbone_record(data["backbone"], path)
    kwargs = dict(data)
    kwargs.pop("runtime_config", None)
    try:
        config = config_cls.from_peft_type(**config_cls.check_kwargs(**kwargs))
    except ConfigError as error:
        raise AdapterConfigError(
            f"{path}: {error} Fix the value in the file, or save the adapter again with `model.save_pretrained`."
        ) from None
    except (TypeError, ValueError) as error:
        raise _config_error(path, f"holds values {config_cls.__name__} cannot take ({error})") from None
    _check_prompted_blocks(config, data["backbone"], path)
    return config


def _check_prompted_blocks(config: PromptConfigBase, backbone: Mapping[str, Any], path: str) -> None:
    """`layers_to_transform` must fit the recorded backbone and give the recorded prompted blocks."""
    depth = backbone["num_hidden_layers"]
    layers = config.layers_to_transform
    first, last = (0, depth - 1) if layers is None else (layers[0], layers[-1])
    if last >= depth:
        raise _config_error(
            path,
            f"`layers_to_transform` {layers} lies outside the {depth} blocks of the backbone recorded in `backbone`",
        )
    if list(backbone["prompted_blocks"]) != [first, last]:
        raise _config_error(
            path,
            f"`backbone.prompted_blocks` {backbone['prompted_blocks']} does not match `layers_to_transform` "
            f"{layers} (blocks {first}-{last})",
        )


def load_adapter_config(
    model_id: str | os.PathLike, hub_kwargs: Optional[Mapping[str, Any]] = None
) -> Optional[PromptConfigBase]:
    """Read and check the `adapter_config.json` of the adapter at `model_id`.

    Returns our config, or None when the file is another PEFT method's (left to PEFT) or on the Hub and unreachable.
    Raises `AdapterConfigError` when the file is missing or cannot be a valid adapter config of any PEFT method."""
    try:
        path = locate(model_id, CONFIG_NAME, hub_kwargs)
    except _Unresolvable:
        return None
    if path is None:
        raise _config_error(
            os.path.join(os.fspath(model_id), (hub_kwargs or {}).get("subfolder") or "", CONFIG_NAME),
            "no such file: the folder is not a saved adapter",
            "Pass the folder that `save_pretrained` wrote (it holds adapter_config.json and "
            "adapter_model.safetensors).",
        )
    return build_config(read_config_json(path), path)


# ----------------------------------------------------------------------------------------------------------------
# adapter_model.safetensors
# ----------------------------------------------------------------------------------------------------------------


def _weights_error(path: str, problem: str, fix: str = RESAVE) -> AdapterWeightsError:
    return AdapterWeightsError(f"{path}: {problem}. {fix}")


def pickle_refusal(path: str) -> UnsafeAdapterFileError:
    return UnsafeAdapterFileError(
        f"{path}: refused, gated-vpt never loads pickle weight files (unpickling runs code from the file) and this "
        f"adapter has no {WEIGHTS_NAME}. If you trust the file's origin, convert it once: "
        "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')`, or load "
        "the adapter where it was trained and save it again with `save_pretrained` (which writes safetensors)."
    )


@dataclasses.dataclass
class CheckedWeights:
    """What `check_weights_file` found: the file and the shape of each tensor (keys without `base_model.model.`)."""

    path: str
    shapes: dict[str, tuple[int, ...]]
    key_mapping: Optional[Mapping[str, str]] = None


def _strip(key: str) -> str:
    return key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key


def _apply_key_mapping(key: str, key_mapping: Optional[Mapping[str, str]]) -> str:
    """PEFT's `load_peft_weights(key_mapping=...)` on one (prefix-free) key."""
    if not key_mapping:
        return key
    import re

    for pattern, replacement in key_mapping.items():
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


_TORCH_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


def check_tensors(tensors: Mapping[str, torch.Tensor], path: str) -> dict[str, tuple[int, ...]]:
    """dtype and finiteness of every tensor; returns the shapes, keys stripped of `base_model.model.`."""
    if not tensors:
        raise _weights_error(path, "holds no tensors")
    shapes = {}
    for key, tensor in tensors.items():
        if not torch.is_tensor(tensor):
            raise _weights_error(path, f"`{_strip(key)}` is a {type(tensor).__name__}, not a tensor")
        if not tensor.is_floating_point() and not (_may_be_integer(key) and tensor.dtype in _TORCH_INTEGER_DTYPES):
            raise _weights_error(
                path,
                f"tensor `{_strip(key)}` has dtype {tensor.dtype}; adapter weights are floating point (the file is "
                "damaged or not an adapter)",
            )
        if tensor.device.type != "meta":
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
                raise _weights_error(
                    path,
                    f"tensor `{_strip(key)}` holds {bad} {kind} value(s) of {tensor.numel()}: the adapter diverged in "
                    "training or the file is damaged, and it would only produce NaN / infinite outputs",
                    "Use an earlier checkpoint, or train again (e.g. with a lower learning rate).",
                )
        shapes[_strip(key)] = tuple(tensor.shape)
    return shapes


def check_weights_file(path: str) -> dict[str, tuple[int, ...]]:
    """Open `adapter_model.safetensors` (never anything else) and check it fully; returns the tensor shapes."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise _weights_error(path, "not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise _weights_error(path, "is empty (0 bytes): the save or download was interrupted")
    tensors = {}
    try:
        with safe_open(path, framework="pt") as file:
            for key in file.keys():
                dtype = file.get_slice(key).get_dtype()
                if dtype not in FLOAT_DTYPES and not (_may_be_integer(key) and dtype in INTEGER_DTYPES):
                    raise _weights_error(
                        path,
                        f"tensor `{_strip(key)}` has dtype {dtype}; adapter weights are floating point (the file is "
                        "damaged or not an adapter)",
                    )
                tensors[key] = file.get_tensor(key)
    except AdapterWeightsError:
        raise
    except Exception as error:  # safetensors' SafetensorError, OSError, ...
        detail = str(error).strip().rstrip(".") or type(error).__name__
        raise _weights_error(
            path,
            f"not a valid safetensors file ({detail}): it is corrupted or was cut short ({size} bytes)",
            "Download or copy the adapter again, or save it again with `model.save_pretrained`.",
        ) from None
    return check_tensors(tensors, path)


def check_adapter_files(
    model_id: str | os.PathLike,
    config: Optional[PromptConfigBase] = None,
    hub_kwargs: Optional[Mapping[str, Any]] = None,
    key_mapping: Optional[Mapping[str, str]] = None,
) -> Optional[tuple[PromptConfigBase, CheckedWeights]]:
    """Check both files of the adapter at `model_id` before anything is built.

    `config`: a config the caller already has (then `adapter_config.json` is not read). Returns (config, weights),
    or None when the adapter is not one of ours or lives on an unreachable Hub repo (PEFT then reports it)."""
    if config is None:
        config = load_adapter_config(model_id, hub_kwargs)
        if config is None:
            return None
    try:
        path = locate(model_id, WEIGHTS_NAME, hub_kwargs)
        if path is None:
            for name in PICKLE_WEIGHTS_NAMES:
                pickle_path = locate(model_id, name, hub_kwargs, download=False)
                if pickle_path is not None:
                    raise pickle_refusal(pickle_path)
    except _Unresolvable:
        return None
    if path is None:
        folder = os.path.join(os.fspath(model_id), (hub_kwargs or {}).get("subfolder") or "")
        raise _weights_error(
            os.path.join(folder, WEIGHTS_NAME),
            f"no such file: the adapter's weights are missing (only {CONFIG_NAME} is there)",
            "Copy the weights file from the original save, or save the adapter again with `model.save_pretrained`.",
        )
    return config, CheckedWeights(path, check_weights_file(path), key_mapping)


# ----------------------------------------------------------------------------------------------------------------
# The tensors of one adapter in a live model, in the form they are saved
# ----------------------------------------------------------------------------------------------------------------


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
    expected = {k: tuple(v.shape) for k, v in adapter_tensors(model, adapter_name).items()}
    found = {_apply_key_mapping(k, weights.key_mapping): v for k, v in weights.shapes.items()}
    fix = (
        f"{CONFIG_NAME} and {WEIGHTS_NAME} must come from the same save: copy both from it, or save the adapter "
        "again with `model.save_pretrained`."
    )
    unexpected = set(found) - set(expected)
    if unexpected:
        raise _weights_error(
            weights.path,
            f"holds tensors that are not part of the adapter described by {CONFIG_NAME}: {_fmt_keys(unexpected)} "
            "(refused: nothing outside the adapter, such as the frozen backbone, is ever loaded from an adapter file)",
            fix,
        )
    missing = set(expected) - set(found)
    if missing:
        raise _weights_error(
            weights.path,
            f"lacks tensors of the adapter described by {CONFIG_NAME}: {_fmt_keys(missing)} (they would stay at "
            "their random initialisation)",
            fix,
        )
    wrong = sorted(k for k in expected if expected[k] != found[k])
    heads = [k for k in wrong if _is_saved_module_key(k)]
    if heads:
        raise _head_size_error(model, adapter_name, weights.path, {k: (found[k], expected[k]) for k in heads})
    if wrong:
        details = "; ".join(
            f"`{k}` is {list(found[k])} in the file, {list(expected[k])} in the adapter" for k in wrong[:3]
        )
        raise _weights_error(
            weights.path, f"tensor shapes do not match the adapter described by {CONFIG_NAME}: {details}", fix
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


# The weights being loaded, announced by the loaders in `gated_vpt.hub` and checked by the tuner right after it
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


def check_pending_weights(model: nn.Module, adapter_name: str) -> None:
    """Called by the tuner after injecting `adapter_name`: no-op unless a loader announced weights for it."""
    pending = _PENDING.get()
    if pending is not None and pending[0] == adapter_name:
        check_weights_match(model, adapter_name, pending[1])


# ----------------------------------------------------------------------------------------------------------------
# Leaving the model exactly as it was when a load fails
# ----------------------------------------------------------------------------------------------------------------


def _is_container(value: Any) -> bool:
    return isinstance(value, (dict, list, set)) and not isinstance(value, nn.Module)


class ModelSnapshot:
    """The structure of a module tree, cheap to take (no tensor is copied unless asked) and exact to restore.

    Records, for every module: its attribute dict (children, parameters, buffers, hook dicts, flags, other
    attributes) and the contents of every dict / list / set in it, restored *in place* so that objects shared
    between modules (PEFT aliases `peft_config` dicts) stay shared; `requires_grad` of every parameter; the attribute
    dict of each transformers config; and the values of `clone` tensors (adapter tensors that a load would overwrite
    in place)."""

    def __init__(self, root: nn.Module, clone: Iterable[torch.Tensor] = ()) -> None:
        self.modules = []
        seen_configs: set[int] = set()
        self.configs = []
        for module in root.modules():
            attributes = dict(module.__dict__)
            containers = [(v, _copy_container(v)) for v in attributes.values() if _is_container(v)]
            self.modules.append((module, attributes, containers))
            config = attributes.get("config")
            if config is not None and hasattr(config, "to_dict") and id(config) not in seen_configs:
                seen_configs.add(id(config))
                self.configs.append((config, dict(config.__dict__)))
        self.requires_grad = [(p, p.requires_grad) for p in root.parameters()]
        self.values = [(t, t.detach().clone()) for t in clone if t.device.type != "meta"]

    def restore(self) -> None:
        for module, attributes, containers in self.modules:
            module.__dict__.clear()
            module.__dict__.update(attributes)
            for container, contents in containers:
                _restore_container(container, contents)
        for config, attributes in self.configs:
            config.__dict__.clear()
            config.__dict__.update(attributes)
        for param, flag in self.requires_grad:
            param.requires_grad_(flag)
        with torch.no_grad():
            for tensor, value in self.values:
                if tensor.shape == value.shape:
                    tensor.copy_(value)


def _copy_container(value: Any) -> Any:
    return list(value) if isinstance(value, list) else (set(value) if isinstance(value, set) else dict(value))


def _restore_container(container: Any, contents: Any) -> None:
    if isinstance(container, list):
        container[:] = contents
    else:
        container.clear()
        container.update(contents)


@contextlib.contextmanager
def preserved_on_error(root: nn.Module, clone: Iterable[torch.Tensor] = ()) -> Iterator[ModelSnapshot]:
    """Run the body; if it raises (anything, KeyboardInterrupt included), put `root` back exactly as it was."""
    snapshot = ModelSnapshot(root, clone)
    try:
        yield snapshot
    except BaseException:
        snapshot.restore()
        raise


# ----------------------------------------------------------------------------------------------------------------
# Atomic saving
# ----------------------------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class ExchangeUnsupported(OSError):
    """The platform or file system cannot swap two directories atomically."""


def _renameat2() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange_directories(first: str, second: str) -> None:
    """Swap two directory entries in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`)."""
    function = _renameat2()
    if function is None:
        raise ExchangeUnsupported(errno.ENOSYS, "renameat2 is not available on this platform")
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            raise ExchangeUnsupported(code, f"this file system cannot exchange directories: {os.strerror(code)}")
        raise OSError(code, os.strerror(code), first, None, second)


def _fsync_tree(root: str, files: bool = True) -> None:
    for folder, _, names in os.walk(root):
        for name in names if files else ():
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        _fsync_dir(folder)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync directories
    finally:
        os.close(fd)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _merge_untouched(old: str, new: str) -> None:
    """Give `new` every entry of `old` that the save did not write (hard links, no data copied), recursively."""
    for entry in os.scandir(old):
        target = os.path.join(new, entry.name)
        if entry.is_dir(follow_symlinks=False):
            if not os.path.lexists(target):
                shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
            elif os.path.isdir(target) and not os.path.islink(target):
                _merge_untouched(entry.path, target)
        elif not os.path.lexists(target):
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            else:
                _link_or_copy(entry.path, target)


def atomic_save(save_directory: str | os.PathLike, write: Callable[[str], Any], keep: Iterable[str] = ()) -> Any:
    """Run `write(folder)` on a temporary folder next to `save_directory`, then switch it in atomically.

    - If `write` fails or is interrupted, `save_directory` is untouched (the temporary folder is removed; after a
      hard crash it stays behind as `.<name>.gated-vpt-save-*`, which no loader reads).
    - Entries of the old folder that `write` did not produce are kept (hard-linked into the new folder), so saving
      into a folder with other files (a Trainer checkpoint, other adapters) loses nothing. The files named in `keep`
      are copied in *before* `write` runs (e.g. README.md, which PEFT updates rather than replaces).
    - The switch (`_switch_folder`): on Linux one `renameat2(RENAME_EXCHANGE)`: a reader, or a crash at any moment,
      sees the complete old folder or the complete new one. Elsewhere (or on a file system without it) two renames:
      the old folder moves to `.<name>.gated-vpt-old-*`, the new one takes its place, and if that fails the old
      folder is moved back; a crash between the two leaves the complete old folder under that backup name.
    - A folder that cannot be replaced as a whole (it is the current working directory or contains it, it is a
      mount point, or its parent is not writable) gets the new files one by one instead (`_replace_files`): each file
      is complete at every moment and an exception restores the old ones, but a hard crash between two renames can
      leave new weights next to the old config.
    """
    target = os.path.realpath(os.fspath(save_directory))
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    existed = os.path.isdir(target)
    whole_folder = not (existed and _contains_cwd(target))
    try:
        staging = tempfile.mkdtemp(prefix=f".{name}.gated-vpt-save-", dir=parent if whole_folder else target)
    except OSError:
        if not existed:
            raise
        staging, whole_folder = tempfile.mkdtemp(prefix=".gated-vpt-save-", dir=target), False  # parent read-only
    try:
        os.chmod(staging, _directory_mode(target if existed else None, staging))
        for entry in keep:
            source = os.path.join(target, entry)
            if existed and os.path.isfile(source):
                shutil.copy2(source, os.path.join(staging, entry))
        result = write(staging)
        written = _files_under(staging)
        _fsync_tree(staging)
        if not existed:
            os.rename(staging, target)  # atomic; fails if the folder appeared meanwhile
        elif not (whole_folder and _switch_folder(staging, target)):
            _replace_files(staging, target, written)
        _fsync_dir(parent)
        return result
    finally:
        # Before the switch `staging` holds the unfinished new save; after it, the old folder (or nothing).
        shutil.rmtree(staging, ignore_errors=True)


# errno values of a rename that cannot move this folder at all (nothing was changed): fall back to file by file.
_CANNOT_MOVE = (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM, errno.EROFS)


def _switch_folder(staging: str, target: str) -> bool:
    """Replace `target` by `staging` as a whole (after giving `staging` the entries the save did not write).
    False if the folder cannot be moved (then nothing was changed)."""
    _merge_untouched(target, staging)
    _fsync_tree(staging, files=False)  # the new directory entries (the files' data was synced before)
    try:
        exchange_directories(staging, target)
        return True
    except ExchangeUnsupported:
        pass
    except OSError as error:
        if error.errno in _CANNOT_MOVE:
            return False
        raise
    parent, name = os.path.split(target)
    backup = tempfile.mkdtemp(prefix=f".{name}.gated-vpt-old-", dir=parent)
    os.rmdir(backup)
    try:
        os.rename(target, backup)
    except OSError as error:
        if error.errno in _CANNOT_MOVE:
            return False
        raise
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    os.rename(backup, staging)  # removed with the staging folder by the caller
    return True


def _replace_files(staging: str, target: str, written: list[str]) -> None:
    """Move the files the save wrote into `target` one by one (weights first, then configs, then the rest), each with
    an atomic `os.replace`; on any exception put back the files already replaced."""

    def order(relative: str) -> tuple[int, str]:
        base = os.path.basename(relative)
        return (0 if base.endswith(".safetensors") else 1 if base == CONFIG_NAME else 2, relative)

    backup = tempfile.mkdtemp(prefix=".gated-vpt-old-", dir=staging)
    replaced: list[tuple[str, bool]] = []
    try:
        for relative in sorted(written, key=order):
            destination = os.path.join(target, relative)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            had_old = os.path.isfile(destination)
            if had_old:
                kept = os.path.join(backup, relative)
                os.makedirs(os.path.dirname(kept), exist_ok=True)
                _link_or_copy(destination, kept)
            os.replace(os.path.join(staging, relative), destination)
            replaced.append((relative, had_old))
    except BaseException:
        for relative, had_old in reversed(replaced):
            destination = os.path.join(target, relative)
            if had_old:
                os.replace(os.path.join(backup, relative), destination)
            else:
                os.remove(destination)
        raise


def _files_under(root: str) -> list[str]:
    return [os.path.relpath(os.path.join(folder, name), root) for folder, _, files in os.walk(root) for name in files]


def _contains_cwd(folder: str) -> bool:
    """Whether the current working directory is `folder` or inside it (swapping the folder would strand it)."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        return False
    return cwd == folder or cwd.startswith(folder + os.sep)


def _directory_mode(existing: Optional[str], scratch: str) -> int:
    """The permission bits the new folder gets: the old folder's, or those of a fresh `mkdir` (umask applied;
    `mkdtemp` itself makes 0o700 folders). Probed with a real mkdir because reading the umask is not thread-safe."""
    if existing is not None:
        return stat.S_IMODE(os.stat(existing).st_mode)
    probe = os.path.join(scratch, ".mode-probe")
    os.mkdir(probe)
    try:
        return stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.rmdir(probe)
