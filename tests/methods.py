"""The method case table: every prompt method the shared PEFT-behaviour tests run on.

A new method adds one row to `METHOD_CASES`; `method_config` then builds its config for any tiny backbone, and every
test that takes the `method` fixture (save / load, several adapters, disable, unload, merge refusal, checkpointing,
compile, mixed batches, the family tests) runs on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import pytest
from torch import nn

from gated_vpt import find_prompt_site, preset_config
from gated_vpt.prompting.prompt_config import PromptConfigBase


@dataclasses.dataclass(frozen=True)
class MethodCase:
    """How the shared tests build one method's config.

    preset: the method's name in `gated_vpt.PRESETS`.
    peft_type: what `adapter_config.json` records.
    visible: fields that make a freshly initialised adapter change the outputs (so "equals the base" is not vacuous).
    without_cls: fields to use on backbones without a CLS token (parts of the method that need one switched off).
    needs_patch_grid: the method reads the patches as an image and refuses families without a patch grid (its own
        test file checks that refusal; the shared tests skip those families).
    any_image_size: the adapter works at input sizes other than the backbone's (False: its parameters are sized to
        the patch grid; the shared tests of other sizes skip it).
    other_dropouts: the method's dropout fields besides `prompt_dropout`, set to 0 with it (a test asking for no
        prompt dropout asks for a deterministic training forward).
    all_families: run the family-parametrised tests on every tiny backbone (True for methods that act inside
        attention, where families differ: projections, logit terms, rotary embeddings); False runs them on the
        representative backbones only (`conftest.REPRESENTATIVE_BACKBONES`, one per distinct code path), which keeps
        each CI leg within its time while every method still meets every family layout.
    """

    preset: str
    peft_type: str
    visible: dict[str, Any] = dataclasses.field(default_factory=dict)
    without_cls: dict[str, Any] = dataclasses.field(default_factory=dict)
    needs_patch_grid: bool = False
    any_image_size: bool = True
    other_dropouts: tuple[str, ...] = ()
    all_families: bool = False


METHOD_CASES: dict[str, MethodCase] = {
    "vpt": MethodCase("vpt-deep", "VISUAL_PROMPT"),
    "vfpt": MethodCase("vfpt", "FOURIER_PROMPT"),
    # (its generated prompts start at exactly 0; the static first-block prompts still change the outputs)
    "vapt": MethodCase(
        "vapt", "ADAPTIVE_PROMPT", needs_patch_grid=True, any_image_size=False, other_dropouts=("generator_dropout",)
    ),
    "gpt": MethodCase("gpt", "GATED_PROMPT", visible={"gate_init": 0.0}, all_families=True),
    "cdc": MethodCase(
        "cdc",
        "CDC_PROMPT",
        visible={"aggregation_bias_init": 0.0, "reinforce_scale_init": 0.5},
        without_cls={"attentive_reinforcement": False, "reinforce_scale_init": 0.0},
        all_families=True,
    ),
}


def skip_unless_any_image_size(method: str) -> None:
    """Skip a test of another input size for a method whose adapter is sized to the backbone's patch grid."""
    if not METHOD_CASES[method].any_image_size:
        pytest.skip(f"{method}'s parameters are sized to the backbone's patch grid (its refusal is tested separately)")


def method_config(
    method: str, model: Optional[nn.Module] = None, *, visible: bool = False, **overrides: Any
) -> PromptConfigBase:
    """The config of `method` for `model` (`visible`: one whose adapter changes the outputs at initialisation)."""
    case = METHOD_CASES[method]
    fields: dict[str, Any] = dict(case.visible) if visible else {}
    site = None if model is None else find_prompt_site(model)
    if site is not None and site.cls_token_index is None:
        fields.update(case.without_cls)
    if site is not None and case.needs_patch_grid and site.patch_grid is None:
        pytest.skip(f"{method} needs a patch grid and {site.family.name} has none (its refusal is tested separately)")
    if overrides.get("prompt_dropout") == 0.0:
        fields.update(dict.fromkeys(case.other_dropouts, 0.0))
    return preset_config(case.preset, **{**fields, **overrides})
