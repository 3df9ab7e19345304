# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The per-block state and updates of CDC prompt tuning (docs/methods.md §3, our reconstruction of iVPT).

For the prompted blocks s..e of an adapter (D = width, N_p = prompts, P_l in R^{N_p x D} owned by every block):

- block s inserts ``Dropout(P_s)`` after the prefix tokens;
- block l > s receives the previous block's output prompts Z_{l-1} in its prompt slots and replaces them with
  ``P^_l = alpha_l * Z_{l-1} + (1 - alpha_l) * Dropout(P_l)`` where, with cross-layer connection (CDC) and dynamic
  aggregation (DA), ``alpha_l = sigmoid(w_l^T [Z_{l-1}; Dropout(P_l)] + b_l)`` per sample and prompt token; with CDC
  but no DA ``alpha_l = sigmoid(b_l)``; without CDC ``alpha_l = 0`` (VPT-deep);
- attentive reinforcement (AR), in every prompted block (the backbone's final block only with
  `reinforce_final_block`): the CLS token's attention to the patch tokens (softmax over all keys of
  q_cls . k / sqrt(d_h), mean over heads) ranks them; ``lambda_l * mean(prompt outputs of block l)`` is added to the
  top ``ceil(rho * N_patches)`` of them at the block output. The selection carries no gradient.

How AR stays cheap and consistent with transformers:

- The CLS query row and the keys are taken from the block's *own* `q_proj` / `k_proj` outputs by forward hooks on
  those projections; whichever fires second computes the detached ``[B, H, T]`` CLS logits, so the full ``T x T``
  attention map is never built and SDPA (or flash attention) stays the attention implementation.
