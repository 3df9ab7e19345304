# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The per-block state and update of Gated Prompt Tuning (docs/methods.md §2).

For the prompted blocks s..e of an adapter:
- block s inserts `Dropout(P)` after the prefix tokens (P is the only prompt parameter: VPT-shallow);
- blocks s..e-1 gate the prompt update: Z_P = g * Block(X)_P + (1 - g) * X_P with g = sigmoid(gamma);
- block e has no gate and removes the prompts;
- every prompted block divides its attention logits by a temperature tau, applied as a scale on the query
  projection's output, which is identical to softmax(QK^T / (sqrt(d) tau)) and keeps SDPA / flash attention.

tau is kept in its `temperature_range` by projection (projected gradient descent, as in the paper), done where no
autograd graph can hold the parameter: in place right after each optimizer step that updates it, and out of place
everywhere it is read (the forward, `state_dict`, `gate_report`). Nothing writes into tau between a forward and its
backward, so a loss of two forwards, an eval forward, `save_pretrained` or `gate_report` inside a training step all
leave the gradients as they are, in eager mode and under `torch.compile` alike.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Optional

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..prompting.prompt_layer import BlockRole, scalar_parameter
from ..vit.attention import QueryProjection
from ..vit.tokens import replace_prompts
from ..vpt.layer import VisualPromptBlock
from .config import GatedPromptConfig


