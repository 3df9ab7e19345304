# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Where the transformer blocks of a Hugging Face ViT-family model live, and what sits before the patches.

Prompt tuning needs four facts about a backbone: the `nn.ModuleList` of transformer blocks, the number of
*prefix* tokens the embeddings put before the patch tokens (CLS, DeiT's distillation token, DINOv2's registers:
prompts go right after them), the width, and the patch size (for VPT's prompt init). This module finds them by
structure, guided by a small registry of families keyed by `config.model_type`, so that wrappers such as
`ViTForImageClassification`, `Dinov2Backbone` or a composite model holding a vision tower all resolve to the same
block stack.

The registry is the single source of truth for "supported models": the docs table is generated from it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from .attention import DEFAULT_ATTENTION, AttentionLayout, is_relative_position_bias
from .tokens import pad_for_prompts


@dataclasses.dataclass(frozen=True)
class BackboneFamily:
    """A family of ViT backbones sharing one layout.

    Attributes:
        name: Human-readable family name (used in error messages and the supported-models table).
        model_types: The `config.model_type` values of the encoder that owns the block stack.
        stack_paths: Attribute paths, relative to that encoder, where the `nn.ModuleList` of blocks may live.
        num_prefix_tokens: Number of tokens the embeddings put before the patch tokens, from the config.
        example_classes: Model classes tested with this family (documentation only).
        prefix_tokens_text: What the prefix tokens are, for the supported-models table.
        cls_token_index: Position of the CLS token among the prefix tokens; None when the family has no CLS token
            (pooling is then up to the host model's head, and methods that read the CLS token's attention, such as
            CDC's attentive reinforcement, are unavailable).
        encoder_hooks: Family-specific adjustments for computations *inside* the encoder that are sized to the
            prompt-free sequence and are not block arguments (which `pad_for_prompts` already pads). Each is called
            as `install(encoder, num_prefix_tokens)` when the tuner is attached and returns removable hook handles;
            the tuner removes them on `unload()`. Hooks must be stateless (activation checkpointing re-runs blocks).
        prefix_only_heads: Host classes of this family whose output depends on the final block's output only
            through the prefix tokens (a classifier on the CLS token), each with a predicate on the encoder's config
            (BEiT's classifier reads the CLS token only without mean pooling). Decides where parameters acting on
            the patch tokens of the final block could never learn (see `head_reads_only_prefix_tokens`).
        attention: Attribute and argument names of the family's attention (`gated_vpt.attention`): where GPT's
            temperature and CDC's attentive reinforcement hook in.
        notes: Remarks for the supported-models table.
    """

    name: str
    model_types: tuple[str, ...]
    stack_paths: tuple[str, ...]
    num_prefix_tokens: Callable[[Any], int]
    example_classes: tuple[str, ...] = ()
    prefix_tokens_text: str = "1 (CLS)"
    cls_token_index: Optional[int] = 0
    encoder_hooks: tuple[Callable[[nn.Module, int], list[RemovableHandle]], ...] = ()
    prefix_only_heads: tuple[tuple[str, Callable[[Any], bool]], ...] = ()
    attention: AttentionLayout = DEFAULT_ATTENTION
    notes: str = ""


def _one_cls(config: Any) -> int:
    return 1


def _no_prefix(config: Any) -> int:
    return 0


def _cls_and_distillation(config: Any) -> int:
    return 2


def _cls_and_registers(config: Any) -> int:
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def _always(config: Any) -> bool:
    return True


def _without_mean_pooling(config: Any) -> bool:
    return not getattr(config, "use_mean_pooling", True)


# ----------------------------------------------------------------------------------------------------------------
# Family-specific encoder hooks
# ----------------------------------------------------------------------------------------------------------------


def _is_windowed_relative_position_bias(module: nn.Module) -> bool:
    """BEiT / Data2Vec-vision `*RelativePositionBias`: `forward(window_size, interpolate_pos_encoding, dim_size)`
    returns a `[1, H, T, T]` bias for the prompt-free sequence of `T = window_h * window_w + 1` tokens (CLS first)."""
    return is_relative_position_bias(module) and hasattr(module, "generate_relative_position_index")


def _pad_relative_position_biases(encoder: nn.Module, num_prefix_tokens: int) -> list[RemovableHandle]:
    """Give prompt tokens zero relative position bias in BEiT-style models.

    The blocks (per-block bias) and the encoder (shared bias) call the bias module with `dim_size` = the length of the
    sequence they hold, which includes the prompt slots between the first and the last prompted block. The module
    builds the bias from the window size, i.e. for the prompt-free `T = wh * ww + 1` tokens, and with
    `interpolate_pos_encoding=True` resizes it bilinearly to `dim_size x dim_size` (for the prompt-free sequence that
    resize is the identity). With prompts present, the pre-hook turns that resize off (so the prompt-free bias is
    exactly the base model's) and the forward hook inserts zero rows and columns for the prompt slots. Without
    prompts (`dim_size == T`) both hooks do nothing. Stateless: everything is read from the call's arguments.
    """

    def bound_arguments(module: nn.Module, args: tuple, kwargs: dict) -> Optional[inspect.BoundArguments]:
        try:
            bound = inspect.signature(module.forward).bind(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        window, dim_size = bound.arguments.get("window_size"), bound.arguments.get("dim_size")
        if window is None or not isinstance(dim_size, (int, torch.SymInt)):
            return None
        free_len = int(window[0]) * int(window[1]) + 1
        return bound if dim_size > free_len else None

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        bound = bound_arguments(module, args, kwargs)
        if bound is None:
            return None
        bound.arguments["interpolate_pos_encoding"] = False
        return bound.args, bound.kwargs

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        bound = bound_arguments(module, args, kwargs)
        if bound is None or not torch.is_tensor(output):
            return None
        window, dim_size = bound.arguments["window_size"], bound.arguments["dim_size"]
        free_len = int(window[0]) * int(window[1]) + 1
        return pad_for_prompts(output, free_len, num_prefix_tokens, dim_size - free_len)

    handles = []
    for module in encoder.modules():
        if _is_windowed_relative_position_bias(module):
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    return handles


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------

_VIT_STACKS = ("layers", "encoder.layer", "encoder.layers")

FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily(
        name="ViT",
        model_types=("vit",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("ViTModel", "ViTForImageClassification"),
        prefix_only_heads=(("ViTForImageClassification", _always),),
    ),
    BackboneFamily(
        name="DeiT",
        model_types=("deit",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_cls_and_distillation,
        example_classes=("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
        prefix_only_heads=(
            ("DeiTForImageClassification", _always),
            ("DeiTForImageClassificationWithTeacher", _always),
        ),
        prefix_tokens_text="2 (CLS, distillation)",
        notes="Prompts go after the distillation token; both heads of the teacher variant see their usual tokens.",
    ),
    BackboneFamily(
        name="ViTMAE",
        model_types=("vit_mae",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("ViTMAEModel", "ViTMAEForPreTraining"),
        notes=(
            "Set `mask_ratio=0` to fine-tune (the embeddings still shuffle the patches unless a fixed `noise` is "
            "passed). With masking the encoder sees `[CLS; kept patches]` and prompts go after CLS. Only the encoder "
            "is prompted: the decoder of `ViTMAEForPreTraining` gets a prompt-free latent. transformers has no ViTMAE "
            "classifier: put a head on `ViTMAEModel`, or load MAE weights into `ViTForImageClassification`."
        ),
    ),
    BackboneFamily(
        name="DINOv2",
        model_types=("dinov2",),
        stack_paths=("encoder.layer", "encoder.layers", "layers"),
        num_prefix_tokens=_one_cls,
        example_classes=("Dinov2Model", "Dinov2ForImageClassification", "Dinov2Backbone"),
    ),
    BackboneFamily(
        name="DINOv2 with registers",
        model_types=("dinov2_with_registers",),
        stack_paths=("encoder.layer", "encoder.layers", "layers"),
        num_prefix_tokens=_cls_and_registers,
        example_classes=("Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification"),
        prefix_tokens_text="1 + num_register_tokens (CLS, registers)",
        notes="Prompts go after the register tokens.",
    ),
    BackboneFamily(
        name="DINOv3 ViT",
        model_types=("dinov3_vit",),
        stack_paths=("model.layer", "layer", "layers"),
        num_prefix_tokens=_cls_and_registers,
        example_classes=("DINOv3ViTModel", "DINOv3ViTBackbone"),
        prefix_tokens_text="1 + num_register_tokens (CLS, registers)",
        notes=(
            "RoPE is applied to the last `num_patches` tokens of the sequence, so prompts (like CLS and registers) "
            "get no rotary embedding. transformers has no DINOv3 classifier: put a head on `DINOv3ViTModel`."
        ),
    ),
    BackboneFamily(
        name="BEiT",
        model_types=("beit",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("BeitModel", "BeitForImageClassification"),
        prefix_only_heads=(("BeitForImageClassification", _without_mean_pooling),),
        encoder_hooks=(_pad_relative_position_biases,),
        notes="Per-block and shared relative position biases are padded: prompts get zero bias.",
    ),
    BackboneFamily(
        name="Data2Vec-vision",
        model_types=("data2vec-vision",),
        stack_paths=("encoder.layer", "encoder.layers", "layers"),
        num_prefix_tokens=_one_cls,
        example_classes=("Data2VecVisionModel", "Data2VecVisionForImageClassification"),
        prefix_only_heads=(("Data2VecVisionForImageClassification", _without_mean_pooling),),
        encoder_hooks=(_pad_relative_position_biases,),
        notes="Blocks return tuples. Per-block and shared relative position biases are padded: prompts get zero bias.",
    ),
    BackboneFamily(
        name="ViTMSN",
        model_types=("vit_msn",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("ViTMSNModel", "ViTMSNForImageClassification"),
        prefix_only_heads=(("ViTMSNForImageClassification", _always),),
    ),
    BackboneFamily(
        name="I-JEPA",
        model_types=("ijepa",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_no_prefix,
        example_classes=("IJepaModel", "IJepaForImageClassification"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        notes="No CLS: prompts go first; pooling is the host head's (mean over patches). CDC's AR is unavailable.",
    ),
    BackboneFamily(
        name="CLIP vision tower",
        model_types=("clip_vision_model",),
        stack_paths=("encoder.layers", "vision_model.encoder.layers"),
        num_prefix_tokens=_one_cls,
        example_classes=("CLIPVisionModel", "CLIPForImageClassification", "CLIPModel"),
        # the image embedding is the projected, normalised CLS token (CLIPForImageClassification averages patches)
        prefix_only_heads=(("CLIPModel", _always), ("CLIPVisionModelWithProjection", _always)),
        notes=(
            "Prompts are inserted after `pre_layrnorm`. In `CLIPModel` only the vision tower is prompted "
            "(`vision_model.encoder.layers`); the text tower is left as is."
        ),
    ),
    BackboneFamily(
        name="SigLIP vision tower",
        model_types=("siglip_vision_model",),
        stack_paths=("encoder.layers", "vision_model.encoder.layers"),
        num_prefix_tokens=_no_prefix,
        example_classes=("SiglipVisionModel", "SiglipForImageClassification", "SiglipModel"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        notes=(
            "No CLS: prompts go first; pooling is the host head's (attention-pooling head / mean). CDC's AR is "
            "unavailable. In `SiglipModel` only the vision tower is prompted."
        ),
    ),
)

_FAMILY_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


class UnsupportedModelError(ValueError):
    """The model has no transformer block stack that gated-vpt knows how to prompt."""


def supported_families_text() -> str:
    """One line per family, for error messages."""
    return "; ".join(f"{f.name} (model_type {', '.join(f.model_types)})" for f in FAMILIES)


SUPPORTED_MODELS_INTRO = """\
# Supported models

gated-vpt prompts the transformer block stack of Hugging Face vision transformers. A model is supported when it *is*
or *contains* an encoder of one of the families below (a bare encoder, an `*ForImageClassification` head, a
`*Backbone`, or a composite model holding a vision tower): the block stack is found by structure, keyed by
`config.model_type`, and anything else raises `gated_vpt.UnsupportedModelError` before the model is touched.

Prompts are inserted right after the *prefix tokens* (the tokens the embeddings put before the patches) and removed
after the last prompted block, so heads, `output_hidden_states` and Backbone feature maps see the usual prompt-free
sequence. With `output_attentions=True` (eager attention) the attention maps of the prompted blocks are
`[B, H, T + N_p, T + N_p]`: they include the prompt rows and columns, at positions
`[prefix, prefix + N_p)`.

Every family is tested on a tiny config (`tests/test_families.py`) with Gated Prompt Tuning and CDC: outputs change
with the adapter and equal the base model's when it is disabled, hidden states and head outputs keep the base shapes,
attention maps, save / load round trip, another image size, and the position of the prompts in the sequence.

This file is generated from the registry in `gated_vpt/backbones.py` by `python docs/gen_supported_models.py`; a test
checks that it is up to date.
"""


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def supported_models_markdown() -> str:
    """The supported-models page (docs/supported_models.md), generated from `FAMILIES`."""
    lines = [
        SUPPORTED_MODELS_INTRO,
        "| Family | `model_type` | Prefix tokens | Tested classes | Notes |",
        "|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        cells = (
            family.name,
            ", ".join(f"`{t}`" for t in family.model_types),
            family.prefix_tokens_text,
            ", ".join(f"`{c}`" for c in family.example_classes),
            family.notes or "",
        )
        lines.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class PromptSite:
    """The resolved place in one model where prompts are inserted.

    Attributes:
        family: The matched backbone family.
        encoder_name: Module path (in the adapted model) of the encoder that owns the block stack.
        stack_name: Module path of the `nn.ModuleList` of blocks.
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

    def block_index(self, module_name: str) -> int:
        return self.block_names.index(module_name)

    @property
    def cls_token_index(self) -> Optional[int]:
        """Position of the CLS token in the sequence, or None when the backbone has none."""
        index = self.family.cls_token_index
        return index if index is not None and 0 <= index < self.num_prefix_tokens else None

    def head_reads_only_prefix_tokens(self, model: nn.Module) -> bool:
        """Whether `model` (the host the adapter is injected into) is one of the family's `prefix_only_heads`: its
        output then ignores the patch tokens of the final block. False for every other class (bare encoders, whose
        patch tokens users read, and heads gated-vpt does not know)."""
        encoder = model.get_submodule(self.encoder_name)
        predicate = dict(self.family.prefix_only_heads).get(type(model).__name__)
        return predicate is not None and bool(predicate(encoder.config))

    def install_encoder_hooks(self, model: nn.Module) -> list[RemovableHandle]:
        """Install the family's encoder hooks (see `BackboneFamily.encoder_hooks`) on the encoder of `model`."""
        encoder = model.get_submodule(self.encoder_name)
        return [handle for install in self.family.encoder_hooks for handle in install(encoder, self.num_prefix_tokens)]


def _patch_size(config: Any) -> int:
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        patch = patch[0]
    if patch is None:
        raise UnsupportedModelError(f"{type(config).__name__} has no `patch_size`; gated-vpt prompts patch-based ViTs.")
    return int(patch)


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
        config = getattr(module, "config", None)
        if not isinstance(module, PreTrainedModel) or config is None:
            continue
        model_type = getattr(config, "model_type", None)
        seen_types.append(model_type)
        family = _FAMILY_BY_MODEL_TYPE.get(model_type)
        if family is None:
            continue
        for rel_path in family.stack_paths:
            stack = _get_submodule(module, rel_path)
            if isinstance(stack, nn.ModuleList) and len(stack) > 0:
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
                    hidden_size=int(config.hidden_size),
                    depth=len(stack),
                    patch_size=_patch_size(config),
                    num_prefix_tokens=family.num_prefix_tokens(config),
                )
    found = f"model_type(s) {sorted({t for t in seen_types if t})}" if any(seen_types) else "no transformers model"
    raise UnsupportedModelError(
        f"{type(model).__name__} has no Vision Transformer block stack that gated-vpt can prompt (found {found}). "
        f"Supported families: {supported_families_text()}. Pass a model of one of these families (a bare encoder, "
        "an *ForImageClassification head, a Backbone, or a model that contains one); docs/supported_models.md lists "
        "the tested classes."
    )
