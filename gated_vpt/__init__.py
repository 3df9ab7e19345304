# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""gated-vpt: visual prompt tuning methods for Hugging Face vision transformers, as PEFT tuner types.

Importing this package registers every prompt method (`VISUAL_PROMPT`, `GATED_PROMPT`, `CDC_PROMPT`,
`FOURIER_PROMPT`, ...) with PEFT, after which `get_peft_model`, `PeftModel.from_pretrained`,
`PeftConfig.from_pretrained` and transformers' `load_adapter` all know them. Each method folder's public names
(its `__all__`: the config, the tuner, the PEFT type) are exported here, so `from gated_vpt import
GatedPromptConfig` works for every method without a line in this file.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .io.errors import AdapterConfigError, AdapterFileError, AdapterWeightsError, HeadSizeError, UnsafeAdapterFileError
from .io.hub import from_pretrained, push_adapter_to_hub
from .io.patches import install_peft_model_patches
from .precision import fast_attention_implementation, has_native_bf16
from .prompting.diagnostics import gate_report, plot_gate_report, summarize_gate_report
from .prompting.presets import PRESETS, preset_config
from .prompting.prompt_config import DATA_DRIVEN_PROMPT_INITS, PROMPT_INITS, ConfigError, VipaminConfig
from .prompting.prompt_layer import MergeNotSupportedError
from .prompting.registration import register
from .vit.attention import AttentionLayout
from .vit.backbone_record import IncompatibleBackboneError
from .vit.backbones import FAMILIES, UnsupportedModelError, find_prompt_site, register_family, unregister_family
from .vit.family import BackboneFamily

__version__ = "0.1.0"

# The package is grouped by concern (docs/architecture.md): what a ViT looks like, the shared prompt machinery, and
# the PEFT / Hub / file boundary; every other sub-package is one prompt method.
CONCERNS = ("vit", "prompting", "io", "contrib")

# Every method lives in its own sub-package (config.py, layer.py, model.py) and registers itself when imported: import
# them all and export their public names, so a new method needs no line here.
_METHOD_EXPORTS: list[str] = []
for _module in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.ispkg and _module.name not in CONCERNS:
        _method = _importlib.import_module(f"{__name__}.{_module.name}")
        for _name in getattr(_method, "__all__", ()):
            globals()[_name] = getattr(_method, _name)
            _METHOD_EXPORTS.append(_name)
install_peft_model_patches()

__all__ = [
    "AdapterConfigError",
    "AdapterFileError",
    "AdapterWeightsError",
    "AttentionLayout",
    "BackboneFamily",
    "HeadSizeError",
    "UnsafeAdapterFileError",
    "FAMILIES",
    "ConfigError",
    "DATA_DRIVEN_PROMPT_INITS",
    "PROMPT_INITS",
    "IncompatibleBackboneError",
    "MergeNotSupportedError",
    "PRESETS",
    "UnsupportedModelError",
    "VipaminConfig",
    "fast_attention_implementation",
    "find_prompt_site",
    "has_native_bf16",
    "from_pretrained",
    "gate_report",
    "plot_gate_report",
    "preset_config",
    "register",
    "register_family",
    "unregister_family",
    "summarize_gate_report",
    "push_adapter_to_hub",
    *_METHOD_EXPORTS,
]
