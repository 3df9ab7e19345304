"""The method case table: every prompt method the shared PEFT-behaviour tests run on.

A new method adds one row to `METHOD_CASES`; `method_config` then builds its config for any tiny backbone, and every
test that takes the `method` fixture (save / load, several adapters, disable, unload, merge refusal, checkpointing,
compile, mixed batches, the family tests) runs on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
    refuses: why the method refuses a backbone by design (VAPT: no patch grid; E²VPT: an attention that cannot take
        extra keys), or None: the shared tests skip those backbones, and the method's own test file checks the
        refusal.
    any_image_size: the adapter works at input sizes other than the backbone's (False: its parameters are sized to
        the patch grid; the shared tests of other sizes skip it).
    other_dropouts: the method's dropout fields besides `prompt_dropout`, set to 0 with it (a test asking for no
        prompt dropout asks for a deterministic training forward).
    extra_keys: the config field counting keys the method adds to every prompted attention besides the prompt
        tokens (E²VPT's key-value prompts), for tests that measure attention maps.
    all_families: run the family-parametrised tests on every tiny backbone (True for methods that act inside
        attention, where families differ: projections, logit terms, rotary embeddings); False runs them on the
        representative backbones only (`conftest.REPRESENTATIVE_BACKBONES`, one per distinct code path), which keeps
        each CI leg within its time while every method still meets every family layout.
    """

    preset: str
    peft_type: str
    visible: dict[str, Any] = dataclasses.field(default_factory=dict)
    without_cls: dict[str, Any] = dataclasses.field(default_factory=dict)
    refuses: Optional[Callable[[nn.Module], Optional[str]]] = None
    extra_keys: Optional[str] = None
    any_image_size: bool = True
    other_dropouts: tuple[str, ...] = ()
    all_families: bool = False


def _without_patch_grid(model: nn.Module) -> Optional[str]:
    site = find_prompt_site(model)
    return None if site.patch_grid is not None else f"{site.family.name} has no patch grid"


def _attention_without_room_for_keys(model: nn.Module) -> Optional[str]:
    site = find_prompt_site(model)
    if site.family.block_arguments is not None:
        return f"{site.family.name} numbers its tokens for its rotary embedding"
    parts = site.family.attention.key_value_parts(model.get_submodule(site.block_names[0]))
    return parts if isinstance(parts, str) else None


METHOD_CASES: dict[str, MethodCase] = {
    "vpt": MethodCase("vpt-deep", "VISUAL_PROMPT"),
    "vfpt": MethodCase("vfpt", "FOURIER_PROMPT"),
    # key-value prompts act inside attention: every family (refused ones skip, with the refusal tested in test_e2vpt)
    "e2vpt": MethodCase(
        "e2vpt",
        "KEY_VALUE_PROMPT",
        refuses=_attention_without_room_for_keys,
        extra_keys="num_key_value_prompts",
        all_families=True,
    ),
    # (its generated prompts start at exactly 0; the static first-block prompts still change the outputs)
    "vapt": MethodCase(
        "vapt",
        "ADAPTIVE_PROMPT",
        refuses=_without_patch_grid,
        any_image_size=False,
        other_dropouts=("generator_dropout",),
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


def extra_attention_keys(method: str, config: PromptConfigBase) -> int:
    """Keys `method` adds to every prompted attention besides the prompt tokens."""
    field = METHOD_CASES[method].extra_keys
    return 0 if field is None else int(getattr(config, field))


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
    reason = None if model is None or case.refuses is None else case.refuses(model)
    if reason is not None:
        pytest.skip(f"{method} refuses this backbone ({reason}); its own tests check the refusal")
    if overrides.get("prompt_dropout") == 0.0:
        fields.update(dict.fromkeys(case.other_dropouts, 0.0))
    return preset_config(case.preset, **{**fields, **overrides})
