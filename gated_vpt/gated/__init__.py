# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Gated Prompt Tuning (Yoo et al., "Improving Visual Prompt Tuning for Self-supervised Vision Transformers",
ICML 2023): config, block wrapper and tuner."""

from ..prompting.presets import MethodPreset, register_preset
from ..prompting.registration import register
from .config import GATED_PROMPT, GatedPromptConfig
from .layer import GatedPromptBlock
from .model import GatedPromptModel

# Registering here, with the method, keeps everything about it in its folder: `gated_vpt` imports every method
# package it finds, and this registers the PEFT type and the method's named presets.
register("gated_prompt", GatedPromptConfig, GatedPromptModel, prefix=GatedPromptModel.prefix)
register_preset(MethodPreset("gpt", GatedPromptConfig, (), "Gated Prompt Tuning"))

__all__ = ["GATED_PROMPT", "GatedPromptBlock", "GatedPromptConfig", "GatedPromptModel"]
