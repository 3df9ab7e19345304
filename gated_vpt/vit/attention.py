# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""How a family's attention is laid out: what the methods that act inside attention need to know.

GPT scales the query projection's output (its temperature); CDC's attentive reinforcement reads the query and key
projections, the head size, and whatever the attention module adds to its logits. Those facts differ between
families and libraries, so each `BackboneFamily` holds an `AttentionLayout`, and the methods ask it rather than
guess. Two layouts exist: separate query / key projections (transformers: `query` / `q_proj`), and one fused `qkv`
projection whose output is `[q ; k ; v]` along its last dimension (timm), where the methods act on column slices of
that output. Everything is read from module structure and attribute names; nothing runs a forward.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Optional

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..values import is_real


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
class QueryProjection:
    """Where a block's attention queries come from: a projection, and for a fused `qkv` the query's columns of its
    output (None: the whole output is the query)."""

    module: nn.Module  # an nn.Linear, or a PEFT layer wrapping one
    columns: Optional[slice] = None


@dataclasses.dataclass(frozen=True)
class AttentionParts:
    """The pieces of one block's attention that CDC's attentive reinforcement hooks."""

    attention: nn.Module  # the module holding both projections
    query: nn.Module  # the query projection (an nn.Linear, or a PEFT layer wrapping one); for a fused qkv, that one
    key: nn.Module  # the key projection; for a fused qkv the same module as `query`
    query_columns: Optional[slice]  # for a fused qkv: the query's / key's columns of its output
    key_columns: Optional[slice]
    head_dim: int
    scaling: float  # what the attention multiplies q . k by
    argument_positions: dict[str, Optional[int]]  # positional index of each `AttentionLayout` argument, if any
    bias_modules: tuple[nn.Module, ...]  # relative position biases computed inside the attention module


@dataclasses.dataclass(frozen=True)
class KeyValueParts:
    """Where E²VPT's key-value prompts enter one block's attention: the attention module (its first argument is the
    token sequence, `input_name`), and the modules whose outputs hold the keys and the values (for a fused qkv the
    same module; the keys and values are its second and third `width` columns)."""

    attention: nn.Module
    input_name: str
    key: nn.Module
    value: nn.Module
    width: int
    head_dim: int


@dataclasses.dataclass(frozen=True)
class AttentionLayout:
    """Attribute and argument names of a family's attention.

    Attributes:
        query_names, key_names, value_names: Attribute names of the query / key / value projections (transformers 5
            and earlier).
        head_size_attributes: Attributes of the attention module that may hold the head size.
        head_count_attributes: Attributes (of the module or its config) that may hold the number of heads.
        fused_qkv_names: Attribute names of a fused query-key-value projection (`[q ; k ; v]` on its output's last
            dimension, three equal parts), used when there are no separate query / key projections.
        qk_norm_names: Modules of the attention that transform q / k after the projection (timm's `q_norm`,
            `k_norm`). When one of them is not an `nn.Identity`, the projection's output is not what the attention
            multiplies, and the methods that act there (GPT's temperature, CDC's reinforcement) refuse the model.
        scaling_attributes: Attributes of the attention module holding what it multiplies q . k by (else
            head_dim ** -0.5).
        logit_term_arguments: Arguments of the attention's `forward` that carry additive terms on the logits.
        rotary_argument: The argument carrying the rotary embedding `(cos, sin)`, if the family has one.
    """

    query_names: tuple[str, ...] = ("q_proj", "query")
    key_names: tuple[str, ...] = ("k_proj", "key")
    value_names: tuple[str, ...] = ("v_proj", "value")
    head_size_attributes: tuple[str, ...] = ("head_dim", "attention_head_size")
    head_count_attributes: tuple[str, ...] = ("num_attention_heads", "num_heads")
    logit_term_arguments: tuple[str, ...] = ("attention_mask", "relative_position_bias")
    rotary_argument: Optional[str] = "position_embeddings"
    fused_qkv_names: tuple[str, ...] = ()
    qk_norm_names: tuple[str, ...] = ()
    scaling_attributes: tuple[str, ...] = ("scaling",)

    def find_projection(self, block: nn.Module, names: tuple[str, ...]) -> Optional[nn.Module]:
        """The first projection in `block` named one of `names`: an `nn.Linear`, or a PEFT layer wrapping one (LoRA
        on `q_proj`). The wrapper itself is returned: its output, base plus LoRA update, is what hooks must see."""
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] in names and linear_of(module) is not None:
                return module
        return None

    def _fused(self, block: nn.Module) -> Optional[tuple[nn.Module, nn.Module, int]]:
        """(attention module, fused qkv projection, width of each part) of `block`, or None."""
        qkv = self.find_projection(block, self.fused_qkv_names) if self.fused_qkv_names else None
        if qkv is None or linear_of(qkv).out_features % 3:
            return None
        attention = _parent_of(block, qkv)
        return None if attention is None else (attention, qkv, linear_of(qkv).out_features // 3)

    def transformed_qk(self, block: nn.Module) -> Optional[str]:
        """The name of a q / k transform of `block` that is not an identity (see `qk_norm_names`), else None."""
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] in self.qk_norm_names and not isinstance(module, nn.Identity):
                return name
        return None

    def query_projection(self, block: nn.Module) -> Optional[QueryProjection]:
        """Where `block`'s attention queries are computed, as the attention uses them; None when they cannot be
        reached (no projection found, or q is transformed after it: `qk_norm_names`)."""
        if self.transformed_qk(block) is not None:
            return None
        query = self.find_projection(block, self.query_names)
        if query is not None:
            return QueryProjection(query)
        fused = self._fused(block)
        return None if fused is None else QueryProjection(fused[1], slice(0, fused[2]))

    def head_dim(self, attention: nn.Module, width: int) -> Optional[int]:
        """Head size of an attention module whose queries are `width` wide: a head-size attribute, else width / head
        count."""
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

    def key_value_parts(self, block: nn.Module) -> KeyValueParts | str:
        """Where key-value prompts can join `block`'s attention (`KeyValueParts`), or why they cannot (a reason)."""
        return _key_value_parts(self, block)

    def key_value_projections(self, block: nn.Module) -> KeyValueParts | str:
        """`block`'s key and value projections (`KeyValueParts`; for a fused qkv its second and third `width`
        columns), or why they cannot be found (a reason). Unlike `key_value_parts`, says nothing about whether extra
        keys could join the attention."""
        return _key_value_projections(self, block)

    def argument_names(self) -> tuple[str, ...]:
        return (*self.logit_term_arguments, *((self.rotary_argument,) if self.rotary_argument else ()))

    def parts(self, block: nn.Module) -> Optional[AttentionParts]:
        """The attention pieces of `block`, or None when they cannot be read: both projections (or one fused qkv)
        must be direct children of one attention module, whose head size is known, with q and k untransformed after
        the projection."""
        if self.transformed_qk(block) is not None:
            return None
        query = self.query_projection(block)
        key = self.find_projection(block, self.key_names)
        query_columns = key_columns = None
        if query is not None and query.columns is None and key is not None:
            query = query.module
            attention = _parent_of(block, query)
            if attention is None or not any(c is key for c in attention.children()):
                return None
            width = linear_of(query).out_features
        elif (fused := self._fused(block)) is not None:
            attention, query, width = fused
            key, query_columns, key_columns = query, slice(0, width), slice(width, 2 * width)
        else:
            return None
        head_dim = self.head_dim(attention, width)
        if head_dim is None:
            return None
        scaling = next((v for a in self.scaling_attributes if is_real(v := getattr(attention, a, None))), None)
        return AttentionParts(
            attention=attention,
            query=query,
            key=key,
            query_columns=query_columns,
            key_columns=key_columns,
            head_dim=head_dim,
            scaling=float(scaling) if scaling is not None else head_dim**-0.5,
            argument_positions=_argument_positions(attention, self.argument_names()),
            bias_modules=tuple(c for c in attention.children() if is_relative_position_bias(c)),
        )