class _DivideByTemperature(torch.autograd.Function):
    """`query / tau` that saves its *output* for backward instead of its input.

    Plain division would keep the unscaled query alive for tau's gradient. The scaled query is what attention saves
    anyway, so reusing it makes the temperature free in activation memory: d(q / tau)/d tau = -(q / tau) / tau.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        scaled = query / temperature
        ctx.save_for_backward(scaled, temperature)
        return scaled

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled, temperature = ctx.saved_tensors
        if temperature.dim() == 0:
            return grad / temperature, -(grad * scaled).sum() / temperature
        # One temperature per sample ([B, 1, 1], a mixed-adapter batch): reduce over everything else.
        return grad / temperature, -(grad * scaled).sum_to_size(temperature.shape) / temperature


class _ProjectToRange(torch.autograd.Function):
    """clamp(tau, low, high) with the identity as its gradient.

    Projected gradient descent evaluates the gradient at the projected point and applies it to the parameter; the
    optimizer-step hook then projects the parameter again. Between steps the stored tau is already in range, so this
    is the identity in value too; it only matters when something else moved tau (a manual update, an optimizer that
    is not a `torch.optim.Optimizer`), where a plain clamp would zero tau's gradient and freeze it at the boundary.
    """

    @staticmethod
    def forward(ctx: Any, temperature: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return temperature.clamp(low, high)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


# Blocks whose temperatures the optimizer-step hook projects. Weak: a deleted model leaves no trace here.
_BLOCKS_WITH_TEMPERATURES: weakref.WeakSet[GatedPromptBlock] = weakref.WeakSet()
_STEP_HOOK: list[Any] = []


def _project_after_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """The projection step of projected gradient descent, for the temperatures `optimizer` just updated."""
    if not _BLOCKS_WITH_TEMPERATURES:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for block in list(_BLOCKS_WITH_TEMPERATURES):
        names = tuple(n for n, p in block.gpt_temperatures.items() if id(p) in stepped)
        if names:
            block.project_temperatures(names)


def _install_step_hook() -> None:
    # torch has no per-parameter post-step hook, so this is a global optimizer hook. It is installed only once a GPT
    # adapter with learned temperatures exists, and it touches nothing but those temperatures.
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_post_hook(_project_after_optimizer_step))


def _save_projected(module: GatedPromptBlock, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """`state_dict` holds each temperature projected into its range (a copy; the parameter is not written)."""
    for name, param in module.gpt_temperatures.items():
        key = f"{prefix}gpt_temperatures.{name}"
        if key in state_dict:
            projected = module.projected_temperature(name).detach()
            if not torch.equal(projected, param.detach()):
                state_dict[key] = projected


class GatedPromptBlock(VisualPromptBlock):
    """VPT-shallow's block with GPT's gate on the prompt update and its attention temperature."""

    prompt_parameter_name = "gpt_prompts"
    adapter_layer_names = ("gpt_prompts", "gpt_gate_logits", "gpt_temperatures")

    def __init__(
        self,
        base_layer: nn.Module,
        num_prefix_tokens: int,
        hidden_size: int,
        patch_size: int,
        query_projection: Optional[QueryProjection],
    ) -> None:
        super().__init__(base_layer, num_prefix_tokens, hidden_size, patch_size)
        self.gpt_gate_logits = nn.ParameterDict()
        self.gpt_temperatures = nn.ParameterDict()
        # For a fused qkv projection (timm), the temperature divides the query's columns of its output only.
        self.query_columns = None if query_projection is None else query_projection.columns
        if query_projection is not None:
            self._hook_handles.append(query_projection.module.register_forward_hook(self._scale_query))
        # A saved adapter never holds a temperature outside its range, whatever moved the parameter.
        self.register_state_dict_post_hook(_save_projected)

    def deep_prompts(self, config: GatedPromptConfig) -> bool:
        return False  # GPT's prompts are VPT-shallow's: inserted once, then updated by the (gated) blocks

    def _create_method_parameters(self, adapter_name: str, role: BlockRole) -> None:
        config: GatedPromptConfig = role.config
        device = self._base_device()
        # Only parameters that can receive a gradient are created: there is no gate after the last prompted block.
        if config.use_gates and not role.last:
            self.gpt_gate_logits[adapter_name] = scalar_parameter(-config.gate_init, device)
        if config.learn_temperature:
            self.gpt_temperatures[adapter_name] = scalar_parameter(1.0, device)
            _BLOCKS_WITH_TEMPERATURES.add(self)
            _install_step_hook()

    def __setstate__(self, state: dict) -> None:
        # A copy (`copy.deepcopy`, unpickling) is a new block with the same temperatures: the optimizer-step hook must
        # project them too.
        super().__setstate__(state)
        if len(self.gpt_temperatures):
            _BLOCKS_WITH_TEMPERATURES.add(self)
            _install_step_hook()

    def block_report(self, adapter: str) -> dict[str, float]:
        report = {}
        if adapter in self.gpt_gate_logits:
            report["gate"] = torch.sigmoid(self.gpt_gate_logits[adapter].detach().float()).item()
            report["gate_prior"] = 1.0 / (1.0 + math.exp(self.prompt_roles[adapter].config.gate_init))
        if adapter in self.gpt_temperatures:
            report["temperature"] = self.projected_temperature(adapter).detach().float().item()
        return report

    def projected_temperature(self, adapter: str) -> torch.Tensor:
        """tau of `adapter` projected into its config's `temperature_range`: what the forward uses (out of place; its
        gradient is tau's)."""
        low, high = self.prompt_roles[adapter].config.temperature_range
        if not torch.is_grad_enabled():
            return self.gpt_temperatures[adapter].clamp(low, high)  # the same value, without the Function's overhead
        return _ProjectToRange.apply(self.gpt_temperatures[adapter], low, high)

    def project_temperatures(self, adapters: Optional[tuple[str, ...]] = None) -> None:
        """Clamp the stored temperatures of `adapters` (default: all) in place to their `temperature_range`: the
        projection step of projected gradient descent. Runs after each optimizer step that updated them (a global
        optimizer hook), never during a forward or a read, where autograd may still hold the parameter."""
        with torch.no_grad():
            for name in self.gpt_temperatures.keys() if adapters is None else adapters:
                low, high = self.prompt_roles[name].config.temperature_range
                self.gpt_temperatures[name].clamp_(low, high)

    def _scale_query(self, module: nn.Module, args: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
        adapter = self._active_prompt_adapter()
        if adapter is None or adapter not in self.gpt_temperatures:
            return None
        temperature = self.routed_scalar(self.gpt_temperatures, adapter, output.dim(), self.projected_temperature)
        temperature = temperature.to(output.dtype)
        columns = self.query_columns
        query = output if columns is None else output[..., columns]
        if not torch.is_grad_enabled():
            scaled = query / temperature  # the same division; nothing is saved, so the Function is pure overhead
        else:
            scaled = _DivideByTemperature.apply(query, temperature)
        if columns is None:
            return scaled
        return torch.cat((output[..., : columns.start], scaled, output[..., columns.stop :]), dim=-1)

    def _update_prompts(
        self, adapter: str, role: BlockRole, block_input: torch.Tensor, block_output: torch.Tensor
    ) -> torch.Tensor:
        if adapter not in self.gpt_gate_logits:
            return block_output
        start, stop = self.num_prefix_tokens, self.num_prefix_tokens + role.config.num_prompts
        gate = torch.sigmoid(self.routed_scalar(self.gpt_gate_logits, adapter, block_output.dim()))
        gate = gate.to(block_output.dtype)
        # lerp is exact at both ends: gate 0 keeps the input prompts, gate 1 takes the block's output. The block's
        # output is never written in place: a hook on the inner block may hold it.
        before, after = block_input[:, start:stop], block_output[:, start:stop]
        if torch.is_grad_enabled():
            # lerp saves its inputs for backward: contiguous copies of the N_p slots, not views that would keep the
            # whole sequences alive. (Without autograd the views are read directly: the same elementwise values.)
            before, after = before.contiguous(), after.contiguous()
        mixed = torch.lerp(before, after, gate)
        return replace_prompts(block_output, mixed, start)
