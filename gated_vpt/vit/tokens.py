# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Where prompts sit in the token sequence: `[prefix ; prompts ; patches]`, prompts in `[start, start + n)`.

`start` is the number of prefix tokens (CLS, distillation token, registers). Pure tensor functions, no state: the
block wrapper, the tuner's hidden-state hooks and the family hooks of the registry all use them.
"""

from __future__ import annotations

from typing import Any

import torch


def insert_prompts(hidden_states: torch.Tensor, prompts: torch.Tensor, start: int) -> torch.Tensor:
    return torch.cat([hidden_states[:, :start], prompts, hidden_states[:, start:]], dim=1)


def remove_prompts(hidden_states: torch.Tensor, start: int, num_prompts: int) -> torch.Tensor:
    return torch.cat([hidden_states[:, :start], hidden_states[:, start + num_prompts :]], dim=1)


def replace_prompts(hidden_states: torch.Tensor, prompts: torch.Tensor, start: int) -> torch.Tensor:
    return torch.cat([hidden_states[:, :start], prompts, hidden_states[:, start + prompts.shape[1] :]], dim=1)


def _insert(tensor: torch.Tensor, dim: int, start: int, filler: torch.Tensor) -> torch.Tensor:
    return torch.cat([tensor.narrow(dim, 0, start), filler, tensor.narrow(dim, start, tensor.shape[dim] - start)], dim)


def pad_bias_for_prompts(bias: torch.Tensor, free_len: int, start: int, num_prompts: int) -> torch.Tensor:
    """Pad a position bias built for the prompt-free sequence (`[..., T, T]`) with zeros: prompts get no bias, in
    their rows and in their columns."""
    for dim in (bias.dim() - 2, bias.dim() - 1):
        if bias.shape[dim] == free_len:
            shape = list(bias.shape)
            shape[dim] = num_prompts
            bias = _insert(bias, dim, start, bias.new_zeros(shape))
    return bias


def pad_mask_for_prompts(mask: torch.Tensor, free_len: int, start: int, num_prompts: int) -> torch.Tensor:
    """Pad an attention mask built for the prompt-free sequence (`[..., T, T]` or `[..., 1, T]`).

    Prompt *columns* mean "attend" (True for boolean masks, 0 for additive ones): every token may attend the prompts.
    Prompt *rows* copy the row of the first patch token: a mask built from padding (NaFlex images, variable patch
    counts) masks the same keys for every real query, so the prompts then attend exactly what a real token attends,
    and never a padded patch."""
    columns, rows = mask.dim() - 1, mask.dim() - 2
    if mask.shape[columns] == free_len:
        shape = list(mask.shape)
        shape[columns] = num_prompts
        mask = _insert(mask, columns, start, mask.new_full(shape, True if mask.dtype == torch.bool else 0))
    if mask.shape[rows] == free_len:
        shape = list(mask.shape)
        shape[rows] = num_prompts
        mask = _insert(mask, rows, start, mask.narrow(rows, min(start, free_len - 1), 1).expand(shape))
    return mask


def pad_for_prompts(value: Any, free_len: int, start: int, num_prompts: int) -> Any:
    """A block argument built for the prompt-free sequence (`[..., T, T]` or `[..., 1, T]`), padded for the prompt
    slots: a rotary `(cos, sin)` pair over all T tokens as `pad_rotary_for_prompts`, a boolean mask as
    `pad_mask_for_prompts`, an additive tensor (a bias, or an additive mask, which cannot be
    told apart: BEiT folds its position bias into `attention_mask`) with zeros. Other values are returned as is."""
    if _is_rotary_pair(value, free_len):
        return pad_rotary_for_prompts(value, start, num_prompts)
    if not torch.is_tensor(value) or value.dim() < 3:
        return value
    if value.dtype == torch.bool:
        return pad_mask_for_prompts(value, free_len, start, num_prompts)
    return pad_bias_for_prompts(value, free_len, start, num_prompts)


def _is_rotary_pair(value: Any, free_len: int) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(torch.is_tensor(v) and v.dim() >= 2 for v in value)
        and value[0].shape == value[1].shape
        and value[0].shape[-2] == free_len
    )


def pad_rotary_for_prompts(cos_sin: Any, start: int, num_prompts: int) -> Any:
    """A rotary embedding `(cos, sin)` that covers every token of the prompt-free sequence (MLCD's covers CLS too),
    with the identity rotation (cos 1, sin 0) for the prompt slots: prompts get no position, the other tokens keep
    theirs."""
    cos, sin = cos_sin
    shape = list(cos.shape)
    shape[-2] = num_prompts
    padded = (
        _insert(cos, cos.dim() - 2, start, cos.new_ones(shape)),
        _insert(sin, sin.dim() - 2, start, sin.new_zeros(shape)),
    )
    return type(cos_sin)(padded)


def strip_prompt_states(states: Any, free_len: int, start: int, num_prompts: int) -> Any:
    """A tuple of hidden states with the prompt slots removed from every `[B, free_len + num_prompts, D]` entry."""
    if not isinstance(states, (tuple, list)):
        return states
    return tuple(
        remove_prompts(h, start, num_prompts)
        if torch.is_tensor(h) and h.dim() == 3 and h.shape[1] == free_len + num_prompts
        else h
        for h in states
    )