- Position terms the backbone puts on the attention logits are included, so the ranking is the CLS row of the
  attention the block really computes: an additive `attention_mask` / `relative_position_bias` passed to the attention
  module (BEiT's per-block and shared relative position biases, Data2Vec's shared one, a user's mask), the output of a
  relative-position-bias module inside it (Data2Vec's per-block bias) and the rotary embedding of the patch keys
  (`position_embeddings`, DINOv3). A forward pre-hook on the attention module captures them; only CLS rows are kept.
- The addition happens in a forward hook on the wrapped block registered with ``prepend=True``: it runs before the
  hooks transformers uses to record ``output_hidden_states``, so the recorded hidden state is exactly what the next
  block receives. transformers' activation checkpointing wraps the block's ``forward`` (not ``__call__``), so this
  hook runs once, outside the checkpoint; the capture hooks run inside it and are re-run by the backward recompute,
  which only rewrites small detached scratch tensors (cleared again before the block's next real forward).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Optional

import torch
from torch import nn

from ..prompting.prompt_layer import BlockRole, scalar_parameter
from ..prompting.routing import active_call
from ..vit.attention import DEFAULT_ATTENTION, AttentionLayout
from ..vit.tokens import replace_prompts
from ..vpt.layer import VisualPromptBlock
from .config import CDCPromptConfig


def num_reinforced(ratio: float, num_patches: int) -> int:
    """k = ceil(ratio * num_patches), robust to float round-off (0.3 * 10 is 3, not 4), at least 1."""
    return min(num_patches, max(1, math.ceil(ratio * num_patches - 1e-9)))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def cls_attention_logits(
    query_cls: torch.Tensor,
    keys: torch.Tensor,
    head_dim: int,
    scaling: float,
    rotary: Optional[tuple] = None,
    cls_index: int = 0,
) -> torch.Tensor:
    """q_cls . k * scaling per head: ``[B, H*d] x [B, T, H*d] -> [B, H, T]`` in float32. With `rotary` = (cos, sin)
    for the last ``cos.shape[-2]`` tokens, those keys are rotated first; the CLS query too when the rotary covers
    every token (MLCD's), else it is a prefix token without rotation (DINOv3's).

    A broadcast multiply and a sum over the head dimension: one pass over the keys, no ``T x T`` map. (A batched
    matrix product against a block-diagonal query matrix was measured slower on CPU: its output has only H columns.)"""
    batch, length, width = keys.shape
    heads = width // head_dim
    k = keys.float().reshape(batch, length, heads, head_dim).transpose(1, 2)  # [B, H, T, d], as the attention sees it
    query = query_cls.float().reshape(batch, heads, 1, head_dim)
    if rotary is not None:
        cos, sin = (t.float() for t in rotary)
        rotated = cos.shape[-2]
        k_prefix, k_rot = k.split((length - rotated, rotated), dim=-2)
        k = torch.cat((k_prefix, k_rot * cos + _rotate_half(k_rot) * sin), dim=-2)
        if rotated == length:
            cos_cls, sin_cls = cos[..., cls_index : cls_index + 1, :], sin[..., cls_index : cls_index + 1, :]
            query = query * cos_cls + _rotate_half(query) * sin_cls
    return (k * query).sum(-1) * scaling


@dataclasses.dataclass
class ARScratch:
    """What AR's hooks capture during one block forward, for `_reinforce` at its end."""

    query: Optional[torch.Tensor] = None
    keys: Optional[torch.Tensor] = None
    rotary: Optional[tuple] = None
    logits: Optional[torch.Tensor] = None
    terms: list[torch.Tensor] = dataclasses.field(default_factory=list)

    def clear(self) -> None:
        self.query = self.keys = self.rotary = self.logits = None
        self.terms = []


class CDCPromptBlock(VisualPromptBlock):
    """VPT-deep's block with CDC's cross-layer aggregation and attentive reinforcement."""

    prompt_parameter_name = "cdc_prompts"
    adapter_layer_names = ("cdc_prompts", "cdc_aggregation_weights", "cdc_aggregation_biases", "cdc_reinforce_scales")

    def __init__(
        self,
        base_layer: nn.Module,
        num_prefix_tokens: int,
        hidden_size: int,
        patch_size: int,
        cls_index: Optional[int] = None,
        final_block: bool = False,
        attention: AttentionLayout = DEFAULT_ATTENTION,
    ) -> None:
        super().__init__(base_layer, num_prefix_tokens, hidden_size, patch_size)
        self.attention_layout = attention
        self.final_block = final_block  # the backbone's last block: its output goes only to the head
        self.cdc_aggregation_weights = nn.ParameterDict()
        self.cdc_aggregation_biases = nn.ParameterDict()
        self.cdc_reinforce_scales = nn.ParameterDict()
        self.cls_index = cls_index
        self.head_dim = 0
        self.scaling = 1.0
        # AR scratch of the current inner call (see the module docstring), one per thread: concurrent forwards (a
        # server's threads) each capture their own tensors. A mixed-adapter call keeps its own.
        self._plain_scratch: dict[int, ARScratch] = {}
        self._ar_argument_positions: dict[str, Optional[int]] = {}
        self._fused_columns: Optional[tuple[slice, slice]] = None
        # AR's hooks are installed with the first adapter that reinforces in this block: a method pays only for what
        # it switches on (VPT-deep, or CDC without AR, runs no hook inside the attention).
        self._ar_hooked = False

    def _install_reinforcement_hooks(self) -> bool:
        """Hook the block's attention for AR; False when the block does not expose what AR needs (the tuner refuses
        such a config before any block is wrapped)."""
        parts = self.attention_layout.parts(self.base_layer)
        if self.cls_index is None or parts is None:
            return False
        self.head_dim, self.scaling = parts.head_dim, parts.scaling
        self._ar_argument_positions = parts.argument_positions
        handles = [parts.attention.register_forward_pre_hook(self._capture_attention_arguments, with_kwargs=True)]
        if parts.query_columns is not None:
            # one fused qkv projection (timm): its output holds both, so one hook computes the logits
            self._fused_columns = (parts.query_columns, parts.key_columns)
            handles.append(parts.query.register_forward_hook(self._capture_fused_qkv))
        else:
            handles += [
                parts.query.register_forward_hook(self._capture_query),
                parts.key.register_forward_hook(self._capture_keys),
            ]
        # A relative position bias computed inside the attention module (Data2Vec's per-block bias).
        handles += [module.register_forward_hook(self._capture_bias_output) for module in parts.bias_modules]
        handles.append(self.base_layer.register_forward_hook(self._reinforce, prepend=True))
        self._hook_handles.extend(handles)
        return True

    # -- parameters ---------------------------------------------------------------------------------------------

    def deep_prompts(self, config: CDCPromptConfig) -> bool:
        return True  # every prompted block owns P_l (VPT-deep), aggregated with the previous block's output

    def _create_method_parameters(self, adapter_name: str, role: BlockRole) -> None:
        config: CDCPromptConfig = role.config
        device = self._base_device()
        # Only parameters that can receive a gradient are created (DDP's unused-parameter check): the first prompted
        # block has nothing to aggregate with, and w_l exists only with dynamic aggregation. The final block's lambda
        # can be left out for heads that never read patch tokens (`reinforce_final_block=False`).
        if config.cross_layer and not role.first:
            self.cdc_aggregation_biases[adapter_name] = scalar_parameter(config.aggregation_bias_init, device)
            if config.dynamic_aggregation:
                self.cdc_aggregation_weights[adapter_name] = nn.Parameter(
                    torch.zeros(2 * self.hidden_size, device=device, dtype=torch.float32)
                )
        if config.attentive_reinforcement and (config.reinforce_final_block or not self.final_block):
            self.cdc_reinforce_scales[adapter_name] = scalar_parameter(config.reinforce_scale_init, device)
            if not self._ar_hooked:
                self._ar_hooked = self._install_reinforcement_hooks()

    # -- prompts: cross-layer aggregation (the first block inserts its own prompts, as VPT's) --------------------

    def aggregation_alpha(self, adapter: str, previous: torch.Tensor, own: torch.Tensor) -> Optional[torch.Tensor]:
        """alpha_l for the previous block's output prompts `previous` and this block's prompts `own` (both
        ``[B, N_p, D]``): ``[B, N_p, 1]`` with DA, a 0-d tensor without, None without CDC."""
        if adapter not in self.cdc_aggregation_biases:
            return None
        if adapter not in self.cdc_aggregation_weights:
            return torch.sigmoid(self.routed_scalar(self.cdc_aggregation_biases, adapter, own.dim())).to(own.dtype)
        bias = self.routed_scalar(self.cdc_aggregation_biases, adapter, own.dim() - 1)  # against [B, N_p] logits
        weight = self.routed(self.cdc_aggregation_weights, adapter)
        if weight.dim() == 2:  # [B, 2D]: one weight vector per sample (a mixed-adapter batch)
            weight = weight.unsqueeze(1)
        width = own.shape[-1]
        # In float32 (a bf16 backbone would round the logit coarsely), and multiply-and-sum rather than `@`: matmul
        # picks its kernel by `requires_grad`, which would make a loaded (inference-mode) adapter differ from the
        # trained one in the last bit.
        logits = (previous.float() * weight[..., :width]).sum(-1) + (own.float() * weight[..., width:]).sum(-1) + bias
        return torch.sigmoid(logits).to(own.dtype).unsqueeze(-1)

    def _refresh_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        start = self.num_prefix_tokens
        own = self.own_prompts(adapter, role, hidden_states)
        previous = hidden_states[:, start : start + role.config.num_prompts]
        alpha = self.aggregation_alpha(adapter, previous, own)
        # lerp is exact at alpha = 0: the block then sees its own prompts only (VPT-deep).
        prompts = own if alpha is None else torch.lerp(own, previous, alpha)
        return replace_prompts(hidden_states, prompts, start)

    # -- attentive reinforcement: capture ------------------------------------------------------------------------

    def _before_block(self, adapter: str, role: BlockRole) -> None:
        # Runs once per real forward, outside any checkpoint: drop scratch left behind by a backward recompute (which
        # re-runs the capture hooks but not `_reinforce`), so the hooks only ever see this call's tensors.
        self._clear_scratch()

    def _scratch(self) -> ARScratch:
        """Where this forward's captures go: the block's own, or, in a mixed-adapter call, that call's (concurrent
        calls from other threads each have theirs)."""
        call = active_call()
        if call is not None and id(self) in call.block_ids:
            return call.scratch.setdefault(id(self), ARScratch())
        # Under torch.compile the hooks are traced into one graph, which passes the captures as values: one key.
        thread = 0 if torch.compiler.is_compiling() else threading.get_ident()
        scratch = self._plain_scratch.get(thread)
        if scratch is None:
            scratch = self._plain_scratch[thread] = ARScratch()
        return scratch

    def _clear_scratch(self) -> None:
        self._scratch().clear()

    def _reinforcing_adapter(self) -> Optional[str]:
        adapter = self._active_prompt_adapter()
        return adapter if adapter is not None and adapter in self.cdc_reinforce_scales else None

    def _cls_row(self, term: Any) -> Optional[torch.Tensor]:
        """The CLS query's row of an additive logit term (`[..., T, T]` or `[..., 1, T]`), detached; bool masks
        become 0 / -inf."""
        if not torch.is_tensor(term) or term.dim() < 2:
            return None
        row = term[..., self.cls_index if term.shape[-2] > 1 else 0, :].detach()
        if row.dtype == torch.bool:
            row = torch.zeros(row.shape, device=row.device).masked_fill(~row, float("-inf"))
        return row.float()

    def _capture_attention_arguments(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._reinforcing_adapter() is None:
            return None
        scratch = self._scratch()
        values = {}
        for name, position in self._ar_argument_positions.items():
            value = kwargs.get(name)
            if value is None and position is not None and position < len(args):
                value = args[position]
            values[name] = value
        for name in self.attention_layout.logit_term_arguments:
            row = self._cls_row(values[name])
            if row is not None:
                scratch.terms.append(row)
        rotary = values.get(self.attention_layout.rotary_argument)
        if isinstance(rotary, (tuple, list)) and len(rotary) == 2 and all(torch.is_tensor(t) for t in rotary):
            scratch.rotary = (rotary[0].detach(), rotary[1].detach())
        return None

    def _capture_bias_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._reinforcing_adapter() is None:
            return None
        scratch = self._scratch()
        row = self._cls_row(output)
        if row is not None:
            scratch.terms.append(row)
        return None

    def _capture_query(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self._reinforcing_adapter() is None:
            return None
        scratch = self._scratch()
        query_cls = output[:, self.cls_index].detach()
        if scratch.keys is not None:
            scratch.logits = cls_attention_logits(
                query_cls, scratch.keys, self.head_dim, self.scaling, scratch.rotary, self.cls_index
            )
            scratch.keys = None
        else:
            scratch.query = query_cls
        return None

    def _capture_fused_qkv(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self._reinforcing_adapter() is None:
            return None
        query_columns, key_columns = self._fused_columns
        output = output.detach()
        self._scratch().logits = cls_attention_logits(
            output[:, self.cls_index, query_columns], output[..., key_columns], self.head_dim, self.scaling
        )
        return None

    def _capture_keys(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self._reinforcing_adapter() is None:
            return None
        scratch = self._scratch()
        keys = output.detach()
        if scratch.query is not None:
            scratch.logits = cls_attention_logits(
                scratch.query, keys, self.head_dim, self.scaling, scratch.rotary, self.cls_index
            )
            scratch.query = None
        else:
            scratch.keys = keys
        return None

    # -- attentive reinforcement: ranking and addition ------------------------------------------------------------

    def cls_attention(self, adapter: str, logits: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
        """The CLS token's attention to every token, mean over heads: ``[B, T]`` (detached, float32)."""
        length = logits.shape[-1]
        start, num_prompts = self.num_prefix_tokens, self.prompt_roles[adapter].config.num_prompts
        for row in terms:
            if row.shape[-1] == length - num_prompts:  # built for the prompt-free sequence: prompts get no bias
                row = torch.cat([row[..., :start], row.new_zeros((*row.shape[:-1], num_prompts)), row[..., start:]], -1)
            logits = logits + row
        return logits.softmax(dim=-1).mean(dim=1)

    def _reinforce(self, module: nn.Module, args: Any, output: Any) -> Any:
        adapter = self._reinforcing_adapter()
        if adapter is None:
            return None
        scratch = self._scratch()
        logits, terms = scratch.logits, scratch.terms
        self._clear_scratch()
        if logits is None:
            raise RuntimeError(
                "CDC attentive reinforcement found no attention logits for this block: its query / key projections "
                "did not run inside the block. Set `attentive_reinforcement=False` for this model."
            )
        hidden = output[0] if isinstance(output, tuple) else output
        role = self.prompt_roles[adapter]
        patch_start = self.num_prefix_tokens + role.config.num_prompts
        num_patches = hidden.shape[1] - patch_start
        if num_patches <= 0:
            return None
        scores = self.cls_attention(adapter, logits, terms)
        k = num_reinforced(role.config.reinforce_ratio, num_patches)
        # Keys past the block's output (X-CLIP appends a message token inside the block and drops it again) count in
        # the softmax but are not candidates.
        candidates = scores[:, patch_start : hidden.shape[1]]
        top = candidates.topk(k, dim=1, sorted=False).indices + patch_start  # [B, k], no gradient
        selected = hidden.new_zeros(hidden.shape[0], hidden.shape[1], 1).scatter_(1, top.unsqueeze(-1), 1.0)
        prompt_mean = hidden[:, self.num_prefix_tokens : patch_start].mean(dim=1)  # [B, D]
        delta = self.routed_scalar(self.cdc_reinforce_scales, adapter, prompt_mean.dim()).to(hidden.dtype) * prompt_mean
        # One fused pass: hidden + selected * delta. Unselected tokens get + 0 (bit-exact), selected ones + delta.
        hidden = torch.addcmul(hidden, selected, delta.unsqueeze(1))
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
