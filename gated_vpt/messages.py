# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""How a value appears in an error message: short, whatever it is.

Values in messages often come from a file someone else wrote: a megabyte-long string, a list nested 900 levels
deep. `repr` of those is a megabyte-long message, or a `RecursionError` instead of the message. `short_repr` bounds
both the depth it looks into and the length it returns."""

from __future__ import annotations

import reprlib
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def short_repr(value: Any, limit: int = 100) -> str:
    """`repr(value)`, at most `limit` characters and 3 levels deep (`...` marks what was left out)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
