# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Configuration of Visual Adaptive Prompt Tuning (Le et al., ICLR 2026)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..prompting.prompt_config import MAX_PROMPT_MAGNITUDE, ConfigError, PromptConfigBase, check_bool
from ..prompting.registration import peft_type
from ..values import is_int, is_real

ADAPTIVE_PROMPT = peft_type("ADAPTIVE_PROMPT")

MAX_KERNEL_SIZE = 16
# largest magnitude of a trained value, by parameter (the rest: `PromptConfigBase.value_bound`)
_GENERATOR_BOUNDS = {"vapt_token_weights": 1e3, "vapt_token_biases": MAX_PROMPT_MAGNITUDE}
MAX_PROJECTOR_HIDDEN_SIZE = 4096


@dataclass
class AdaptivePromptConfig(PromptConfigBase):
    """VAPT: static VPT prompts at the first prompted block; at every later prompted block the prompts are generated
    from that block's input patch tokens laid out on the patch grid (docs/methods.md §6):

    ``G = A_l · Dropout2d(F_l ⋆ LN_l(X_patches)) + b_l`` (one K x K kernel F_l shared by all channels, valid, no
    bias; A_l in R^{N_p x H'W'}), then ``P_l = G + W_2 · Dropout(ReLU(W_1 · G))`` with W_1 in R^{r x D}, W_2 in
    R^{D x r} shared by all blocks. A_l and b_l start at zero, so every generated prompt is exactly 0 at
    initialisation. The CLS, register and previous prompt tokens are not part of the grid.

    Needs the patch grid (H, W) of the images it will see: `patch_grid`, else the backbone's own (its config's
    `image_size // patch_size`, timm's `patch_embed.grid_size`). A_l is sized H'W' = (H - K + 1)(W - K + 1), so every
    input must have that grid. Families whose patches form no grid (patch lists, videos, ViTMAE's shuffled patches)
    are refused.

    Args:
        kernel_size: K, the side of the channel-shared convolution kernel (the paper's default 2).
        projector_hidden_size: r, the bottleneck of the shared feature projector (default 8).
        generator_dropout: Dropout on the projector's hidden units and (as Dropout2d, whole channels) on the
            convolution's output, in training (default 0.1).
        generator_layer_norm: A LayerNorm (own gamma, beta per block) on the patch tokens before the convolution. The
            official code has it, the paper's formula does not (UNVERIFIED which is intended); True follows the code.
        feature_residual: ``P = G + MLP(G)`` (the code's form, default) or ``P = MLP(G)`` (the paper's formula).
        patch_grid: ``[H, W]``, the patch grid of the training and inference images when it is not the backbone
            config's (DINOv2's config says 518 px: at 224 px with patch 14 pass ``[16, 16]``). None: the backbone's.
        (and the fields of `PromptConfigBase`: num_prompts, prompt_dropout (on the static prompts),
        prompt_init, layers_to_transform, modules_to_save.)
    """

    kernel_size: int = field(default=2, metadata={"help": "Side K of the channel-shared convolution kernel."})
    projector_hidden_size: int = field(default=8, metadata={"help": "Bottleneck r of the shared feature projector."})
    generator_dropout: float = field(
        default=0.1, metadata={"help": "Dropout on the projector's hidden units and (Dropout2d) the conv output."}
    )
    generator_layer_norm: bool = field(
        default=True, metadata={"help": "Per-block LayerNorm on the patch tokens before the convolution (the code)."}
    )
    feature_residual: bool = field(
        default=True, metadata={"help": "P = G + MLP(G) (the code); False: P = MLP(G) (the paper's formula)."}
    )
    patch_grid: Optional[list[int]] = field(
        default=None, metadata={"help": "[H, W] patch grid of the images (None: the backbone config's)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ADAPTIVE_PROMPT
        if not (is_int(self.kernel_size) and 1 <= self.kernel_size <= MAX_KERNEL_SIZE):
            raise ConfigError(f"`kernel_size` must be an integer in [1, {MAX_KERNEL_SIZE}]; got {self.kernel_size!r}.")
        if not (is_int(self.projector_hidden_size) and 1 <= self.projector_hidden_size <= MAX_PROJECTOR_HIDDEN_SIZE):
            raise ConfigError(
                f"`projector_hidden_size` must be an integer in [1, {MAX_PROJECTOR_HIDDEN_SIZE}]; "
                f"got {self.projector_hidden_size!r}."
            )
        if not (is_real(self.generator_dropout) and 0.0 <= self.generator_dropout < 1.0):
            raise ConfigError(f"`generator_dropout` must be a probability in [0, 1); got {self.generator_dropout!r}.")
        self.generator_layer_norm = check_bool(self.generator_layer_norm, "generator_layer_norm")
        self.feature_residual = check_bool(self.feature_residual, "feature_residual")
        if self.patch_grid is not None:
            grid = self.patch_grid
            if not (
                isinstance(grid, (list, tuple)) and len(grid) == 2 and all(is_int(v) and 1 <= v <= 4096 for v in grid)
            ):
                raise ConfigError(f"`patch_grid` must be None or [H, W], two integers in [1, 4096]; got {grid!r}.")
            self.patch_grid = [int(v) for v in grid]

    def value_bound(self, parameter: str) -> float:
        # The generator chains five maps (LayerNorm, kernel, token projector, two projector matrices), so the bounds
        # multiply: with every one at its bound a generated prompt stays near 1e16 on the tiny test models, whose
        # squares a LayerNorm can still sum in float32. The token projector and its bias grow fastest in training
        # (they start at zero and sum over every grid cell) and get the most room.
        return _GENERATOR_BOUNDS.get(parameter, super().value_bound(parameter))

    def mixed_batch_layout(self, depth: int) -> tuple:
        return (
            *super().mixed_batch_layout(depth),
            self.kernel_size,
            self.projector_hidden_size,
            self.generator_layer_norm,
            self.feature_residual,
            None if self.patch_grid is None else tuple(self.patch_grid),
        )
