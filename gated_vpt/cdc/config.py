# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Configuration of CDC prompt tuning: our reconstruction of iVPT (Zhou, Chen, Huang, arXiv 2404.05207)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..prompting.prompt_config import ConfigError, PromptConfigBase, check_bool, check_finite
from ..prompting.registration import peft_type

CDC_PROMPT = peft_type("CDC_PROMPT")

MAX_REINFORCE_SCALE_INIT = 100.0


@dataclass
class CDCPromptConfig(PromptConfigBase):
    """Deep visual prompts with iVPT's cross-layer dynamic connection (CDC), dynamic aggregation (DA) and attentive
    reinforcement (AR), as reconstructed in docs/cdc.md (the paper's equations were not available).

    Every prompted block l owns prompts P_l (VPT-deep). The prompts entering block l (every prompted block except the
    first) are ``alpha_l * Z_{l-1} + (1 - alpha_l) * P_l``, Z_{l-1} being the previous block's output prompt tokens.
    AR adds ``lambda_l * mean(prompt outputs of block l)`` to the ``ceil(reinforce_ratio * N_patches)`` patch tokens
    the CLS token attends to most in block l.

    Identities: ``cross_layer=False, attentive_reinforcement=False`` is exactly VPT-deep; with ``lambda_l = 0`` (the
    init) AR changes nothing; with alpha forced to 0 CDC is VPT-deep.

    Args:
        cross_layer: Connect the prompts of adjacent prompted blocks (CDC). Off: alpha = 0, no aggregation parameters.
        dynamic_aggregation: With `cross_layer`, make alpha input-conditioned, per sample and per prompt token:
            ``alpha_l = sigmoid(w_l^T [Z_{l-1}; P_l] + b_l)`` (w_l in R^{2D}, init 0). Off: ``alpha_l = sigmoid(b_l)``,
            one learned scalar per block. Ignored when `cross_layer=False`.
        aggregation_bias_init: Initial b_l. The default -4 gives alpha = sigmoid(-4) ~ 0.018: training starts close to
            VPT-deep.
        attentive_reinforcement: Add the mean prompt output to the most CLS-attended patch tokens of every prompted
            block (AR). Needs a CLS token (first prefix token) and the blocks' `q_proj` / `k_proj`.
        reinforce_ratio: Fraction rho in (0, 1] of patch tokens reinforced: the top ``ceil(rho * N_patches)``.
        reinforce_scale_init: Initial lambda_l. The default 0 makes AR a no-op at initialisation.
        reinforce_final_block: Also apply AR in the backbone's final block (when it is prompted). That block's output
            goes only to the head, and AR changes only its patch tokens: under a head that reads only the CLS /
            distillation tokens that lambda could never learn (its gradient is exactly 0). None (the default) decides
            at injection: False for the transformers classifiers that read only prefix tokens (ViT, DeiT, ViTMSN,
            BEiT / Data2Vec without mean pooling, `CLIPModel` and `CLIPVisionModelWithProjection`; see
            `BackboneFamily.prefix_only_heads`), True otherwise (bare encoders, mean-pooling or DINOv2 heads, dense
            decoders). The decision is saved with the adapter. Set it explicitly for a head of your own.
        (and the fields of `PromptConfigBase`: num_prompts, prompt_dropout, prompt_init, layers_to_transform,
        modules_to_save.)
    """

    cross_layer: bool = field(default=True, metadata={"help": "CDC: mix the previous block's output prompts in."})
    dynamic_aggregation: bool = field(
        default=True, metadata={"help": "DA: input-conditioned mixing weight (else one learned scalar per block)."}
    )
    aggregation_bias_init: float = field(
        default=-4.0, metadata={"help": "Initial aggregation logit bias b_l (alpha starts at sigmoid(b))."}
    )
    attentive_reinforcement: bool = field(
        default=True, metadata={"help": "AR: add the mean prompt output to the most CLS-attended patch tokens."}
    )
    reinforce_ratio: float = field(default=0.25, metadata={"help": "Fraction of patch tokens AR reinforces, (0, 1]."})
    reinforce_scale_init: float = field(default=0.0, metadata={"help": "Initial AR scale lambda_l (0: no-op)."})
    reinforce_final_block: Optional[bool] = field(
        default=None,
        metadata={"help": "Apply AR in the backbone's final block too; None: unless the host's head reads only CLS."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = CDC_PROMPT
        self.cross_layer = check_bool(self.cross_layer, "cross_layer")
        self.dynamic_aggregation = check_bool(self.dynamic_aggregation, "dynamic_aggregation")
        self.attentive_reinforcement = check_bool(self.attentive_reinforcement, "attentive_reinforcement")
        if self.reinforce_final_block is not None:
            self.reinforce_final_block = check_bool(self.reinforce_final_block, "reinforce_final_block")
        self.aggregation_bias_init = check_finite(self.aggregation_bias_init, "aggregation_bias_init")
        self.reinforce_scale_init = check_finite(self.reinforce_scale_init, "reinforce_scale_init")
        if abs(self.reinforce_scale_init) > MAX_REINFORCE_SCALE_INIT:
            # lambda scales a token-sized vector added to patch tokens: far beyond O(1) it swamps them (1e30 -> NaN)
            raise ConfigError(
                f"`reinforce_scale_init` must be a number in [-{MAX_REINFORCE_SCALE_INIT:g}, "
                f"{MAX_REINFORCE_SCALE_INIT:g}] (AR starts as a no-op at 0); got {self.reinforce_scale_init!r}."
            )
        ratio = check_finite(self.reinforce_ratio, "reinforce_ratio")
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"`reinforce_ratio` must be a fraction in (0, 1]; got {self.reinforce_ratio!r}.")
        self.reinforce_ratio = ratio

    def mixed_batch_layout(self, depth: int) -> tuple:
        return (
            *super().mixed_batch_layout(depth),
            self.cross_layer,
            self.dynamic_aggregation,
            self.attentive_reinforcement,
            self.reinforce_ratio,
            self.reinforce_final_block,
        )
