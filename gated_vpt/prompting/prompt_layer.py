# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The block wrapper shared by all prompt-tuning methods.

Prompts travel *inside* the token sequence, as `[prefix ; prompts ; patches]`, between the first and the last
prompted block of the active adapter. Each wrapped block:

1. if it is the adapter's first block, inserts the prompts after the prefix tokens; otherwise lets the method
   refresh the prompt slots of its input (e.g. CDC's aggregation with the block's own prompts);
2. pads sequence-sized attention masks / biases that the model built for the prompt-free sequence;
3. runs the original block (through its own `__call__`, so activation checkpointing, output-recording hooks and
   SDPA all stay as transformers set them up);
4. lets the method update the prompt slots of the output (e.g. GPT's gate);
5. if it is the adapter's last block, removes the prompt slots again.

Everything per adapter lives in `ParameterDict`s named in `adapter_layer_names`, so PEFT's save/load, adapter
switching and deletion work unchanged. Whatever a hook inside the wrapped block reads must be persistent state
(parameters, the active adapter): activation checkpointing re-runs the block during backward, after this wrapper
has returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..vit.tokens import insert_prompts, pad_for_prompts, remove_prompts
from .prompt_config import PromptConfigBase
from .routing import BatchRoute, active_call


class MergeNotSupportedError(RuntimeError):
    """Prompt tuning adds tokens; it has no weight delta that could be merged into the backbone."""


MERGE_MESSAGE = (
    "Prompt adapters cannot be merged into the backbone: prompts are extra tokens in the sequence (and GPT's gates "
    "and temperatures act on them), not a change of weights. Keep the PeftModel for inference, or call `unload()` "
    "to get the untouched base model back."
)


@dataclasses.dataclass(frozen=True)
class BlockRole:
    """What one prompted block does for one adapter."""

    index: int  # position of the block in the stack
    first: bool  # inserts the prompts
    last: bool  # removes them
    config: PromptConfigBase


def scalar_parameter(value: float, device: Optional[torch.device]) -> nn.Parameter:
    return nn.Parameter(torch.full((), float(value), device=device, dtype=torch.float32))


class PromptBlock(nn.Module, BaseTunerLayer):
    """Wraps one transformer block; subclasses define what a method does to the prompt slots.

    Subclass hooks (all receive the active adapter's name and `BlockRole`):
        `_entry_prompts`: the `[B, N_p, D]` prompts the first block inserts.
        `_refresh_prompts`: the block input with its prompt slots updated (non-first blocks).
        `_before_block`: run right before the wrapped block (e.g. CDC's per-call scratch).
        `_update_prompts`: the block output with its prompt slots updated.
        `update_layer`: create the adapter's parameters for this block.
    """

    other_param_names = ("prompt_roles",)
    # the family's `BackboneFamily.block_arguments`, set by the tuner when it wraps the block
    block_arguments: Optional[Callable[[tuple, dict, torch.Tensor, int, int], tuple[tuple, dict]]] = None

    def __init__(self, base_layer: nn.Module, num_prefix_tokens: int, hidden_size: int, patch_size: int) -> None:
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.num_prefix_tokens = num_prefix_tokens
        self.hidden_size = hidden_size
        self.patch_size = patch_size
        self.prompt_roles: dict[str, BlockRole] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self._hook_handles: list[Any] = []

    # -- adapter bookkeeping ---------------------------------------------------------------------------------------

    def _base_device(self) -> Optional[torch.device]:
        param = next(self.base_layer.parameters(), None)
        return None if param is None else param.device

    def _batch_route(self) -> Optional[BatchRoute]:
        """The route of the mixed-adapter batch this context is running through this block, if any."""
        call = active_call()
        return call.route if call is not None and id(self) in call.block_ids else None

    def _active_prompt_adapter(self) -> Optional[str]:
        """The active adapter if it prompts this block and adapters are enabled, else None."""
        if self._disable_adapters:
            return None
        route = self._batch_route()
        if route is not None:
            # One layout per forward: the group's adapters all prompt the same blocks in the same slots.
            return route.adapters[0] if route.adapters and route.adapters[0] in self.prompt_roles else None
        for name in self.active_adapters:
            if name in self.prompt_roles:
                return name
        return None

    def routed(
        self, params: nn.ParameterDict, adapter: str, read: Optional[Callable[[str], torch.Tensor]] = None
    ) -> torch.Tensor:
        """`params[adapter]` (or `read(adapter)`, a value derived from it); in a mixed batch of several adapters,
        every sample's own adapter's value, stacked along a new leading batch dimension (the gather is
        differentiable, like indexing)."""
        read = params.__getitem__ if read is None else read
        route = self._batch_route()
        if route is None or route.slots is None:
            return read(adapter)
        return torch.stack([read(name) for name in route.adapters]).index_select(0, route.slots)

    def prompt_tokens(
        self, params: nn.ParameterDict, adapter: str, role: BlockRole, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """The `[B, N_p, D]` prompts `params` holds for `adapter` (every sample's own in a mixed batch), in the
        sequence's dtype, with the config's prompt dropout in training (a different mask per sample)."""
        prompts = self.routed(params, adapter).to(hidden_states.dtype)
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
        return nn.functional.dropout(prompts, p=role.config.prompt_dropout, training=self.training)

    def routed_scalar(
        self,
        params: nn.ParameterDict,
        adapter: str,
        ndim: int,
        read: Optional[Callable[[str], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """A per-block scalar from `routed`, shaped to broadcast against `ndim`-dimensional batch-first tensors:
        0-d for one adapter, ``[B, 1, ...]`` in a mixed batch."""
        value = self.routed(params, adapter, read)
        return value if value.dim() == 0 else value.view(-1, *([1] * (ndim - 1)))

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def unmerge(self) -> None:
        raise MergeNotSupportedError(MERGE_MESSAGE)

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool = False, adapter_names: Optional[list[str]] = None
    ) -> nn.Module:
        """Called by PEFT's `unload()`: detach our hooks from the original block and hand it back untouched."""
        if merge:
            raise MergeNotSupportedError(MERGE_MESSAGE)
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()
        return self.base_layer

    def block_report(self, adapter: str) -> dict[str, float]:
        """Learned per-block scalars of `adapter` for `gated_vpt.gate_report` (method-specific; none by default)."""
        return {}

    # -- method hooks (overridden by subclasses) ------------------------------------------------------------------

    def _entry_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _refresh_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def _before_block(self, adapter: str, role: BlockRole) -> None:
        return None

    def _update_prompts(
        self, adapter: str, role: BlockRole, block_input: torch.Tensor, block_output: torch.Tensor
    ) -> torch.Tensor:
        return block_output

    # -- forward ------------------------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        adapter = self._active_prompt_adapter()
        if adapter is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        role = self.prompt_roles[adapter]
        start, num_prompts = self.num_prefix_tokens, role.config.num_prompts

        if role.first:
            free_len = hidden_states.shape[1]
            hidden_states = insert_prompts(hidden_states, self._entry_prompts(adapter, role, hidden_states), start)
        else:
            free_len = hidden_states.shape[1] - num_prompts
            hidden_states = self._refresh_prompts(adapter, role, hidden_states)

        self._before_block(adapter, role)
        args = tuple(pad_for_prompts(a, free_len, start, num_prompts) for a in args)
        kwargs = {k: pad_for_prompts(v, free_len, start, num_prompts) for k, v in kwargs.items()}
        if self.block_arguments is not None:
            args, kwargs = self.block_arguments(args, kwargs, hidden_states, start, num_prompts)
        outputs = self.base_layer(hidden_states, *args, **kwargs)

        # transformers 5 ViT blocks return a tensor; some families (BEiT, Data2Vec) still return a tuple.
        is_tuple = isinstance(outputs, tuple)
        block_output = outputs[0] if is_tuple else outputs
        block_output = self._update_prompts(adapter, role, hidden_states, block_output)
        if role.last:
            block_output = remove_prompts(block_output, start, num_prompts)
        return (block_output, *outputs[1:]) if is_tuple else block_output
