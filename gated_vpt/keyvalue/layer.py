# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The E²VPT block: VPT-deep's block whose attention also attends to m learned key-value rows.

The attention computes keys and values from its input tokens and leaves the attention kernel to the backbone (SDPA,
flash, eager), so the key-value prompts enter as m extra *tokens* of the attention alone: a pre-hook on the attention
module appends m placeholder rows to its input (and pads any additive mask for them), hooks on the key and value
projections (or the fused `qkv`) replace those rows' keys and values with the prompts, and a hook on the attention's
output drops the m rows again. The placeholders' queries are computed and thrown away (m of T + m rows); everything
else is exactly what the block computed before, with m more keys in every softmax.

The hooks are installed with the first adapter that has key-value prompts in this block; they read only parameters
and the active adapter, so activation checkpointing can re-run them.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ..prompting.prompt_layer import BlockRole
from ..vit.attention import AttentionLayout, KeyValueParts
from ..vit.tokens import pad_for_prompts
from ..vpt.layer import VisualPromptBlock
from .config import KeyValuePromptConfig


def _key_value_init(count: int, width: int, head_dim: int, device: Optional[torch.device]) -> nn.Parameter:
    """U(-sqrt(6 / (m d_h)), +sqrt(6 / (m d_h))): Kaiming-uniform with fan_in m * d_h, as the official code."""
    data = torch.empty(count, width, device=device, dtype=torch.float32)
    if data.device.type != "meta":
        bound = math.sqrt(6.0 / (count * head_dim))
        nn.init.uniform_(data, -bound, bound)
    return nn.Parameter(data)


class KeyValuePromptBlock(VisualPromptBlock):
    """One prompted block of E²VPT (deep visual prompts, key-value prompts in its attention)."""

    prompt_parameter_name = "e2vpt_prompts"
    adapter_layer_names = ("e2vpt_prompts", "e2vpt_key_prompts", "e2vpt_value_prompts")

    def __init__(
        self,
        base_layer: nn.Module,
        num_prefix_tokens: int,
        hidden_size: int,
        patch_size: int,
        key_value_parts: Optional[KeyValueParts] = None,
        attention: Optional[AttentionLayout] = None,
    ) -> None:
        super().__init__(base_layer, num_prefix_tokens, hidden_size, patch_size)
        self.e2vpt_key_prompts = nn.ParameterDict()
        self.e2vpt_value_prompts = nn.ParameterDict()
        self.key_value_parts = key_value_parts
        self.mask_arguments = () if attention is None else attention.logit_term_arguments
        self._kv_hooked = False

    def deep_prompts(self, config: KeyValuePromptConfig) -> bool:
        return True

    def _create_method_parameters(self, adapter_name: str, role: BlockRole) -> None:
        config: KeyValuePromptConfig = role.config
        count = config.num_key_value_prompts
        if count == 0:
            return
        parts, device = self.key_value_parts, self._base_device()
        self.e2vpt_key_prompts[adapter_name] = _key_value_init(count, parts.width, parts.head_dim, device)
        if not config.share_key_value:
            self.e2vpt_value_prompts[adapter_name] = _key_value_init(count, parts.width, parts.head_dim, device)
        if not self._kv_hooked:
            self._install_key_value_hooks()
            self._kv_hooked = True

    def _install_key_value_hooks(self) -> None:
        parts = self.key_value_parts
        handles = [
            parts.attention.register_forward_pre_hook(self._append_placeholders, with_kwargs=True),
            parts.attention.register_forward_hook(self._drop_placeholders),
        ]
        if parts.key is parts.value:  # one fused qkv
            handles.append(parts.key.register_forward_hook(self._set_fused_key_values))
        else:
            handles.append(parts.key.register_forward_hook(self._set_keys))
            handles.append(parts.value.register_forward_hook(self._set_values))
        self._hook_handles.extend(handles)

    # -- the hooks --------------------------------------------------------------------------------------------------

    def _key_value_count(self) -> tuple[Optional[str], int]:
        adapter = self._active_prompt_adapter()
        if adapter is None or adapter not in self.e2vpt_key_prompts:
            return None, 0
        return adapter, self.prompt_roles[adapter].config.num_key_value_prompts

    def _rows(self, adapter: str, value: bool, like: torch.Tensor) -> torch.Tensor:
        """`[B, m, D]` key (or value) prompts of every sample's adapter, in `like`'s dtype."""
        params = self.e2vpt_value_prompts if value and adapter in self.e2vpt_value_prompts else self.e2vpt_key_prompts
        rows = self.routed(params, adapter).to(like.dtype)
        return rows.expand(like.shape[0], -1, -1) if rows.dim() == 2 else rows

    def _append_placeholders(self, module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        adapter, count = self._key_value_count()
        if adapter is None:
            return None
        if args:
            hidden_states, rest = args[0], args[1:]
        else:
            hidden_states, rest = kwargs.pop(self.key_value_parts.input_name), ()
        length = hidden_states.shape[1]
        padded = torch.cat(
            (hidden_states, hidden_states.new_zeros(hidden_states.shape[0], count, hidden_states.shape[2])), 1
        )
        # additive masks / biases sized to the sequence get zero for the placeholders (appended at the end)
        rest = tuple(pad_for_prompts(a, length, length, count) for a in rest)
        kwargs = {
            k: pad_for_prompts(v, length, length, count) if k in self.mask_arguments else v for k, v in kwargs.items()
        }
        if args:
            return (padded, *rest), kwargs
        kwargs[self.key_value_parts.input_name] = padded
        return rest, kwargs

    def _replace_tail(self, output: torch.Tensor, tail: torch.Tensor, count: int) -> torch.Tensor:
        return torch.cat((output[:, :-count], tail), dim=1)

    def _set_keys(self, module: nn.Module, args: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
        adapter, count = self._key_value_count()
        return None if adapter is None else self._replace_tail(output, self._rows(adapter, False, output), count)

    def _set_values(self, module: nn.Module, args: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
        adapter, count = self._key_value_count()
        return None if adapter is None else self._replace_tail(output, self._rows(adapter, True, output), count)

    def _set_fused_key_values(self, module: nn.Module, args: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
        adapter, count = self._key_value_count()
        if adapter is None:
            return None
        width = self.key_value_parts.width
        queries = output[:, -count:, :width]  # the placeholders' queries: computed, then thrown away with their rows
        tail = torch.cat((queries, self._rows(adapter, False, output), self._rows(adapter, True, output)), dim=-1)
        return self._replace_tail(output, tail, count)

    def _drop_placeholders(self, module: nn.Module, args: Any, output: Any) -> Any:
        adapter, count = self._key_value_count()
        if adapter is None:
            return None
        if isinstance(output, tuple):
            return (output[0][:, :-count], *output[1:])
        return output[:, :-count]
