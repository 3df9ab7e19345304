# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Visual Fourier Prompt Tuning (Zeng, Han et al., "Visual Fourier Prompt Tuning", NeurIPS 2024), on VPT-deep:
config, block wrapper and tuner."""

from ..prompting.presets import MethodPreset, register_preset
from ..prompting.registration import register
from .config import FOURIER_PROMPT, FourierPromptConfig
from .layer import FourierPromptBlock
from .model import FourierPromptModel

register("fourier_prompt", FourierPromptConfig, FourierPromptModel, prefix=FourierPromptModel.prefix)
register_preset(MethodPreset("vfpt", FourierPromptConfig, (), "Visual Fourier Prompt Tuning (VPT-deep + Fourier)"))

__all__ = ["FOURIER_PROMPT", "FourierPromptBlock", "FourierPromptConfig", "FourierPromptModel"]
