# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""E²VPT's key-value prompts (Han et al., "E²VPT: An Effective and Efficient Approach for Visual Prompt Tuning",
ICCV 2023), on VPT-deep: config, block wrapper and tuner."""

from ..prompting.presets import MethodPreset, register_preset
from ..prompting.registration import register
from .config import KEY_VALUE_PROMPT, KeyValuePromptConfig
from .layer import KeyValuePromptBlock
from .model import KeyValuePromptModel

register("key_value_prompt", KeyValuePromptConfig, KeyValuePromptModel, prefix=KeyValuePromptModel.prefix)
register_preset(
    MethodPreset("e2vpt", KeyValuePromptConfig, (), "E²VPT (VPT-deep + key-value prompts in every attention)")
)

__all__ = ["KEY_VALUE_PROMPT", "KeyValuePromptBlock", "KeyValuePromptConfig", "KeyValuePromptModel"]
