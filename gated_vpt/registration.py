# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Make our tuner types known to PEFT.

PEFT's `register_peft_method` only accepts names that are already members of its `PeftType` enum, and raises on a
second registration. A third-party package therefore extends the enum itself (with `aenum.extend_enum`, the
maintained way to add members to a stdlib `Enum`) and registers once, idempotently, at import time.
"""

from __future__ import annotations

import aenum
from peft.utils import PeftType


def _peft_type(name: str) -> PeftType:
    if name not in PeftType.__members__:
        aenum.extend_enum(PeftType, name, name)
    return PeftType[name]


GATED_PROMPT = _peft_type("GATED_PROMPT")
CDC_PROMPT = _peft_type("CDC_PROMPT")


def register(name: str, config_cls: type, model_cls: type, prefix: str) -> None:
    """Register one tuner type with PEFT unless it is registered already (re-imports, reloads)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    if PEFT_TYPE_TO_CONFIG_MAPPING.get(_peft_type(name.upper())) is config_cls:
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
