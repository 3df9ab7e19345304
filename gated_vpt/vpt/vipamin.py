# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""VIPAMIN (Park & Chung, "Visual Prompt Initialization via Embedding Selection and Subspace Expansion", NeurIPS 2025),
written from ../shared/docs/METHODS_NEXT.md §2 (row-vector convention: a token is a row, W_V maps rows, so
`nn.Linear` stores W_Vᵀ).

For every block that owns prompts, from the prompt-free model's pass over the calibration batches:

- E0 = the batch mean of the block's input (`[T, D]`, CLS / registers and position embedding included);
- k̄_j = the batch mean of the block's keys at patch j (the key projection's output, averaged over heads unless
  `average_heads=False`);
- O = the batch mean of the block's attention output before the output projection (`[T, D]`).

Then, with R and R' fresh VPT-uniform draws (`[P, D]`):

- matching: p_avg_i = mean of E0[patch j] over the `top_k` patches j with the largest cos(κ̄(R_i), k̄_j), where
  κ̄(R_i) is R_i's key in that block (its pre-attention norm, then the key projection);
- orthogonalising: u_i = value(R'_i) projected off the row space of O; p_orth_i = (u_i - b_V) (W_V)⁺, so that
  value(p_orth_i) = u_i (with `code_compat=True`: (u_i - b_V) (W_Vᵀ)⁺, the official code's map, whose value is not
  orthogonal to O);
- the prompts: (1 - λ) p_avg + λ p_orth, λ = `orthogonal_weight`.

What the pass must find in a block, found by how the block runs rather than by names: the key and value projections
(the family's `AttentionLayout`), the normalisation whose output is the key projection's input (a module whose class
name contains "Norm"), and the output projection: the first linear layer the block calls after its value projection
on an input other than the attention's (the attention context). A block where one of them is not found is refused.
Everything is accumulated as sums over images, so memory does not grow with the number of batches.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..prompting.prompt_config import VipaminConfig
from ..vit.attention import KeyValueParts, linear_of
from ..vit.backbones import find_prompt_site
from .layer import VisualPromptBlock, xavier_prompt_bound


def matched_prompts(
    prompt_keys: torch.Tensor, patch_keys: torch.Tensor, patch_rows: torch.Tensor, top_k: int
) -> torch.Tensor:
    """VIPAMIN's matching module: `[P, K]` prompt keys, `[N, K]` patch keys, `[N, D]` patch rows -> `[P, D]`, each
    prompt the mean of the `top_k` patch rows whose keys are most cosine-similar to its key."""
    similarity = F.normalize(prompt_keys.double(), dim=-1) @ F.normalize(patch_keys.double(), dim=-1).T
    chosen = similarity.topk(min(top_k, patch_keys.shape[0]), dim=-1).indices
    return patch_rows.double()[chosen].mean(dim=1)


def row_space_basis(rows: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (`[D, r]`) of the space spanned by the rows of `rows` (`[T, D]`); rank by the float32
    tolerance of `torch.linalg.matrix_rank`, since the rows come from a float32 (or lower) forward."""
    _, singular, right = torch.linalg.svd(rows.double(), full_matrices=False)
    if singular.numel() == 0 or singular[0] == 0:
        return rows.new_zeros(rows.shape[1], 0, dtype=torch.float64)
    tolerance = singular[0] * max(rows.shape) * torch.finfo(torch.float32).eps
    return right[singular > tolerance].T


def orthogonal_prompts(
    random_rows: torch.Tensor,
    value_weight: torch.Tensor,
    value_bias: Optional[torch.Tensor],
    attention_rows: torch.Tensor,
    code_compat: bool = False,
) -> torch.Tensor:
    """VIPAMIN's orthogonalising module: `[P, D]` random rows -> `[P, D]` prompts whose values
    (`row @ value_weight.T + value_bias`, `value_weight` as `nn.Linear` stores it) are the random rows' values with
    their component in the row space of `attention_rows` (`[T, D]`, the attention output before its output
    projection) removed. `code_compat=True` maps back as the official code does (see the module docstring)."""
    weight = value_weight.double()
    bias = value_bias.double() if value_bias is not None else weight.new_zeros(weight.shape[0])
    values = random_rows.double() @ weight.T + bias
    basis = row_space_basis(attention_rows)
    projected = values - (values @ basis) @ basis.T
    if code_compat:
        if weight.shape[0] != weight.shape[1]:
            raise ValueError(
                f"`vipamin_config.code_compat=True` applies the pseudo-inverse of the stored value weight, which needs "
                f"a square value projection; this one is {tuple(weight.shape)}: use code_compat=False."
            )
        inverse = torch.linalg.pinv(weight)
    else:
        inverse = torch.linalg.pinv(weight.T)
    return (projected - bias) @ inverse


def _is_norm(module: nn.Module) -> bool:
    return "Norm" in type(module).__name__ and not list(module.children())


class VipaminStatistics:
    """The sums one prompt-owning block contributes to VIPAMIN during the prompt-free pass, and the prompts they give.

    Installs hooks on the block's input, its key projection, its normalisation layers and its linear layers (see the
    module docstring); `remove()` takes them off.
    """

    def __init__(self, block: VisualPromptBlock, parts: KeyValueParts, num_prompts: int) -> None:
        self.block, self.parts, self.num_prompts = block, parts, num_prompts
        self.images = 0
        self.inputs: Optional[torch.Tensor] = None  # Σ_b X_b, [T, D]
        self.keys: Optional[torch.Tensor] = None  # Σ_b keys_b, [T, width]
        self.context: Optional[torch.Tensor] = None  # Σ_b attention context_b, [T, width]
        self.norm: Optional[nn.Module] = None
        self.output_projection: Optional[nn.Module] = None
        self._norm_outputs: dict[int, torch.Tensor] = {}
        self._key_input: Optional[torch.Tensor] = None
        self._after_value = False
        self.handles: list[RemovableHandle] = [block.register_forward_pre_hook(self._block_input, with_kwargs=True)]
        self.handles.append(parts.key.register_forward_pre_hook(self._key_projection_input))
        self.handles.append(parts.key.register_forward_hook(self._key_projection_output))
        if parts.value is not parts.key:
            self.handles.append(parts.value.register_forward_hook(self._value_projection_output))
        for module in block.base_layer.modules():
            if _is_norm(module):
                self.handles.append(module.register_forward_hook(self._norm_output))
            elif linear_of(module) is not None and module is not parts.key and module is not parts.value:
                self.handles.append(module.register_forward_pre_hook(self._linear_input))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self._norm_outputs.clear()
        self._key_input = None

    @staticmethod
    def _add(total: Optional[torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        batch = batch.detach().double().sum(dim=0).cpu()
        if total is not None and total.shape != batch.shape:
            raise ValueError(
                f"VIPAMIN averages token positions over the calibration images, which must all give sequences of the "
                f"same length: got {tuple(batch.shape)} after {tuple(total.shape)}. Use images of one size."
            )
        return batch if total is None else total + batch

    def _block_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        self.inputs = self._add(self.inputs, hidden_states)
        self.images += hidden_states.shape[0]
        self._after_value = False

    def _norm_output(self, module: nn.Module, args: tuple, output: object) -> None:
        if torch.is_tensor(output):
            self._norm_outputs[id(module)] = output

    def _key_projection_input(self, module: nn.Module, args: tuple) -> None:
        self._key_input = args[0]
        if self.norm is None:
            for candidate in self.block.base_layer.modules():
                if _is_norm(candidate) and self._norm_outputs.get(id(candidate)) is self._key_input:
                    self.norm = candidate
                    break

    def _key_projection_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        width = self.parts.width
        keys = output[..., width : 2 * width] if self.parts.value is self.parts.key else output
        self.keys = self._add(self.keys, keys)
        if self.parts.value is self.parts.key:
            self._after_value = True

    def _value_projection_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._after_value = True

    def _linear_input(self, module: nn.Module, args: tuple) -> None:
        if module is self.output_projection:
            self.context = self._add(self.context, args[0])
            self._after_value = False
        elif (
            self.output_projection is None
            and self._after_value
            and args
            and torch.is_tensor(args[0])
            and args[0] is not self._key_input
            and args[0].shape[-1] == self.parts.width
        ):
            self.output_projection = module
            self.context = self._add(self.context, args[0])
            self._after_value = False

    def _missing(self) -> Optional[str]:
        if self.images == 0 or self.keys is None:
            return "the calibration pass never reached it (pass at least one batch)"
        if self.keys.shape[0] != self.inputs.shape[0]:
            return "its attention runs over another token sequence than the block's input (extra tokens inside)"
        if self.context is not None and self.context.shape != self.keys.shape:
            return "its attention output before the output projection is not laid out as [batch, tokens, width]"
        if self.norm is None:
            return "its key projection's input is the output of no normalisation layer (the pre-attention norm)"
        if self.output_projection is None or self.context is None:
            return "no output projection of its attention was found after the value projection"
        return None

    def prompts(self, settings: VipaminConfig, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """The block's `[P, D]` VIPAMIN prompts (float64) and the top-k actually used."""
        problem = self._missing()
        if problem is not None:
            index = next(iter(self.block.prompt_roles.values())).index
            raise ValueError(f"VIPAMIN cannot initialise the prompts of block {index}: {problem}.")
        prefix = self.block.num_prefix_tokens
        mean_inputs = self.inputs / self.images
        mean_keys = self.keys / self.images
        patch_rows, patch_keys = mean_inputs[prefix:], mean_keys[prefix:]
        top_k = min(settings.top_k, patch_rows.shape[0])
        bound = xavier_prompt_bound(self.block.patch_size, self.block.hidden_size)
        shape = (self.num_prompts, self.block.hidden_size)
        matching_draw = torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
        orthogonal_draw = torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
        weight = settings.orthogonal_weight
        result = torch.zeros(shape, dtype=torch.float64)
        if weight < 1.0:
            prompt_keys = self._keys_of(matching_draw)
            if settings.average_heads:
                patch_keys = patch_keys.unflatten(-1, (-1, self.parts.head_dim)).mean(dim=-2)
                prompt_keys = prompt_keys.unflatten(-1, (-1, self.parts.head_dim)).mean(dim=-2)
            result += (1.0 - weight) * matched_prompts(prompt_keys, patch_keys, patch_rows, top_k)
        if weight > 0.0:
            value_weight, value_bias = self._value_map()
            result += weight * orthogonal_prompts(
                orthogonal_draw, value_weight, value_bias, self.context / self.images, settings.code_compat
            )
        return result, top_k

    def _keys_of(self, rows: torch.Tensor) -> torch.Tensor:
        """The keys the frozen block computes for tokens `rows` (`[P, D]`): its pre-attention norm, then the key
        projection's weights (applied directly: hooks of adapters on the projection must not see these rows). Per
        token, so they do not depend on the image."""
        linear = linear_of(self.parts.key)
        with torch.no_grad():
            normed = self.norm(rows.to(device=linear.weight.device, dtype=linear.weight.dtype)[None])[0]
            keys = F.linear(normed, linear.weight, linear.bias)
        width = self.parts.width
        keys = keys[..., width : 2 * width] if self.parts.value is self.parts.key else keys
        return keys.double().cpu()

    def _value_map(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The value projection's weight (`[width, D]`, as `nn.Linear` stores it) and bias."""
        linear = linear_of(self.parts.value)
        weight, bias = linear.weight, linear.bias
        if self.parts.value is self.parts.key:  # fused qkv: the third `width` rows
            width = self.parts.width
            weight = weight[2 * width : 3 * width]
            bias = bias[2 * width : 3 * width] if bias is not None else None
        return weight.detach().double().cpu(), (bias.detach().double().cpu() if bias is not None else None)


def vipamin_statistics(model: nn.Module, owners: list[VisualPromptBlock], num_prompts: int) -> list[VipaminStatistics]:
    """One `VipaminStatistics` per prompt-owning block, its hooks installed; refuses blocks whose key and value
    projections cannot be found, naming the reason."""
    layout = find_prompt_site(model).family.attention
    statistics = []
    for block in owners:
        parts = layout.key_value_projections(block.base_layer)
        if isinstance(parts, str):
            for made in statistics:
                made.remove()
            index = next(iter(block.prompt_roles.values())).index
            raise ValueError(f"VIPAMIN cannot initialise the prompts of block {index}: {parts}.")
        statistics.append(VipaminStatistics(block, parts, num_prompts))
    return statistics
