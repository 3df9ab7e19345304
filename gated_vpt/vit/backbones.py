# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Where the transformer blocks of a Hugging Face ViT-family model live, and what sits before the patches.

Prompt tuning needs four facts about a backbone: the `nn.ModuleList` of transformer blocks, the number of
*prefix* tokens the embeddings put before the patch tokens (CLS, DeiT's distillation token, DINOv2's registers:
prompts go right after them), the width, and the patch size (for VPT's prompt init). This module finds them by
structure, guided by a small registry of families keyed by `config.model_type`, so that wrappers such as
`ViTForImageClassification`, `Dinov2Backbone` or a composite model holding a vision tower all resolve to the same
block stack.

The registry itself is `gated_vpt.vit.families`; the docs table is generated from it here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from .families import HF_FAMILIES
from .family import NO_PATCH_GRID, AttentionLayout, BackboneFamily
from .timm_families import TIMM_FAMILIES

FAMILIES: tuple[BackboneFamily, ...] = (*HF_FAMILIES, *TIMM_FAMILIES)
_FAMILY_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
_FAMILY_BY_CLASS_NAME = {name: family for family in FAMILIES for name in family.class_names}


class UnsupportedModelError(ValueError):
    """The model has no transformer block stack that gated-vpt knows how to prompt."""


def supported_families_text() -> str:
    """One line per supported family, for error messages."""

    def matched_by(family: BackboneFamily) -> str:
        if family.class_names:
            return "class " + ", ".join(family.class_names)
        return "model_type " + ", ".join(family.model_types)

    return "; ".join(f"{f.name} ({matched_by(f)})" for f in FAMILIES if not f.refusal)


SUPPORTED_MODELS_INTRO = """\
# Supported models

gated-vpt prompts the transformer block stack of Hugging Face vision transformers. A model is supported when it *is*
or *contains* an encoder of one of the families below (a bare encoder, an `*ForImageClassification` head, a
`*Backbone`, or a composite model holding a vision tower): the block stack is found by structure, keyed by
`config.model_type`, and anything else raises `gated_vpt.UnsupportedModelError` before the model is touched.
Rows marked **Refused** are families gated-vpt recognises and refuses, with the reason in the error message, because
prompts cannot be inserted into them faithfully.

Prompts are inserted right after the *prefix tokens* (the tokens the embeddings put before the patches) and removed
after the last prompted block, so heads, `output_hidden_states` and Backbone feature maps see the usual prompt-free
sequence. With `output_attentions=True` (eager attention) the attention maps of the prompted blocks are
`[B, H, T + N_p, T + N_p]`: they include the prompt rows and columns, at positions
`[prefix, prefix + N_p)`.

Every family is tested on a tiny config (`tests/test_families.py`; video and pose models in
`tests/test_families_video_pose.py`) with every prompt method (the methods acting inside attention, GPT, CDC and
E²VPT, on every family; VPT, VFPT and VAPT on one family per distinct code path): outputs change with the adapter and
equal the base model's when it is disabled, hidden states and head outputs keep the base shapes, attention maps,
save / load round trip, another image size (images), and the position of the prompts in the sequence. Methods that
need something of the backbone refuse the families without it, with the reason: VAPT a patch grid, E²VPT an
attention that can take extra keys (see [methods.md](methods.md)).

Other ViTs (a transformers model type not listed here, or a plain `nn.Module`) can be described at run time with
`gated_vpt.register_family`: see [custom_models.md](custom_models.md).

This file is generated from the registry in `gated_vpt/vit/families.py` by `python docs/gen_supported_models.py`; a test
checks that it is up to date.
"""


TIMM_MODELS_INTRO = """
## timm models

timm ViTs are matched by class (timm is never imported by gated-vpt; install it yourself). The same PEFT API works on
them: `get_peft_model(timm.create_model("vit_small_patch16_224"), GatedPromptConfig(modules_to_save=["head"]))`.
Tested in `tests/test_timm.py` with `pretrained=False` tiny configs of the models listed, with every method.
"""


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _family_rows(timm: bool) -> list[str]:
    """The table rows of the Hugging Face families (matched by `model_type`) or of the timm ones (by class)."""
    rows = []
    for family in FAMILIES:
        if bool(family.class_names) != timm:
            continue
        cells = (
            family.name,
            ", ".join(f"`{t}`" for t in (family.class_names if timm else family.model_types)),
            family.prefix_tokens_text,
            ", ".join(f"`{c}`" for c in family.example_classes),
            f"**Refused**: {family.refusal}." if family.refusal else family.notes or "",
        )
        rows.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
    return rows


def supported_models_markdown() -> str:
    """The supported-models page (docs/supported_models.md), generated from `FAMILIES`."""
    lines = [
        SUPPORTED_MODELS_INTRO,
        "| Family | `model_type` | Prefix tokens | Tested classes | Notes |",
        "|---|---|---|---|---|",
        *_family_rows(timm=False),
        TIMM_MODELS_INTRO,
        "| Family | Class | Prefix tokens | Tested models | Notes |",
        "|---|---|---|---|---|",
        *_family_rows(timm=True),
    ]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class PromptSite:
    """The resolved place in one model where prompts are inserted.

    Attributes:
        family: The matched backbone family.
        encoder_name: Module path (in the adapted model) of the encoder that owns the block stack.
        stack_name: Module path of the block stack (`nn.ModuleList` or `nn.Sequential`).
        block_names: Module path of every block, in order.
        ancestor_names: Module paths from the model root down to the stack's parent; their outputs may carry
            `hidden_states` that must be returned prompt-free.
        model_type, hidden_size, depth, patch_size, num_prefix_tokens: Backbone facts.
    """

    family: BackboneFamily
    encoder_name: str
    stack_name: str
    block_names: tuple[str, ...]
    ancestor_names: tuple[str, ...]
    model_type: str
    hidden_size: int
    depth: int
    patch_size: int
    num_prefix_tokens: int
    has_cls_token: bool = True
    patch_grid: Optional[tuple[int, int]] = None  # (H, W) of the patch tokens; None when unknown (see the family)

    def block_index(self, module_name: str) -> int:
        return self.block_names.index(module_name)

    @property
    def cls_token_index(self) -> Optional[int]:
        """Position of the CLS token in the sequence, or None when the backbone has none."""
        index = self.family.cls_token_index
        present = self.has_cls_token and index is not None and 0 <= index < self.num_prefix_tokens
        return index if present else None

    def head_reads_only_prefix_tokens(self, model: nn.Module) -> bool:
        """Whether `model` (the host the adapter is injected into) is one of the family's `prefix_only_heads`: its
        output then ignores the patch tokens of the final block. False for every other class (bare encoders, whose
        patch tokens users read, and heads gated-vpt does not know)."""
        encoder = model.get_submodule(self.encoder_name)
        predicate = dict(self.family.prefix_only_heads).get(type(model).__name__)
        return predicate is not None and bool(predicate(_facts_of(encoder)))

    def install_encoder_hooks(self, model: nn.Module) -> list[RemovableHandle]:
        """Install the family's encoder hooks (see `BackboneFamily.encoder_hooks`) on the encoder of `model`."""
        encoder = model.get_submodule(self.encoder_name)
        return [handle for install in self.family.encoder_hooks for handle in install(encoder, self.num_prefix_tokens)]


def _facts_of(encoder: nn.Module) -> Any:
    """What a family's functions read: the transformers config, else (a timm or plain module) the module itself."""
    return encoder.config if isinstance(encoder, PreTrainedModel) else encoder


def _qualified_class_names(module: nn.Module) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(module).__mro__]


