# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""CDC prompt tuning: our reconstruction of iVPT's cross-layer dynamic connection, dynamic aggregation and attentive
reinforcement (Zhou, Chen, Huang, arXiv 2404.05207) on deep visual prompts: config, block wrapper and tuner."""

from ..prompting.presets import MethodPreset, register_preset
from ..prompting.registration import register
from .config import CDC_PROMPT, CDCPromptConfig
from .layer import CDCPromptBlock
from .model import CDCPromptModel

# Registering here, with the method, keeps everything about it in its folder: `gated_vpt` imports every method
# package it finds, and this registers the PEFT type and the method's named presets.
register("cdc_prompt", CDCPromptConfig, CDCPromptModel, prefix=CDCPromptModel.prefix)
register_preset(MethodPreset("cdc", CDCPromptConfig, (), "CDC prompt tuning (our reconstruction of iVPT)"))
register_preset(
    MethodPreset(
        "cdc-no-ar", CDCPromptConfig, (("attentive_reinforcement", False),), "CDC without attentive reinforcement"
    )
)
register_preset(
    MethodPreset(
        "cdc-static-aggregation",
        CDCPromptConfig,
        (("dynamic_aggregation", False),),
        "CDC with static aggregation (one learned mixing weight per block)",
    )
)
register_preset(
    MethodPreset(
        "cdc-no-cross-layer",
        CDCPromptConfig,
        (("cross_layer", False),),
        "CDC without cross-layer connections (attentive reinforcement kept)",
    )
)

__all__ = ["CDC_PROMPT", "CDCPromptBlock", "CDCPromptConfig", "CDCPromptModel"]
