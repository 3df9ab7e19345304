"""The method case table: every prompt method the shared PEFT-behaviour tests run on.

A new method adds one row to `METHOD_CASES`; `method_config` then builds its config for any tiny backbone, and every
test that takes the `method` fixture (save / load, several adapters, disable, unload, merge refusal, checkpointing,
compile, mixed batches, the family tests) runs on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from torch import nn

from gated_vpt import find_prompt_site, preset_config
from gated_vpt.prompt_config import PromptConfigBase


@dataclasses.dataclass(frozen=True)
class MethodCase:
    """How the shared tests build one method's config.

    preset: the method's name in `gated_vpt.PRESETS`.
    peft_type: what `adapter_config.json` records.
    visible: fields that make a freshly initialised adapter change the outputs (so "equals the base" is not vacuous).
    without_cls: fields to use on backbones without a CLS token (parts of the method that need one switched off).
    """

    preset: str
    peft_type: str
    visible: dict[str, Any] = dataclasses.field(default_factory=dict)
    without_cls: dict[str, Any] = dataclasses.field(default_factory=dict)


METHOD_CASES: dict[str, MethodCase] = {
    "gpt": MethodCase("gpt", "GATED_PROMPT", visible={"gate_init": 0.0}),
    "cdc": MethodCase(
        "cdc",
        "CDC_PROMPT",
        visible={"aggregation_bias_init": 0.0, "reinforce_scale_init": 0.5},
        without_cls={"attentive_reinforcement": False, "reinforce_scale_init": 0.0},
    ),
}


def method_config(
    method: str, model: Optional[nn.Module] = None, *, visible: bool = False, **overrides: Any
) -> PromptConfigBase:
    """The config of `method` for `model` (`visible`: one whose adapter changes the outputs at initialisation)."""
    case = METHOD_CASES[method]
    fields: dict[str, Any] = dict(case.visible) if visible else {}
    if model is not None and find_prompt_site(model).cls_token_index is None:
        fields.update(case.without_cls)
    return preset_config(case.preset, **{**fields, **overrides})
