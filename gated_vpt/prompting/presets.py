# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The named prompt methods, the one place that maps a method name to its config.

GPT and CDC are the two config classes; VPT-shallow, VPT-deep and CDC's ablations are settings of them (see
docs/methods.md for the identities). Each method's package registers its names here when it is imported; the
example, the benchmarks and the tests all build their prompt-method configs through `preset_config`, so a name means
the same adapter everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .prompt_config import PromptConfigBase


@dataclasses.dataclass(frozen=True)
class MethodPreset:
    """A named prompt method: a config class and the fields that make it that method."""

    name: str
    config_class: type[PromptConfigBase]
    fields: tuple[tuple[str, Any], ...]
    description: str

    def config(self, **fields: Any) -> PromptConfigBase:
        """The method's config; `fields` set everything else (and may not undo what defines the method)."""
        clashes = sorted(k for k, v in self.fields if k in fields and fields[k] != v)
        if clashes:
            raise ValueError(
                f"{self.name!r} is {self.description}: it fixes {clashes}; use {self.config_class.__name__} directly "
                "for other values."
            )
        return self.config_class(**{**dict(self.fields), **fields})


# name -> preset, filled by each method's package (`gated_vpt/gated/__init__.py`, `gated_vpt/cdc/__init__.py`).
PRESETS: dict[str, MethodPreset] = {}


def register_preset(preset: MethodPreset) -> None:
    """Make `preset` available by name (idempotent for the same preset; a different one under a taken name is an
    error)."""
    existing = PRESETS.get(preset.name)
    if existing is not None and existing != preset:
        raise ValueError(f"A different prompt method is already registered as {preset.name!r}: {existing}.")
    PRESETS[preset.name] = preset


def preset_config(name: str, **fields: Any) -> PromptConfigBase:
    """The config of the prompt method called `name` (one of `PRESETS`), e.g.
    `preset_config("vpt-deep", num_prompts=10, modules_to_save=["classifier"])`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown prompt method {name!r}; the named methods are {sorted(PRESETS)}.")
    return PRESETS[name].config(**fields)
