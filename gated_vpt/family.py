# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""What one family of ViT backbones is: the record the registry (`gated_vpt.families`) holds per family, and the
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
        stack_paths: Attribute paths, relative to that encoder, where the `nn.ModuleList` of blocks may live.
        num_prefix_tokens: Number of tokens the embeddings put before the patch tokens, from the encoder's config
            (for a model without a transformers config: from the encoder module itself).
        module_classes: Encoder classes matched by `isinstance` instead of `model_type`: the way to describe a model
            that has no transformers config (a plain `nn.Module` ViT; see `gated_vpt.register_family`).
        hidden_size, patch_size: Where the width and patch size come from, given the config (or the module); None
            reads `config.hidden_size` / `config.patch_size`.
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
        block_arguments: For block arguments that the block would otherwise derive from the length of its input
            (V-JEPA 2 numbers its tokens for the rotary embedding when `position_mask` is None). Called by every
            prompted block as `block_arguments(args, kwargs, hidden_states, start, num_prompts)` with the arguments
            after the generic padding and `hidden_states` holding the prompt slots `[start, start + num_prompts)`;
            returns `(args, kwargs)`. Must be stateless, like `encoder_hooks`.
        refusal: Set for families gated-vpt recognises but refuses: why prompts cannot be inserted faithfully (the
            error `find_prompt_site` raises, and the supported-models table's row, say so).
        notes: Remarks for the supported-models table.
    """

    name: str
    model_types: tuple[str, ...]
    stack_paths: tuple[str, ...]
    num_prefix_tokens: Callable[[Any], int]
    module_classes: tuple[type, ...] = ()
    hidden_size: Optional[Callable[[Any], int]] = None
    patch_size: Optional[Callable[[Any], int]] = None
    example_classes: tuple[str, ...] = ()
    prefix_tokens_text: str = "1 (CLS)"
    cls_token_index: Optional[int] = 0
    encoder_hooks: tuple[Callable[[nn.Module, int], list[RemovableHandle]], ...] = ()
    prefix_only_heads: tuple[tuple[str, Callable[[Any], bool]], ...] = ()
    attention: AttentionLayout = DEFAULT_ATTENTION
    block_arguments: Optional[Callable[[tuple, dict, Any, int, int], tuple[tuple, dict]]] = None
    refusal: str = ""
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