def _parent_of(block: nn.Module, child: nn.Module) -> Optional[nn.Module]:
    """The module of `block` that holds `child` as a direct child (the attention module of a projection)."""
    return next((m for m in block.modules() if any(c is child for c in m.children())), None)


def _key_value_projections(layout: AttentionLayout, block: nn.Module) -> KeyValueParts | str:
    key = layout.find_projection(block, layout.key_names)
    value = layout.find_projection(block, layout.value_names)
    if key is not None and value is not None:
        attention = _parent_of(block, key)
        if attention is None or not any(c is value for c in attention.children()):
            return "its key and value projections are not children of one attention module"
        width = linear_of(key).out_features
    elif (fused := layout._fused(block)) is not None:
        attention, key, width = fused
        value = key
    else:
        return (
            f"no key / value projections named {layout.key_names} / {layout.value_names} or fused "
            f"{layout.fused_qkv_names or '(none)'}"
        )
    names = _positional_names(attention)
    head_dim = layout.head_dim(attention, width)
    if head_dim is None or not names:
        return "its head size or its input argument cannot be read"
    return KeyValueParts(attention, names[0], key, value, width, head_dim)


def _key_value_parts(layout: AttentionLayout, block: nn.Module) -> KeyValueParts | str:
    if (transformed := layout.transformed_qk(block)) is not None:
        return f"its keys are transformed by `{transformed}` after the projection"
    parts = _key_value_projections(layout, block)
    if isinstance(parts, str):
        return parts
    if any(is_relative_position_bias(c) for c in parts.attention.children()):
        return "it computes a relative position bias for its own token count inside the attention"
    if layout.rotary_argument and layout.rotary_argument in inspect.signature(parts.attention.forward).parameters:
        return f"its keys get a rotary position embedding (`{layout.rotary_argument}`) sized to the tokens"
    return parts


def _positional_names(module: nn.Module) -> list[str]:
    """The names of `module.forward`'s positional parameters, in order."""
    try:
        return [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return []


def _argument_positions(module: nn.Module, names: tuple[str, ...]) -> dict[str, Optional[int]]:
    """Positional index (in a forward hook's `args`) of each named parameter of `module.forward`, None if absent."""
    parameters = _positional_names(module)
    return {name: parameters.index(name) if name in parameters else None for name in names}


DEFAULT_ATTENTION = AttentionLayout()
