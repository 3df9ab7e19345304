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


def _pad_dim(tensor: torch.Tensor, dim: int, start: int, num_prompts: int) -> torch.Tensor:
    # Prompt rows/columns of a mask or bias mean "attend, no bias": True for boolean masks, 0 for additive ones.
    shape = list(tensor.shape)
    shape[dim] = num_prompts
    filler = tensor.new_full(shape, True if tensor.dtype == torch.bool else 0)
    return torch.cat([tensor.narrow(dim, 0, start), filler, tensor.narrow(dim, start, tensor.shape[dim] - start)], dim)


def pad_for_prompts(value: Any, free_len: int, start: int, num_prompts: int) -> Any:
    """Pad an attention mask or bias built for the prompt-free sequence (`[..., T, T]` or `[..., 1, T]`)."""
    if not torch.is_tensor(value) or value.dim() < 3:
        return value
    for dim in (value.dim() - 2, value.dim() - 1):
        if value.shape[dim] == free_len:
            value = _pad_dim(value, dim, start, num_prompts)
    return value


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