def _patch_size(config: Any) -> int:
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        patch = patch[0]
    if patch is None:
        raise UnsupportedModelError(f"{type(config).__name__} has no `patch_size`; gated-vpt prompts patch-based ViTs.")
    return int(patch)


# Families described at run time by users (`register_family`); looked up before the built-in registry.
_CUSTOM_FAMILIES: list[BackboneFamily] = []


def register_family(family: BackboneFamily) -> BackboneFamily:
    """Describe a ViT the registry does not know, without editing the library: its encoder (by `model_types` for a
    transformers model, or `module_classes` for any `nn.Module`), where its blocks are, its prefix tokens and CLS
    index, its width and patch size, and its attention layout. `find_prompt_site`, and so `get_peft_model`, then
    prompt it like a built-in family. docs/custom_models.md has a worked example. Returns `family`."""
    if not isinstance(family, BackboneFamily):
        raise TypeError(f"register_family takes a gated_vpt.BackboneFamily; got {type(family).__name__}.")
    _check_family_record(family)
    if not family.stack_paths or not (family.model_types or family.module_classes):
        raise ValueError(
            f"Family {family.name!r} needs `stack_paths` and at least one of `model_types` (transformers models) "
            "or `module_classes` (any nn.Module), so that its encoder can be found."
        )
    taken = [
        f.name
        for f in (*_CUSTOM_FAMILIES, *FAMILIES)
        if f.name != family.name and set(f.model_types) & set(family.model_types)
    ]
    if taken:
        raise ValueError(f"model_type(s) {sorted(family.model_types)} already belong to the family {taken[0]!r}.")
    unregister_family(family.name)
    _CUSTOM_FAMILIES.insert(0, family)
    return family


