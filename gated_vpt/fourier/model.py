# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT tuner of Visual Fourier Prompt Tuning."""

from __future__ import annotations

from ..vpt.model import VisualPromptModel
from .layer import FourierPromptBlock


class FourierPromptModel(VisualPromptModel):
    """Injects VFPT into a ViT. Use through `peft.get_peft_model` with a `FourierPromptConfig`; see that class."""

    prefix: str = "vfpt_"
    tuner_layer_cls = FourierPromptBlock
