# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""`adapter_config.json`: read with a size limit, every field and value checked (the recorded backbone included),
before any model is built."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Optional

from ..messages import short_repr
from ..prompting.prompt_config import ConfigError, PromptConfigBase
from ..vit.backbone_record import backbone_record_problem
from .errors import RESAVE, AdapterConfigError, config_error
from .locate import Unresolvable, locate
from .names import CONFIG_NAME

# A real adapter_config.json is about 1 KB; refuse to parse a hostile multi-gigabyte one.
MAX_CONFIG_BYTES = 1 << 20
# Fields newer versions added, which adapters saved before them lack (their defaults apply).
FIELDS_ADDED_LATER = ("base_model_class", "base_model_num_labels")


def read_config_json(path: str) -> dict[str, Any]:
    """The JSON object in `path`, or a clear `AdapterConfigError`."""
    if not os.path.isfile(path):
        raise config_error(path, "not a regular file")
    # At most one byte past the limit is read: the size a file reports is not trusted (pseudo-files report 0).
    with open(path, "rb") as file:
        raw = file.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise config_error(
            path, f"is more than {MAX_CONFIG_BYTES} bytes, far more than an adapter config (about 1 KB); refused"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise config_error(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise config_error(path, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except RecursionError:
        raise config_error(path, "not valid JSON (nested too deeply)") from None
    except ValueError as error:  # an integer longer than Python's int-string conversion limit
        detail = str(error).split(";")[0].strip()
        raise config_error(path, f"not valid JSON: it holds a number too long to be read ({detail})") from None
    if not isinstance(data, dict):
        raise config_error(path, f"must hold a JSON object; it holds a {type(data).__name__}")
    return data


def config_class_for(data: Mapping[str, Any], path: str) -> type:
    """The PEFT config class named by `peft_type`, or a clear error if there is none."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = data.get("peft_type")
    ours = sorted(str(getattr(t, "value", t)) for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items() if _is_ours(c))
    if not isinstance(peft_type, str):
        raise config_error(
            path,
            f"`peft_type` must be the adapter type as a string (gated-vpt writes one of {ours}); got "
            f"{short_repr(peft_type)}",
        )
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise config_error(
            path,
            f"unknown `peft_type` {short_repr(peft_type)}: neither PEFT nor gated-vpt (types {ours}) defines it",
            "Check that the file is a PEFT adapter config; for another PEFT plugin, import its package first.",
        )
    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]


def _is_ours(config_cls: Any) -> bool:
    return isinstance(config_cls, type) and issubclass(config_cls, PromptConfigBase)


def _check_backbone_record(backbone: Any, path: str) -> None:
    fix = (
        "Every gated-vpt save writes this record; restore adapter_config.json from the original save (do not edit "
        "`backbone` by hand)."
    )
    if backbone is None:
        raise config_error(
            path,
            "`backbone` is null: without the record of the backbone the adapter was trained for, loading it onto a "
            "different backbone could not be refused",
            fix,
        )
    problem = backbone_record_problem(backbone)
    if problem is not None:
        raise config_error(path, problem, fix)


def _check_peft_fields(data: Mapping[str, Any], path: str) -> None:
    for key in ("base_model_name_or_path", "revision", "task_type"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise config_error(path, f"`{key}` must be a string or null; got {short_repr(value)}")
    if "inference_mode" in data and not isinstance(data["inference_mode"], bool):
        raise config_error(path, f"`inference_mode` must be true or false; got {short_repr(data['inference_mode'])}")
    if data.get("auto_mapping") is not None and not isinstance(data["auto_mapping"], dict):
        raise config_error(path, f"`auto_mapping` must be an object or null; got {short_repr(data['auto_mapping'])}")


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
        raise config_error(
            path,
            f"unknown fields {unknown} for {config_cls.__name__}",
            "The adapter was probably saved by a newer gated-vpt: upgrade (`pip install -U gated-vpt`). If the "
            "fields were added by hand, remove them.",
        )
    missing = sorted(known - peft_fields - set(data) - set(FIELDS_ADDED_LATER))
    if missing:
        raise config_error(
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
        raise config_error(path, f"holds values {config_cls.__name__} cannot take ({error})") from None
    _check_prompted_blocks(config, data["backbone"], path)
    return config


def _check_prompted_blocks(config: PromptConfigBase, backbone: Mapping[str, Any], path: str) -> None:
    """`layers_to_transform` must fit the recorded backbone and give the recorded prompted blocks."""
    depth = backbone["num_hidden_layers"]
    layers = config.layers_to_transform
    first, last = (0, depth - 1) if layers is None else (layers[0], layers[-1])
    if last >= depth:
        raise config_error(
            path,
            f"`layers_to_transform` {layers} lies outside the {depth} blocks of the backbone recorded in `backbone`",
        )
    if list(backbone["prompted_blocks"]) != [first, last]:
        raise config_error(
            path,
            f"`backbone.prompted_blocks` {backbone['prompted_blocks']} does not match `layers_to_transform` "
            f"{layers} (blocks {first}-{last})",
        )


def load_adapter_config(
    model_id: str | os.PathLike, hub_kwargs: Optional[Mapping[str, Any]] = None
) -> Optional[PromptConfigBase]:
    """Read and check the `adapter_config.json` of the adapter at `model_id`.

    Returns our config, or None when the file is another PEFT method's (left to PEFT). Raises `AdapterConfigError`
    when the file is missing, cannot be a valid adapter config of any PEFT method, or cannot be read at all (a Hub
    repo that neither the Hub nor the local cache can give: not checked means not loaded)."""
    try:
        path = locate(model_id, CONFIG_NAME, hub_kwargs)
    except Unresolvable as error:
        raise AdapterConfigError(
            f"{error}: whether it is a gated-vpt adapter cannot be checked, so it is not loaded. Check the repo id, "
            "`revision` and `token`, or download the adapter once with the Hub reachable (it is then cached), or pass "
            "the folder that `save_pretrained` wrote."
        ) from None
    if path is None:
        raise config_error(
            os.path.join(os.fspath(model_id), (hub_kwargs or {}).get("subfolder") or "", CONFIG_NAME),
            "no such file: the folder is not a saved adapter",
            "Pass the folder that `save_pretrained` wrote (it holds adapter_config.json and "
            "adapter_model.safetensors).",
        )
    return build_config(read_config_json(path), path)