def _check_family_record(family: BackboneFamily) -> None:
    """The fields of a custom family record have the types the registry relies on (raise ValueError otherwise)."""

    def strings(value: Any) -> bool:
        return isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)

    problems = []
    if not isinstance(family.name, str) or not family.name.strip():
        problems.append("`name` must be a non-empty string")
    elif any(f.name == family.name for f in FAMILIES):
        problems.append(f"`name` {family.name!r} is a built-in family's; choose another name")
    if not strings(family.model_types):
        problems.append(
            f"`model_types` must be a tuple of strings, e.g. ('my_vit',); got {family.model_types!r} (a plain string "
            "would match by substring)"
        )
    if not strings(family.stack_paths):
        problems.append(
            f"`stack_paths` must be a tuple of attribute paths, e.g. ('encoder.layer',); got {family.stack_paths!r}"
        )
    if not isinstance(family.module_classes, tuple) or not all(
        isinstance(c, type) and issubclass(c, nn.Module) for c in family.module_classes
    ):
        problems.append(f"`module_classes` must be a tuple of nn.Module classes; got {family.module_classes!r}")
    for field in ("num_prefix_tokens", "hidden_size", "patch_size", "block_arguments"):
        value = getattr(family, field)
        if value is not None and not callable(value):
            problems.append(
                f"`{field}` must be a function of the config (or module), e.g. `lambda config: 1`; got {value!r}"
            )
    if family.num_prefix_tokens is None:
        problems.append("`num_prefix_tokens` must be a function of the config (or module)")
    index = family.cls_token_index
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        problems.append(f"`cls_token_index` must be None or an integer >= 0; got {index!r}")
    if not isinstance(family.attention, AttentionLayout):
        problems.append(f"`attention` must be a gated_vpt.AttentionLayout; got {type(family.attention).__name__}")
    if problems:
        raise ValueError(f"Family record {family.name!r} is not valid: " + "; ".join(problems) + ".")


def unregister_family(name: str) -> None:
    """Forget a family added with `register_family` (nothing happens for an unknown name)."""
    _CUSTOM_FAMILIES[:] = [f for f in _CUSTOM_FAMILIES if f.name != name]


def _family_of(module: nn.Module) -> tuple[Optional[BackboneFamily], Optional[str]]:
    """The family of `module` as an encoder, and its model type (None, None when it is none of them)."""
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None) if isinstance(module, PreTrainedModel) else None
    for family in _CUSTOM_FAMILIES:
        if family.module_classes and isinstance(module, family.module_classes):
            return family, model_type or (family.model_types[:1] or (type(module).__name__,))[0]
        if model_type is not None and model_type in family.model_types:
            return family, model_type
    if model_type is None and _FAMILY_BY_CLASS_NAME:
        family = next(
            (_FAMILY_BY_CLASS_NAME[n] for n in _qualified_class_names(module) if n in _FAMILY_BY_CLASS_NAME), None
        )
        if family is not None:
            return family, family.model_types[0]
    return _FAMILY_BY_MODEL_TYPE.get(model_type), model_type


