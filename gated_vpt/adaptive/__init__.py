# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Visual Adaptive Prompt Tuning (Le et al., "Revisit Visual Prompt Tuning: The Expressiveness of Prompt Experts",
ICLR 2026), on VPT: config, block wrapper and tuner."""

from ..prompting.presets import MethodPreset, register_preset
from ..prompting.registration import register
from .config import ADAPTIVE_PROMPT, AdaptivePromptConfig
from .layer import AdaptivePromptBlock
from .model import AdaptivePromptModel

register("adaptive_prompt", AdaptivePromptConfig, AdaptivePromptModel, prefix=AdaptivePromptModel.prefix)
register_preset(
    MethodPreset("vapt", AdaptivePromptConfig, (), "Visual Adaptive Prompt Tuning (prompts generated per image)")
)

__all__ = ["ADAPTIVE_PROMPT", "AdaptivePromptBlock", "AdaptivePromptConfig", "AdaptivePromptModel"]
