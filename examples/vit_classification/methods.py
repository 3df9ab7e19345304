# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""``--method``: what is trained, and with which learning rate per parameter group.

The prompt methods are gated-vpt's named presets (``gated_vpt.preset_config``: the same name means the same adapter
in the example, the benchmarks and the tests); LoRA is PEFT's; ``linear`` and ``full`` only freeze or unfreeze.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import torch
from torch import nn

import gated_vpt

# Every registered prompt method (gated_vpt.PRESETS: VFPT, VAPT, E²VPT, the CDC ablations, ...), the four of the
# README first.
_FIRST = ("gpt", "cdc", "vpt-shallow", "vpt-deep")
PROMPT_METHODS = (*_FIRST, *sorted(set(gated_vpt.PRESETS) - set(_FIRST)))
METHODS = (*PROMPT_METHODS, "lora", "linear", "full")
PEFT_METHODS = (*PROMPT_METHODS, "lora")


def prepare_model(base: nn.Module, args: argparse.Namespace, depth: int) -> nn.Module:
    """The model to train: the PEFT model of a PEFT method (with a fresh trainable head), else `base` with only its
    head (linear) or everything (full) trainable."""
    site = gated_vpt.find_prompt_site(base)
    config = method_config(args, depth, site.cls_token_index is not None, _patch_grid(base, args))
    if config is not None:
        from peft import get_peft_model

        return get_peft_model(base, config)
    for name, param in base.named_parameters():
        param.requires_grad = args.method == "full" or name.split(".")[0] == "classifier"
    return base


def _patch_grid(base: nn.Module, args: argparse.Namespace) -> list[int]:
    """The patch grid of the images at `--image-size` (VAPT's generator is sized to it)."""
    config = getattr(base.config, "vision_config", None) or base.config
    patch = config.patch_size[0] if isinstance(config.patch_size, (list, tuple)) else config.patch_size
    return [args.image_size // patch] * 2


def method_config(args: argparse.Namespace, depth: int, has_cls: bool = True, patch_grid: Optional[list] = None):
    """The PEFT config of a PEFT method (None for linear / full): for a prompt method its preset, with the prompt
    options (and GPT's gate prior, CDC's ablation flags) as fields."""
    common = dict(num_prompts=args.num_prompts, prompt_dropout=args.prompt_dropout, modules_to_save=["classifier"])
    if args.method in PROMPT_METHODS:
        common["prompt_init"] = getattr(args, "prompt_init", "xavier")
        if common["prompt_init"] == "vipamin":
            common["vipamin_config"] = gated_vpt.VipaminConfig(
                top_k=args.vipamin_top_k, orthogonal_weight=args.vipamin_orthogonal_weight
            )
    layers = _layers(args, depth)
    if args.method in PROMPT_METHODS:
        fields = _method_fields(args, has_cls)
        if patch_grid is not None and "patch_grid" in gated_vpt.PRESETS[args.method].config_class.__dataclass_fields__:
            fields["patch_grid"] = patch_grid
        return gated_vpt.preset_config(args.method, layers_to_transform=layers, **common, **fields)
    if args.method == "lora":
        from peft import LoraConfig

        return LoraConfig(
            r=8,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["classifier"],
            layers_to_transform=layers,
        )
    return None


def _method_fields(args: argparse.Namespace, has_cls: bool) -> dict[str, Any]:
    """The config fields a prompt method takes from its own options: GPT's gate prior, CDC's ablation switches."""
    if args.method == "gpt":
        return {"gate_init": args.gate_init}
    if args.method == "cdc":
        if not has_cls and not args.no_reinforcement:
            print("Note: this backbone has no CLS token, so CDC runs without attentive reinforcement.", flush=True)
        return {
            "cross_layer": not args.no_cross_layer,
            "dynamic_aggregation": not args.static_aggregation,
            "attentive_reinforcement": has_cls and not args.no_reinforcement,
        }
    return {}


def _layers(args: argparse.Namespace, depth: int) -> Optional[list[int]]:
    if not 0 <= args.layers < depth:
        raise SystemExit(f"--layers must lie in [0, {depth - 1}] for this {depth}-block backbone; got {args.layers}.")
    return None if args.layers == 0 else list(range(args.layers, depth))


def build_optimizer(model: nn.Module, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    """AdamW with three parameter groups: the method's parameters (lr), GPT's gate logits (lr * multiplier) and
    the classifier head (head_lr). Gates, temperatures and other scalars get no weight decay."""
    groups: dict[str, dict[str, Any]] = {
        "method": {"params": [], "lr": lr, "weight_decay": args.weight_decay},
        "method_no_decay": {"params": [], "lr": lr, "weight_decay": 0.0},
        "gates": {"params": [], "lr": lr * args.gate_lr_multiplier, "weight_decay": 0.0},
        "head": {"params": [], "lr": args.head_lr, "weight_decay": args.weight_decay},
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_head(name):
            groups["head"]["params"].append(param)
        elif "gate_logits" in name:
            groups["gates"]["params"].append(param)
        elif param.dim() < 2 and args.method in PROMPT_METHODS:
            groups["method_no_decay"]["params"].append(param)
        else:
            groups["method"]["params"].append(param)
    param_groups = [{"name": k, **g} for k, g in groups.items() if g["params"]]
    return torch.optim.AdamW(param_groups)


def _is_head(name: str) -> bool:
    return "classifier" in name.split(".")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
