# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The VAPT block: static VPT prompts at the adapter's first block, prompts generated from the patch grid after it.

For a later prompted block l with input X (prefix tokens, the previous block's N_p prompt slots, N = H * W patches):

1. Z = LN_l(X_patches) (optional, own gamma / beta), laid out as D channels of an H x W map (raster order);
2. C = F_l ⋆ Z: one K x K kernel for every channel, valid, stride 1, so H' x W' = (H - K + 1)(W - K + 1); in
   training Dropout2d drops whole channels;
3. G = A_l C + b_l: N_p learned weightings of the H'W' grid cells (A_l, b_l start at zero);
4. P_l = G + W_2 Dropout(ReLU(W_1 G)), W_1 / W_2 shared by every block of the adapter (held by its first block);
5. P_l replaces the prompt slots; the block then runs as VPT's.

The generator runs in float32 whatever the backbone's dtype and returns the sequence's dtype. Everything is
batched: the convolution is one grouped `conv2d` over every (sample, channel) map, with a kernel per sample in a
mixed-adapter batch.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional

from ..prompting.prompt_layer import BlockRole
from ..vit.tokens import replace_prompts
from ..vpt.layer import VisualPromptBlock
from .config import AdaptivePromptConfig


def _kaiming_linear_weight(out_features: int, in_features: int, device: Optional[torch.device]) -> nn.Parameter:
    """`nn.Linear`'s default weight init (Kaiming-uniform, a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))."""
    data = torch.empty(out_features, in_features, device=device, dtype=torch.float32)
    if data.device.type != "meta":
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(data, -bound, bound)
    return nn.Parameter(data)


def _per_sample(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """A routed parameter (no batch dimension, or a leading batch dimension in a mixed batch) shaped to broadcast
    against a batch-first tensor of `ndim` dimensions whose trailing dimensions match `value`'s own."""
    return value if value.dim() == ndim else value.unsqueeze(0)


class AdaptivePromptBlock(VisualPromptBlock):
    """One prompted block of VAPT."""

    prompt_parameter_name = "vapt_prompts"
    adapter_layer_names = (
        "vapt_prompts",
        "vapt_projector_down",
        "vapt_projector_up",
        "vapt_norm_weights",
        "vapt_norm_biases",
        "vapt_kernels",
        "vapt_token_weights",
        "vapt_token_biases",
    )
    other_param_names = ("prompt_roles", "projector_owner")

    def __init__(
        self,
        base_layer: nn.Module,
        num_prefix_tokens: int,
        hidden_size: int,
        patch_size: int,
        patch_grid: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(base_layer, num_prefix_tokens, hidden_size, patch_size)
        self.patch_grid = patch_grid  # the backbone's; an adapter's config may name another (`grid_of`)
        for name in self.adapter_layer_names[1:]:
            setattr(self, name, nn.ParameterDict())
        # adapter -> the block holding that adapter's shared feature projector (its first prompted block); a plain
        # dict, not a submodule: the projector is registered (and saved) once, in that block
        self.projector_owner: dict[str, AdaptivePromptBlock] = {}

    def grid_of(self, config: AdaptivePromptConfig) -> tuple[int, int]:
        """The patch grid an adapter is built for: its config's `patch_grid`, else the backbone's."""
        return tuple(config.patch_grid) if config.patch_grid is not None else self.patch_grid

    def deep_prompts(self, config: AdaptivePromptConfig) -> bool:
        return False  # later blocks generate theirs

    def _create_method_parameters(self, adapter_name: str, role: BlockRole) -> None:
        config: AdaptivePromptConfig = role.config
        device = self._base_device()
        width, rank, prompts = self.hidden_size, config.projector_hidden_size, config.num_prompts
        if role.first:
            if not role.last:  # the projector serves the later blocks; none when only one block is prompted
                self.vapt_projector_down[adapter_name] = _kaiming_linear_weight(rank, width, device)
                self.vapt_projector_up[adapter_name] = _kaiming_linear_weight(width, rank, device)
            return
        height, grid_width = self.grid_of(config)
        cells = (height - config.kernel_size + 1) * (grid_width - config.kernel_size + 1)
        if config.generator_layer_norm:
            self.vapt_norm_weights[adapter_name] = nn.Parameter(torch.ones(width, device=device))
            self.vapt_norm_biases[adapter_name] = nn.Parameter(torch.zeros(width, device=device))
        kernel = torch.empty(config.kernel_size, config.kernel_size, device=device)
        if kernel.device.type != "meta":
            nn.init.normal_(kernel)
        self.vapt_kernels[adapter_name] = nn.Parameter(kernel)
        self.vapt_token_weights[adapter_name] = nn.Parameter(torch.zeros(prompts, cells, device=device))
        self.vapt_token_biases[adapter_name] = nn.Parameter(torch.zeros(prompts, device=device))

    # -- the prompt generator ------------------------------------------------------------------------------------

    def _grid_features(self, adapter: str, config: AdaptivePromptConfig, patches: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: `[B, N, D]` patch tokens -> `[B, D, H'W']` convolution features (float32)."""
        batch, count, width = patches.shape
        height, grid_width = self.grid_of(config)
        if count != height * grid_width:
            raise RuntimeError(
                f"VAPT's prompt generator was built for a {height} x {grid_width} patch grid ({height * grid_width} "
                f"patches), and this input has {count} patches. Feed images of the size the adapter was built for, "
                "or build it for this size with `AdaptivePromptConfig(patch_grid=[H, W])`."
            )
        tokens = patches.float()
        if adapter in self.vapt_norm_weights:
            gamma = _per_sample(self._value(self.vapt_norm_weights, adapter), 2).unsqueeze(1)
            beta = _per_sample(self._value(self.vapt_norm_biases, adapter), 2).unsqueeze(1)
            tokens = functional.layer_norm(tokens, (width,)) * gamma + beta
        grid = tokens.transpose(1, 2).reshape(batch, width, height, grid_width)
        kernel = self._value(self.vapt_kernels, adapter)  # [K, K], or [B, K, K] in a mixed batch
        size = kernel.shape[-1]
        out_h, out_w = height - size + 1, grid_width - size + 1
        # One grouped convolution over every (sample, channel) map, each with its sample's kernel: one kernel call,
        # the same for a single adapter and a mixed batch, instead of K^2 multiply-adds of shifted views that each
        # keep a full-size temporary for backward.
        taps = kernel.expand(batch, size, size) if kernel.dim() == 2 else kernel
        taps = taps[:, None].expand(batch, width, size, size).reshape(batch * width, 1, size, size)
        features = functional.conv2d(grid.reshape(1, batch * width, height, grid_width), taps, groups=batch * width)
        features = features.view(batch, width, out_h, out_w)
        features = functional.dropout2d(features, p=config.generator_dropout, training=self.training)
        return features.reshape(batch, width, out_h * out_w)

    def generated_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        """`[B, N_p, D]` prompts of this block for `adapter`, generated from the patch tokens of `hidden_states`
        (the block's input), in float32."""
        config: AdaptivePromptConfig = role.config
        patches = hidden_states[:, self.num_prefix_tokens + config.num_prompts :]
        features = self._grid_features(adapter, config, patches)  # [B, D, H'W']
        batch = features.shape[0]
        # Batched products with an explicit batch dimension on both sides: `matmul` of a 3-D by a 2-D tensor picks
        # its kernel by `requires_grad`, which would make a reloaded (inference-mode) adapter differ from the trained
        # one in the last bit.
        weights = self._batched(self._value(self.vapt_token_weights, adapter), batch)  # [B, N_p, H'W']
        biases = _per_sample(self._value(self.vapt_token_biases, adapter), 2).unsqueeze(-1)  # [., N_p, 1]
        mixed = torch.bmm(weights, features.transpose(1, 2)) + biases  # G: [B, N_p, D]
        owner = self.projector_owner[adapter]
        down = self._batched(owner._value(owner.vapt_projector_down, adapter), batch)  # [B, r, D]
        up = self._batched(owner._value(owner.vapt_projector_up, adapter), batch)  # [B, D, r]
        hidden = torch.relu(torch.bmm(mixed, down.transpose(1, 2)))
        hidden = functional.dropout(hidden, p=config.generator_dropout, training=self.training)
        projected = torch.bmm(hidden, up.transpose(1, 2))
        return mixed + projected if config.feature_residual else projected

    def _value(self, params: nn.ParameterDict, adapter: str) -> torch.Tensor:
        """`routed(params, adapter)` in float32 (the generator's precision, whatever the parameters were cast to)."""
        return self.routed(params, adapter).float()

    @staticmethod
    def _batched(matrix: torch.Tensor, batch: int) -> torch.Tensor:
        """A routed matrix with a leading batch dimension (expanded, not copied, when it is one adapter's)."""
        return matrix if matrix.dim() == 3 else matrix.unsqueeze(0).expand(batch, -1, -1)

    def _refresh_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        if adapter not in self.vapt_kernels:
            return hidden_states
        prompts = self.generated_prompts(adapter, role, hidden_states).to(hidden_states.dtype)
        return replace_prompts(hidden_states, prompts, self.num_prefix_tokens)
