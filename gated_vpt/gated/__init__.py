# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Gated Prompt Tuning (Yoo et al., "Improving Visual Prompt Tuning for Self-supervised Vision Transformers",
ICML 2023): config, block wrapper and tuner."""

from .config import GatedPromptConfig
from .layer import GatedPromptBlock
from .model import GatedPromptModel

__all__ = ["GatedPromptBlock", "GatedPromptConfig", "GatedPromptModel"]
