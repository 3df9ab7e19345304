# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Visual Prompt Tuning (Jia et al., ECCV 2022), shallow and deep: config, block wrapper and tuner.

The base method: the other methods' folders may import this one (and only this one) to build on its block wrapper
and tuner. Deleting another method's folder leaves VPT working; VPT depends on no other method."""

from ..prompting.presets import MethodPreset, register_preset
from ..prompting.registration import register
from .config import VISUAL_PROMPT, VisualPromptConfig
from .initialization import initialize_prompts
from .layer import VisualPromptBlock
from .model import VisualPromptModel

# Registering here, with the method, keeps everything about it in its folder: `gated_vpt` imports every method
# package it finds, and this registers the PEFT type and the method's named presets.
register("visual_prompt", VisualPromptConfig, VisualPromptModel, prefix=VisualPromptModel.prefix)
register_preset(MethodPreset("vpt-deep", VisualPromptConfig, (("deep", True),), "VPT-deep (prompts in every block)"))
register_preset(
    MethodPreset("vpt-shallow", VisualPromptConfig, (("deep", False),), "VPT-shallow (prompts inserted once)")
)

# exported by `gated_vpt` itself
__all__ = ["VISUAL_PROMPT", "VisualPromptBlock", "VisualPromptConfig", "VisualPromptModel", "initialize_prompts"]
