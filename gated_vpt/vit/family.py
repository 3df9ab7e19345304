# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""What one family of ViT backbones is: the record the registry (`gated_vpt.vit.families`) holds per family, and the
small functions records use for their prefix-token counts and head predicates."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

from torch import nn
from torch.utils.hooks import RemovableHandle

from .attention import DEFAULT_ATTENTION, AttentionLayout


@dataclasses.dataclass(frozen=True)
class BackboneFamily:
    """A family of ViT backbones sharing one layout.

    Attributes:
        name: Human-readable family name (used in error messages and the supported-models table).
        model_types: The `config.model_type` values of the encoder that owns the block stack (transformers models).
        stack_paths: Attribute paths, relative to that encoder, where the block stack (an `nn.ModuleList` or an
            `nn.Sequential` of blocks) may live.
        num_prefix_tokens: Number of tokens the embeddings put before the patch tokens, from the encoder's config
            (for a model without a transformers config: from the encoder module itself).
        module_classes: Encoder classes matched by `isinstance` instead of `model_type`: the way to describe a model
            that has no transformers config (a plain `nn.Module` ViT; see `gated_vpt.register_family`).
        class_names: Encoder classes matched by qualified name (`"timm.models.vision_transformer.VisionTransformer"`)
            against the module's class and its bases: how built-in records describe another library's models without
            importing it.
        hidden_size, patch_size: Where the width and patch size come from, given the config (or the module); None
            reads `config.hidden_size` / `config.patch_size`.
        example_classes: Model classes tested with this family (documentation only).
        prefix_tokens_text: What the prefix tokens are, for the supported-models table.
        cls_token_index: Position of the CLS token among the prefix tokens; None when the family has no CLS token
            (pooling is then up to the host model's head, and methods that read the CLS token's attention, such as
            CDC's attentive reinforcement, are unavailable).
        has_cls_token: For families where the CLS token is optional (timm's `class_token=False`): whether this model
            has it, given the config (or module). None: it has one whenever `cls_token_index` is set.
        encoder_hooks: Family-specific adjustments for computations *inside* the encoder that are sized to the
            prompt-free sequence and are not block arguments (which `pad_for_prompts` already pads). Each is called
            as `install(encoder, num_prefix_tokens)` when the tuner is attached and returns removable hook handles;
            the tuner removes them on `unload()`. Hooks must be stateless (activation checkpointing re-runs blocks).
        prefix_only_heads: Host classes of this family whose output depends on the final block's output only
            through the prefix tokens (a classifier on the CLS token), each with a predicate on the encoder's config
            (BEiT's classifier reads the CLS token only without mean pooling; the predicate gets the module itself for
            a model without a transformers config). Decides where parameters acting on
            the patch tokens of the final block could never learn (see `head_reads_only_prefix_tokens`).
        attention: Attribute and argument names of the family's attention (`gated_vpt.vit.attention`): where GPT's
            temperature and CDC's attentive reinforcement hook in.
        block_arguments: For block arguments that the block would otherwise derive from the length of its input
            (V-JEPA 2 numbers its tokens for the rotary embedding when `position_mask` is None). Called by every
            prompted block as `block_arguments(args, kwargs, hidden_states, start, num_prompts)` with the arguments
            after the generic padding and `hidden_states` holding the prompt slots `[start, start + num_prompts)`;
            returns `(args, kwargs)`. Must be stateless, like `encoder_hooks`.
        patch_grid: `(H, W)` of the patch tokens, in raster order after the prefix tokens, given the config (or
            module), for methods that read the patches as an image (VAPT's convolution). The default reads
            `config.image_size` and `config.patch_size`; `NO_PATCH_GRID` declares that the family has no such grid
            (patch lists, videos, shuffled patches), and those methods refuse it.
        refusal: Set for families gated-vpt recognises but refuses: why prompts cannot be inserted faithfully (the
            error `find_prompt_site` raises, and the supported-models table's row, say so).
        notes: Remarks for the supported-models table.
    """

    name: str
    model_types: tuple[str, ...]
    stack_paths: tuple[str, ...]
    num_prefix_tokens: Callable[[Any], int]
    module_classes: tuple[type, ...] = ()
    class_names: tuple[str, ...] = ()
    hidden_size: Optional[Callable[[Any], int]] = None
    patch_size: Optional[Callable[[Any], int]] = None
    example_classes: tuple[str, ...] = ()
    prefix_tokens_text: str = "1 (CLS)"
    cls_token_index: Optional[int] = 0
    has_cls_token: Optional[Callable[[Any], bool]] = None
    encoder_hooks: tuple[Callable[[nn.Module, int], list[RemovableHandle]], ...] = ()
    prefix_only_heads: tuple[tuple[str, Callable[[Any], bool]], ...] = ()
    attention: AttentionLayout = DEFAULT_ATTENTION
    block_arguments: Optional[Callable[[tuple, dict, Any, int, int], tuple[tuple, dict]]] = None
    patch_grid: Optional[Callable[[Any], tuple[int, int]]] = None
    refusal: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        # a dataclass default cannot refer to a function defined below it (`NO_PATCH_GRID` opts out)
        if self.patch_grid is None:
            object.__setattr__(self, "patch_grid", _grid_from_config)


def NO_PATCH_GRID(config: Any) -> tuple[int, int]:  # noqa: N802 (a marker, compared by identity)
    """Marker for `BackboneFamily(patch_grid=NO_PATCH_GRID)`: the family's patches form no image grid."""
    raise AssertionError("NO_PATCH_GRID is a marker, never called")


def _grid_from_config(config: Any) -> tuple[int, int]:
    """`(H, W)` = image size // patch size, from a transformers config (int or `(h, w)` sizes)."""

    def pair(value: Any) -> tuple[int, int]:
        return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))

    (height, width), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    return height // patch_h, width // patch_w


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