def _fact(family: BackboneFamily, what: str, value: Any, smallest: int) -> int:
    """A backbone fact a family record computed, checked: an integer >= `smallest` (a custom family's functions could
    return anything, and a bad value would only fail at forward time, or in every loader after training)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
        raise UnsupportedModelError(
            f"The family record {family.name!r} gives `{what}` = {value!r} for this model; it must be an integer >= "
            f"{smallest}. Fix the record's `{what}` (see `gated_vpt.register_family`, docs/custom_models.md)."
        )
    return value


def _patch_grid(family: BackboneFamily, facts: Any) -> Optional[tuple[int, int]]:
    """The family's patch grid for this model, None when it has none or it cannot be read (a config without an image
    size): only methods that need the grid refuse such a model, with the reason."""
    if family.patch_grid is None or family.patch_grid is NO_PATCH_GRID:
        return None
    try:
        height, width = family.patch_grid(facts)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return (int(height), int(width)) if int(height) > 0 and int(width) > 0 else None


def _get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def find_prompt_site(model: nn.Module) -> PromptSite:
    """Find the ViT block stack in `model` (the outermost encoder of a registered family).

    Raises:
        UnsupportedModelError: when no registered family's block stack is found; the message lists the families.
    """
    seen_types = []
    for name, module in model.named_modules():
        family, model_type = _family_of(module)
        if isinstance(module, PreTrainedModel):
            seen_types.append(getattr(getattr(module, "config", None), "model_type", None))
        if family is None:
            continue
        if family.refusal:
            raise UnsupportedModelError(
                f"{type(model).__name__} holds a {family.name} encoder (model_type {model_type!r}), which gated-vpt "
                f"recognises but cannot prompt faithfully: {family.refusal}. docs/supported_models.md lists the "
                "families that work."
            )
        # what the facts are read from: the transformers config, else (a plain module) the module itself
        facts = _facts_of(module)
        for rel_path in family.stack_paths:
            stack = _get_submodule(module, rel_path)
            if isinstance(stack, (nn.ModuleList, nn.Sequential)) and len(stack) > 0:
                stack_name = f"{name}.{rel_path}" if name else rel_path
                parts = stack_name.split(".")
                ancestors = tuple(".".join(parts[:i]) for i in range(len(parts)))
                return PromptSite(
                    family=family,
                    encoder_name=name,
                    stack_name=stack_name,
                    block_names=tuple(f"{stack_name}.{i}" for i in range(len(stack))),
                    ancestor_names=ancestors,
                    model_type=model_type,
                    hidden_size=_fact(
                        family, "hidden_size", family.hidden_size(facts) if family.hidden_size else facts.hidden_size, 1
                    ),
                    depth=len(stack),
                    patch_size=_fact(
                        family, "patch_size", family.patch_size(facts) if family.patch_size else _patch_size(facts), 1
                    ),
                    num_prefix_tokens=_fact(family, "num_prefix_tokens", family.num_prefix_tokens(facts), 0),
                    has_cls_token=family.has_cls_token is None or bool(family.has_cls_token(facts)),
                    patch_grid=_patch_grid(family, facts),
                )
    found = f"model_type(s) {sorted({t for t in seen_types if t})}" if any(seen_types) else "no transformers model"
    raise UnsupportedModelError(
        f"{type(model).__name__} has no Vision Transformer block stack that gated-vpt can prompt (found {found}). "
        f"Supported families: {supported_families_text()}. Pass a model of one of these families (a bare encoder, "
        "an *ForImageClassification head, a Backbone, or a model that contains one); docs/supported_models.md lists "
        "the tested classes. For another ViT, describe it with `gated_vpt.register_family` (docs/custom_models.md)."
    )
