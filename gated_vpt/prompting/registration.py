# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Make our tuner types known to PEFT.

PEFT's `register_peft_method` only accepts names that are already members of its `PeftType` enum, and raises on a
second registration. A third-party package therefore extends the enum itself (with `aenum.extend_enum`, the
maintained way to add members to a stdlib `Enum`) and registers once, idempotently, at import time.
"""

from __future__ import annotations

import aenum
from peft.utils import PeftType

from .prompt_config import PromptConfigBase


def peft_type(name: str) -> PeftType:
    """The `PeftType` member `name`, added to PEFT's enum if it is not there yet."""
    if name not in PeftType.__members__:
        aenum.extend_enum(PeftType, name, name)
    return PeftType[name]


def register(name: str, config_cls: type, model_cls: type, prefix: str) -> None:
    """Register one tuner type with PEFT unless it is registered already (re-imports, reloads). Each method's
    package calls this for itself when it is imported."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    if PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type(name.upper())) is config_cls:
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)


def registered_prompt_methods() -> dict[str, tuple[type, str]]:
    """PEFT type name -> (config class, parameter prefix) of every prompt method registered with PEFT: read from
    PEFT's own tables, so it is whatever has been registered, by this package or by another one."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING

    return {
        str(getattr(kind, "value", kind)): (config_cls, PEFT_TYPE_TO_PREFIX_MAPPING[kind])
        for kind, config_cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()
        if isinstance(config_cls, type)
        and issubclass(config_cls, PromptConfigBase)
        and kind in PEFT_TYPE_TO_PREFIX_MAPPING
    }


def adapter_parameter_markers() -> tuple[str, ...]:
    """The parameter-name prefixes of the registered prompt methods (`gpt_`, `cdc_`): what tells an adapter's own
    tensors from the `modules_to_save` copies stored next to them."""
    return tuple(prefix for _, prefix in registered_prompt_methods().values())
