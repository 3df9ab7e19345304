# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""gated-vpt: visual prompt tuning methods for Hugging Face vision transformers, as PEFT tuner types.

Importing this package registers `GATED_PROMPT` (and `CDC_PROMPT`) with PEFT, after which `get_peft_model`,
`PeftModel.from_pretrained`, `PeftConfig.from_pretrained` and transformers' `load_adapter` all know them.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .attention import AttentionLayout
from .backbone_record import IncompatibleBackboneError
from .backbones import FAMILIES, UnsupportedModelError, find_prompt_site, register_family, unregister_family
from .cdc import CDC_PROMPT, CDCPromptConfig, CDCPromptModel
from .diagnostics import gate_report, plot_gate_report, summarize_gate_report
from .family import BackboneFamily
from .gated import GATED_PROMPT, GatedPromptConfig, GatedPromptModel
from .hub import from_pretrained, push_adapter_to_hub
from .integrations import install_peft_model_patches
from .io.errors import AdapterConfigError, AdapterFileError, AdapterWeightsError, HeadSizeError, UnsafeAdapterFileError
from .presets import PRESETS, preset_config
from .prompt_config import ConfigError
from .prompt_layer import MergeNotSupportedError
from .registration import register

__version__ = "0.1.0"

# Every method lives in its own sub-package (config.py, layer.py, model.py) and registers itself when imported: import
# them all, so a new method needs no line here.
for _module in _pkgutil.iter_modules(__path__):
    if _module.ispkg and _module.name not in ("io", "contrib"):
        _importlib.import_module(f"{__name__}.{_module.name}")
install_peft_model_patches()

__all__ = [
    "AdapterConfigError",
    "AdapterFileError",
    "AdapterWeightsError",
    "AttentionLayout",
    "BackboneFamily",
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
    "PRESETS",
    "UnsupportedModelError",
    "find_prompt_site",
    "from_pretrained",
    "gate_report",
    "plot_gate_report",
    "preset_config",
    "register",
    "register_family",
    "unregister_family",
    "summarize_gate_report",
    "push_adapter_to_hub",
]
