# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""What a plain value is, for the checks of configs, records and family facts (values that may come from JSON or a
user's code): an integer that is not a bool, a real number, a finite one."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A real number that is finite as a float (an int too large for a float is not: `math.isfinite` would raise)."""
    try:
        return is_real(value) and math.isfinite(value)
    except OverflowError:
        return False
