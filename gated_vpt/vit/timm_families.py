# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The timm ViT families: records matched by class name, so that timm is never imported here.

timm keeps a ViT's blocks in an `nn.Sequential` (`model.blocks`), fuses the attention's query, key and value into one
`qkv` projection, and puts the CLS, distillation and register tokens before the patches, counted by the model's own
`num_prefix_tokens`. Everything a record needs is read off the module (timm models have no transformers config).
"""

from __future__ import annotations

from typing import Any

from .attention import AttentionLayout
from .family import BackboneFamily

# timm's `Attention`: one fused `qkv` Linear ([q ; k ; v], heads inside each part), optional `q_norm` / `k_norm`
# applied to q and k after it, `scale` on the logits, an additive `attn_mask` argument.
TIMM_ATTENTION = AttentionLayout(
    query_names=(),
    key_names=(),
    fused_qkv_names=("qkv",),
    qk_norm_names=("q_norm", "k_norm"),
    head_size_attributes=("head_dim",),
    head_count_attributes=("num_heads",),
    scaling_attributes=("scale",),
    logit_term_arguments=("attn_mask",),
    rotary_argument=None,
)


def _timm_prefix_tokens(model: Any) -> int:
    return int(model.num_prefix_tokens)


def _timm_width(model: Any) -> int:
    return int(model.embed_dim)


def _timm_patch_size(model: Any) -> int:
    patch = model.patch_embed.patch_size
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def _timm_patch_grid(model: Any) -> tuple[int, int]:
    grid = model.patch_embed.grid_size
    return int(grid[0]), int(grid[1])


def _timm_has_cls_token(model: Any) -> bool:
    return getattr(model, "cls_token", None) is not None


def _timm_token_classifier(model: Any) -> bool:
    """A classifier on the prefix tokens: `global_pool="token"` with a head (num_classes > 0)."""
    return getattr(model, "global_pool", None) == "token" and int(getattr(model, "num_classes", 0) or 0) > 0


_TIMM_FACTS = dict(
    stack_paths=("blocks",),
    num_prefix_tokens=_timm_prefix_tokens,
    hidden_size=_timm_width,
    patch_size=_timm_patch_size,
    has_cls_token=_timm_has_cls_token,
    patch_grid=_timm_patch_grid,
    attention=TIMM_ATTENTION,
)

TIMM_FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily(
        name="timm DeiT (distilled)",
        model_types=("timm_deit_distilled",),
        class_names=("timm.models.deit.VisionTransformerDistilled",),
        example_classes=("deit_tiny_distilled_patch16_224",),
        prefix_tokens_text="2 (CLS, distillation)",
        prefix_only_heads=(("VisionTransformerDistilled", _timm_token_classifier),),
        notes="timm's `VisionTransformerDistilled`: both heads read the CLS and distillation tokens.",
        **_TIMM_FACTS,
    ),
    BackboneFamily(
        name="timm VisionTransformer",
        model_types=("timm_vit",),
        class_names=("timm.models.vision_transformer.VisionTransformer",),
        example_classes=(
            "vit_small_patch16_224",
            "vit_small_patch14_dinov2",
            "vit_small_patch14_reg4_dinov2",
            "vit_base_patch16_224.mae",
        ),
        prefix_tokens_text="`model.num_prefix_tokens`: CLS (unless `class_token=False`) + registers",
        prefix_only_heads=(("VisionTransformer", _timm_token_classifier),),
        notes=(
            "Blocks in an `nn.Sequential`, fused `qkv`: GPT's temperature divides the query columns of its output, "
            "CDC's reinforcement reads the query and key columns. `forward_features` / `forward_head` and "
            "`global_pool` see the prompt-free tokens. Refused with a reason: q/k normalisation (`qk_norm=True`) "
            "for the temperature and reinforcement, blocks without a `qkv`; `forward_intermediates` is not "
            "supported (it stops before the last prompted block)."
        ),
        **_TIMM_FACTS,
    ),
    BackboneFamily(
        name="timm EVA",
        model_types=("timm_eva",),
        class_names=("timm.models.eva.Eva",),
        stack_paths=("blocks",),
        num_prefix_tokens=_timm_prefix_tokens,
        refusal=(
            "its blocks take a rotary position embedding computed for the patch tokens only (`rope`), which has no "
            "position for prompt tokens inserted before the patches"
        ),
    ),
    BackboneFamily(
        name="timm BEiT",
        model_types=("timm_beit",),
        class_names=("timm.models.beit.Beit",),
        stack_paths=("blocks",),
        num_prefix_tokens=_timm_prefix_tokens,
        refusal=(
            "its attention adds a relative position bias built for the window of patch tokens plus CLS inside each "
            "block, with no entry for prompt tokens (the Hugging Face BEiT family is supported)"
        ),
    ),
)
