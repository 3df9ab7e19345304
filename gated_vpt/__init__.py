# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""gated-vpt: visual prompt tuning methods for Hugging Face vision transformers, as PEFT tuner types.

Importing this package registers `GATED_PROMPT` (and `CDC_PROMPT`) with PEFT, after which `get_peft_model`,
`PeftModel.from_pretrained`, `PeftConfig.from_pretrained` and transformers' `load_adapter` all know them.
"""

from .backbones import FAMILIES, UnsupportedModelError, find_prompt_site
from .cdc import CDCPromptConfig, CDCPromptModel
from .diagnostics import gate_report, plot_gate_report, summarize_gate_report
from .gated import GatedPromptConfig, GatedPromptModel
from .hub import from_pretrained, install_peft_model_patches, push_adapter_to_hub
from .prompt_config import ConfigError
from .prompt_layer import MergeNotSupportedError
from .prompt_tuner import IncompatibleBackboneError
from .registration import CDC_PROMPT, GATED_PROMPT, register
from .safety import AdapterConfigError, AdapterFileError, AdapterWeightsError, HeadSizeError, UnsafeAdapterFileError

__version__ = "0.1.0"

register("gated_prompt", GatedPromptConfig, GatedPromptModel, prefix=GatedPromptModel.prefix)
register("cdc_prompt", CDCPromptConfig, CDCPromptModel, prefix=CDCPromptModel.prefix)
install_peft_model_patches()

__all__ = [
    "AdapterConfigError",
    "AdapterFileError",
    "AdapterWeightsError",
    "HeadSizeError",
    "UnsafeAdapterFileError",
    "CDCPromptConfig",
    "CDCPromptModel",
    "CDC_PROMPT",
    "FAMILIES",
    "GATED_PROMPT",
    "ConfigError",
    "GatedPromptConfig",
    "GatedPromptModel",
    "IncompatibleBackboneError",
    "MergeNotSupportedError",
    "UnsupportedModelError",
    "find_prompt_site",
    "from_pretrained",
    "gate_report",
    "plot_gate_report",
    "summarize_gate_report",
    "push_adapter_to_hub",
]
