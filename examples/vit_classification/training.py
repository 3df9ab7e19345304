# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""One run of the example, start to end: ``run(argv)`` (and ``main(argv)``, the command line's entry point).

Backbone and data, then the linear probe on the frozen backbone, then the method trained with transformers'
``Trainer`` and evaluated, then what is saved (the adapter, the gate figure, results.json, the optional Hub upload)
and the summary printed at the end. The steps are the other modules of this package; they are called through their
modules (``data.load_data``, ``methods.build_optimizer``, ...), so a test can replace one step in its module.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import shutil
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

import gated_vpt
from gated_vpt import gate_report, initialize_prompts, plot_gate_report, summarize_gate_report
from gated_vpt.prompting.prompt_config import DATA_DRIVEN_PROMPT_INITS

from . import backbone, cli, data, methods, probe, saving
from .precision import cpu_has_native_bf16, resolve_attention, resolve_precision


class Run(NamedTuple):
    """What `run` returns: the results (also in results.json), the trained model (eval mode), the evaluation
    dataset (transformed) and the collate function (for further evaluation, e.g. in tests)."""

    results: dict[str, Any]
    model: nn.Module
    eval_dataset: Any
    collate: Any


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Command-line entry point; returns the results that are also written to results.json."""
    return run(argv).results


def run(argv: Optional[Sequence[str]] = None) -> Run:
    start = time.perf_counter()
    args = cli.parse_args(argv)
    from transformers import Trainer, TrainingArguments, set_seed

    output_dir = pathlib.Path(args.output_dir or f"outputs/image_classification/{args.method}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(args.precision, device)
    attention = resolve_attention(args.attn_implementation, device, precision)
    if precision == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        print("Note: this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 is emulated, expect it slower than fp32.")
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # -- backbone ---------------------------------------------------------------------------------------------
    t = time.perf_counter()
    model_path = backbone.default_backbone() if args.model is None else args.model
    timings["backbone_s"] = time.perf_counter() - t

    # -- data -------------------------------------------------------------------------------------------------
    t = time.perf_counter()
    train_ds, eval_ds, class_names, train_name, eval_name = data.load_data(args)
    timings["data_s"] = time.perf_counter() - t
    set_seed(args.seed)
    base = backbone.load_base_model(model_path, class_names, attention)
    vision = backbone.vision_config(base.config)
    patch, depth = vision.patch_size, vision.num_hidden_layers
    if args.image_size % patch:
        raise SystemExit(f"--image-size {args.image_size} is not a multiple of the patch size {patch}.")
    mean, std, norm_source = data.normalization(model_path)
    transform = data.make_transform(args.image_size, mean, std)
    # datasets' own fingerprint (content and every select/shuffle), taken before with_transform: the preprocessing
    # enters the feature-cache key on its own.
    data_identity = {
        "train": [train_name, train_ds._fingerprint, len(train_ds)],
        "eval": [eval_name, eval_ds._fingerprint, len(eval_ds)],
        "classes": list(class_names),
    }
    train_ds, eval_ds = train_ds.with_transform(transform), eval_ds.with_transform(transform)
    # ViT, DeiT, CLIP, SigLIP... need `interpolate_pos_encoding=True` at another image size (DINOv2 always interpolates)
    extra = {"interpolate_pos_encoding": True} if backbone.needs_interpolation_flag(base, args.image_size) else {}
    collate = data.make_collate(extra)
    print(
        f"Data: {len(train_ds)} training images ({train_name}), {len(eval_ds)} evaluation images ({eval_name}), "
        f"{len(class_names)} classes, {args.image_size}px, {norm_source} mean/std; precision {precision}, "
        f"{attention} attention",
        flush=True,
    )

    # -- linear probe on the frozen backbone (before any adapter is injected) ----------------------------------
    linear_probe = None
    if not args.no_linear_probe:
        linear_probe = probe.run_linear_probe(
            base,
            model_path,
            args,
            train_ds,
            eval_ds,
            collate,
            num_classes=len(class_names),
            mean=mean,
            std=std,
            forward_kwargs=extra,
            data_identity=data_identity,
            precision=precision,
            attention=attention,
            device=device,
        )
        timings["linear_probe_s"] = linear_probe["seconds"]

    # -- the method -------------------------------------------------------------------------------------------
    set_seed(args.seed)
    model = methods.prepare_model(base, args, depth)
    prompt_init = None
    if args.method in methods.PROMPT_METHODS and args.prompt_init in DATA_DRIVEN_PROMPT_INITS:
        t = time.perf_counter()
        batches = torch.utils.data.DataLoader(
            train_ds,
            batch_size=args.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(args.seed),
        )
        prompt_init = initialize_prompts(model, batches, max_batches=args.prompt_init_batches, seed=args.seed)
        timings["prompt_init_s"] = time.perf_counter() - t
        print(
            f"Prompts initialised from data ({args.prompt_init}): {prompt_init['images']} images in "
            f"{timings['prompt_init_s']:.1f} s",
            flush=True,
        )
    lr = cli.method_lr(args)
    trainable, total = methods.count_parameters(model)
    print(
        f"Method {args.method}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)",
        flush=True,
    )
    optimizer = methods.build_optimizer(model, args, lr)
    learning_rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    steps_per_epoch = math.ceil(len(train_ds) / args.batch_size)
    trainer_dir = output_dir / "trainer"  # with save_strategy="no" nothing should land here; removed if empty
    training_args = TrainingArguments(
        output_dir=str(trainer_dir),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        num_train_epochs=args.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, steps_per_epoch // 4),
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        seed=args.seed,
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=args.no_progress,
        # accelerate then wraps the model's forward in torch.autocast (training and predict); parameters stay fp32.
        # transformers rejects bf16 without a bf16 GPU unless told the run is on the CPU.
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu" and precision == "bf16",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        data_collator=collate,
        optimizers=(optimizer, None),  # Trainer adds the cosine schedule; each group keeps its own peak lr
    )
    t, cpu = time.perf_counter(), time.process_time()
    train_output = trainer.train()
    timings["train_s"] = time.perf_counter() - t
    # CPU seconds of this process (all its threads, not DataLoader workers): unlike the wall time, not inflated by
    # other processes sharing the CPU or by a pause, so runs of one thread compare across a busy machine
    timings["train_cpu_s"] = time.process_time() - cpu
    t = time.perf_counter()
    prediction = trainer.predict(eval_ds)
    timings["eval_s"] = time.perf_counter() - t
    accuracy = _accuracy(prediction.predictions, prediction.label_ids)
    # Undo accelerate's autocast wrapper of `model.forward`, so the returned model computes like a reloaded one.
    model = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval()
    if trainer_dir.is_dir() and not any(f.is_file() for f in trainer_dir.rglob("*")):
        shutil.rmtree(trainer_dir)

    # -- save, gates, push ------------------------------------------------------------------------------------
    adapter_dir = saving.saved_dir(output_dir, args.method)
    saving.save_trained(model, args.method, adapter_dir)
    adapter_bytes = saving.dir_bytes(adapter_dir)
    gates = None
    if args.method in methods.PROMPT_METHODS:
        report = gate_report(model)
        gates = {"report": report, "summary": summarize_gate_report(report)}
        if any("gate" in row for row in report):
            gates["png"] = str(
                plot_gate_report(
                    report,
                    str(output_dir / "gates.png"),
                    title=f"Learned gates ({args.method}, {eval_name.split('/')[0]})",
                )
            )
    pushed = None
    if args.push_to_hub:
        pushed = {
            "repo_id": args.push_to_hub,
            "result": saving.push_to_hub(model, args.method, args.push_to_hub, adapter_dir, args.private),
        }

    wall = time.perf_counter() - start
    results = {
        "method": args.method,
        "model": model_path,
        "model_type": base.config.model_type,
        "train_data": train_name,
        "eval_data": eval_name,
        "num_train": len(train_ds),
        "num_eval": len(eval_ds),
        "num_classes": len(class_names),
        "accuracy": accuracy,
        "precision": precision,
        "attn_implementation": attention,
        "linear_probe": linear_probe,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "adapter_dir": str(adapter_dir),
        "adapter_bytes": adapter_bytes,
        "adapter_files": {f.name: f.stat().st_size for f in sorted(adapter_dir.iterdir()) if f.is_file()},
        "gates": gates,
        "prompt_init": prompt_init,
        "pushed": pushed,
        "learning_rates": learning_rates,
        "train_loss": train_output.training_loss,
        "steps": train_output.global_step,
        "train_s": timings["train_s"],
        "wall_time_s": wall,
        "timings_s": timings,
        "args": vars(args),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gated_vpt": gated_vpt.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_summary(results, output_dir)
    return Run(results, model, eval_ds, collate)


def print_summary(results: dict[str, Any], output_dir: pathlib.Path) -> None:
    """The block printed at the end of a run: accuracies, parameters, size on disk, wall time, where things went."""
    method, probe_results, gates, pushed = (results[k] for k in ("method", "linear_probe", "gates", "pushed"))
    trainable, total, timings = results["trainable_parameters"], results["total_parameters"], results["timings_s"]
    train_name, eval_name = results["train_data"], results["eval_data"]
    split = eval_name.rsplit("/", 1)[-1]
    rows = [(f"{split} accuracy ({method})", f"{results['accuracy']:.4f}")]
    if probe_results is not None:
        rows.append(
            (
                f"{split} accuracy (linear probe)",
                f"{probe_results['accuracy']:.4f}   (same frozen backbone, image size)",
            )
        )
    rows += [
        ("trainable parameters", f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)"),
        (
            f"{'model' if method == 'full' else 'adapter'} size on disk",
            f"{results['adapter_bytes']:,} bytes ({results['adapter_dir']})",
        ),
        ("wall time", f"{results['wall_time_s']:.0f} s (training {timings['train_s']:.0f} s)"),
    ]
    if gates is not None:
        rows.append(("gates", gates["summary"] + (f" -> {gates['png']}" if "png" in gates else "")))
    if pushed is not None:
        rows.append(("pushed to the Hub", pushed["result"]))
    rows.append(("results", str(output_dir / "results.json")))
    line = "=" * 78
    print(
        f"\n{line}\n{method}: trained on {results['num_train']} images ({train_name}), "
        f"evaluated on {results['num_eval']} ({eval_name})"
    )
    for label, value in rows:
        print(f"  {label + ':':<33}{value}")
    print(line, flush=True)


def _accuracy(predictions: Any, labels: np.ndarray) -> float:
    logits = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())
