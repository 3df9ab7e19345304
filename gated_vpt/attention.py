# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""How a family's attention is laid out: what the methods that act inside attention need to know.

GPT scales the query projection's output (its temperature); CDC's attentive reinforcement reads the query and key
projections, the head size, and whatever the attention module adds to its logits. Those facts differ between
families and transformers versions, so each `BackboneFamily` holds an `AttentionLayout`, and the methods ask it
rather than guess. Everything is read from module structure and attribute names; nothing runs a forward.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Optional

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


def linear_of(module: nn.Module) -> Optional[nn.Linear]:
    """`module` itself if it is an `nn.Linear`, the `nn.Linear` a PEFT layer (e.g. LoRA's) wraps, else None."""
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, BaseTunerLayer):
        base = module.get_base_layer()
        return base if isinstance(base, nn.Linear) else None
    return None


def is_relative_position_bias(module: nn.Module) -> bool:
    """A BEiT-style relative position bias module (it owns a learned `relative_position_bias_table`)."""
    return isinstance(getattr(module, "relative_position_bias_table", None), nn.Parameter)


@dataclasses.dataclass(frozen=True)
class AttentionParts:
    """The pieces of one block's attention that CDC's attentive reinforcement hooks."""

    attention: nn.Module  # the module holding both projections
    query: nn.Module  # the query projection (an nn.Linear, or a PEFT layer wrapping one)
    key: nn.Module
    head_dim: int
    scaling: float  # what the attention multiplies q . k by
    argument_positions: dict[str, Optional[int]]  # positional index of each `AttentionLayout` argument, if any
    bias_modules: tuple[nn.Module, ...]  # relative position biases computed inside the attention module


@dataclasses.dataclass(frozen=True)
class AttentionLayout:
    """Attribute and argument names of a family's attention.

    Attributes:
        query_names, key_names: Attribute names of the query / key projections (transformers 5 and earlier).
        head_size_attributes: Attributes of the attention module that may hold the head size.
        head_count_attributes: Attributes (of the module or its config) that may hold the number of heads.
        logit_term_arguments: Arguments of the attention's `forward` that carry additive terms on the logits.
        rotary_argument: The argument carrying the rotary embedding `(cos, sin)`, if the family has one.
    """

    query_names: tuple[str, ...] = ("q_proj", "query")
    key_names: tuple[str, ...] = ("k_proj", "key")
    head_size_attributes: tuple[str, ...] = ("head_dim", "attention_head_size")
    head_count_attributes: tuple[str, ...] = ("num_attention_heads", "num_heads")
    logit_term_arguments: tuple[str, ...] = ("attention_mask", "relative_position_bias")
    rotary_argument: Optional[str] = "position_embeddings"

    def find_projection(self, block: nn.Module, names: tuple[str, ...]) -> Optional[nn.Module]:
        """The first projection in `block` named one of `names`: an `nn.Linear`, or a PEFT layer wrapping one (LoRA
        on `q_proj`). The wrapper itself is returned: its output, base plus LoRA update, is what hooks must see."""
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] in names and linear_of(module) is not None:
                return module
        return None

    def query_projection(self, block: nn.Module) -> Optional[nn.Module]:
        return self.find_projection(block, self.query_names)

    def head_dim(self, attention: nn.Module, query: nn.Module) -> Optional[int]:
        """Head size of an attention module: a head-size attribute, else width / head count."""
        width = linear_of(query).out_features
        for attr in self.head_size_attributes:
            value = getattr(attention, attr, None)
            if isinstance(value, int) and value > 0 and width % value == 0:
                return value
        for owner in (attention, getattr(attention, "config", None)):
            for attr in self.head_count_attributes:
                heads = getattr(owner, attr, None)
                if isinstance(heads, int) and heads > 0 and width % heads == 0:
                    return width // heads
        return None

    def argument_names(self) -> tuple[str, ...]:
        return (*self.logit_term_arguments, *((self.rotary_argument,) if self.rotary_argument else ()))

    def parts(self, block: nn.Module) -> Optional[AttentionParts]:
        """The attention pieces of `block`, or None when they cannot be read: both projections must be direct
        children of one attention module, whose head size is known."""
        query = self.query_projection(block)
        key = self.find_projection(block, self.key_names)
        if query is None or key is None:
            return None
        attention = next((m for m in block.modules() if any(c is query for c in m.children())), None)
        if attention is None or not any(c is key for c in attention.children()):
            return None
        head_dim = self.head_dim(attention, query)
        if head_dim is None:
            return None
        scaling = getattr(attention, "scaling", None)
        return AttentionParts(
            attention=attention,
            query=query,
            key=key,
            head_dim=head_dim,
            scaling=float(scaling) if isinstance(scaling, (int, float)) else head_dim**-0.5,
            argument_positions=_argument_positions(attention, self.argument_names()),
            bias_modules=tuple(c for c in attention.children() if is_relative_position_bias(c)),
        )


def _argument_positions(module: nn.Module, names: tuple[str, ...]) -> dict[str, Optional[int]]:
    """Positional index (in a forward hook's `args`) of each named parameter of `module.forward`, None if absent."""
    try:
        parameters = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        parameters = []
    return {name: parameters.index(name) if name in parameters else None for name in names}


DEFAULT_ATTENTION = AttentionLayout()
