# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The VPT block wrapper: per-block prompt parameters, the base of every prompt method's block.

`VisualPromptBlock` owns the prompt tokens: it creates them (VPT's init), inserts them at the adapter's first block
and, for deep prompts, replaces the prompt slots with the block's own prompts at every later block. A method on top
of VPT subclasses it and changes only what differs:

- `prompt_parameter_name`: the name of its prompt `ParameterDict` (its own prefix, so PEFT marks it trainable and
  saved files keep the method's names);
- `deep_prompts(config)`: whether every prompted block owns prompts (GPT: never, CDC: always, VPT: `config.deep`);
- `_create_method_parameters`: the method's other per-block parameters (created after the prompts, so a method
  with its extras switched off draws the same random numbers as VPT and gives the same outputs);
- `_refresh_prompts` / `_update_prompts` / `own_prompts`: how the prompt slots are computed (CDC aggregates,
  GPT gates, a Fourier method transforms its own prompts).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..prompting.prompt_config import PromptConfigBase
from ..prompting.prompt_layer import BlockRole, PromptBlock
from ..vit.tokens import replace_prompts


def xavier_prompt_bound(patch_size: int, hidden_size: int) -> float:
    """VPT's prompt init bound v = sqrt(6 / (3 * p^2 + D))."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + hidden_size))


def new_prompt_parameter(
    num_prompts: int, hidden_size: int, patch_size: int, init: str, device: Optional[torch.device]
) -> nn.Parameter:
    """`[num_prompts, hidden_size]` float32 prompts: VPT's uniform(-v, v) (`"xavier"`) or normal(0, 0.02)."""
    data = torch.empty(num_prompts, hidden_size, device=device, dtype=torch.float32)
    if data.device.type != "meta":
        if init == "xavier":
            bound = xavier_prompt_bound(patch_size, hidden_size)
            nn.init.uniform_(data, -bound, bound)
        else:
            nn.init.normal_(data, std=0.02)
    return nn.Parameter(data)


class VisualPromptBlock(PromptBlock):
    """One prompted block of VPT (shallow or deep); subclassed by the methods that build on VPT."""

    prompt_parameter_name = "vpt_prompts"
    adapter_layer_names = ("vpt_prompts",)

    def __init__(self, base_layer: nn.Module, num_prefix_tokens: int, hidden_size: int, patch_size: int) -> None:
        super().__init__(base_layer, num_prefix_tokens, hidden_size, patch_size)
        setattr(self, self.prompt_parameter_name, nn.ParameterDict())

    @property
    def prompts(self) -> nn.ParameterDict:
        """The per-adapter prompt parameters of this block (`[N_p, D]` each), for the adapters that own prompts here."""
        return getattr(self, self.prompt_parameter_name)

    def deep_prompts(self, config: PromptConfigBase) -> bool:
        return bool(config.deep)

    def update_layer(self, adapter_name: str, role: BlockRole) -> None:
        # Only parameters that can receive a gradient are created (DDP's unused-parameter check): shallow prompts
        # live in the inserting block only.
        if role.first or self.deep_prompts(role.config):
            config = role.config
            self.prompts[adapter_name] = new_prompt_parameter(
                config.num_prompts, self.hidden_size, self.patch_size, config.prompt_init, self._base_device()
            )
        self._create_method_parameters(adapter_name, role)
        self.prompt_roles[adapter_name] = role
        self.set_adapter(self.active_adapters)

    def _create_method_parameters(self, adapter_name: str, role: BlockRole) -> None:
        """A method's own per-block parameters besides the prompts (none for VPT)."""

    def own_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        """This block's `[B, N_p, D]` prompts for `adapter` (every sample's own in a mixed batch), in the sequence's
        dtype, with prompt dropout in training."""
        return self.prompt_tokens(self.prompts, adapter, role, hidden_states)

    def _entry_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        if role.config.needs_data_init:
            raise RuntimeError(
                f"Adapter {adapter!r} asks for data-driven prompts (`prompt_init={role.config.prompt_init!r}`), and "
                "they have not been set yet: call `gated_vpt.initialize_prompts(model, train_batches)` once before "
                "training (it runs the prompt-free model over a few batches and sets every prompt from them)."
            )
        return self.own_prompts(adapter, role, hidden_states)

    def _refresh_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        if adapter not in self.prompts:  # shallow: the prompts the previous block wrote travel on
            return hidden_states
        return replace_prompts(hidden_states, self.own_prompts(adapter, role, hidden_states), self.num_prefix_tokens)
