#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Serving several tasks from one frozen backbone: a mixed-adapter batch against the tasks one after another.

Setting: one ViT with `num_tasks` GPT adapters (each with its own head), `per_task` images per task waiting. Timed,
inference (eval, no_grad), every variant in the same process, interleaved round by round, median over rounds:

* `sequential`: for each task, `set_adapter(task)` and a forward of its `per_task` images (what a server does without
  mixed batches);
* `mixed`: one forward of all `num_tasks * per_task` images with `adapter_names=[...]` (adapters of one layout: the
  same prompt count and prompted blocks, so the batch shares one forward);
* `mixed, 2 layouts`: the same, but half of the tasks use 20 prompts instead of 10, so the batch runs as two forwards
  (one per layout).

    python benchmarks/mixed_batch.py                 # CPU: ViT-S/16 at 112 px
    python benchmarks/mixed_batch.py --mode gpu      # GPU: ViT-B/16 at 224 px, bf16

Writes docs/mixed_batch.md, docs/mixed_batch.json and docs/mixed_batch.png. Random-init weights: time does not depend
on them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
from cost import backbone, machine, sync  # benchmarks/cost.py: the same ViTs, machine line and GPU sync
from peft import get_peft_model

import gated_vpt
from gated_vpt import GatedPromptConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"


def build(size: str, image_size: int, num_tasks: int, two_layouts: bool) -> torch.nn.Module:
    """`num_tasks` GPT adapters with their own heads on one ViT; with `two_layouts` every other one has 20 prompts."""
    adapters = [GatedPromptConfig(num_prompts=20 if two_layouts and i % 2 else 10, modules_to_save=["classifier"])
                for i in range(num_tasks)]
    model = get_peft_model(backbone(size, image_size), adapters[0], adapter_name="task0")
    for i, adapter in enumerate(adapters[1:], start=1):
        model.add_adapter(f"task{i}", adapter)
    return model.eval()


def measure(size: str, image_size: int, num_tasks: int, per_task: int, rounds: int, device: torch.device,
            autocast) -> dict:
    models = {"sequential": build(size, image_size, num_tasks, False).to(device),
              "mixed": build(size, image_size, num_tasks, False).to(device),
              "mixed, 2 layouts": build(size, image_size, num_tasks, True).to(device)}
    tasks = list(models["mixed"].peft_config)
    images = torch.randn(num_tasks * per_task, 3, image_size, image_size, device=device)
    names = [task for task in tasks for _ in range(per_task)]

    def sequential():
        model = models["sequential"]
        for i, task in enumerate(tasks):
            model.set_adapter(task)
            model(pixel_values=images[i * per_task:(i + 1) * per_task])

    runs = {"sequential": sequential,
            "mixed": lambda: models["mixed"](pixel_values=images, adapter_names=names),
            "mixed, 2 layouts": lambda: models["mixed, 2 layouts"](pixel_values=images, adapter_names=names)}
    times = {name: [] for name in runs}
    with torch.no_grad(), autocast():
        for run in runs.values():  # warm-up
            run()
        for _ in range(rounds):
            for name, run in runs.items():
                sync(device)
                start = time.perf_counter()
                run()
                sync(device)
                times[name].append(time.perf_counter() - start)
    result = {name: {"seconds": statistics.median(t), "images_per_s": len(names) / statistics.median(t)}
              for name, t in times.items()}
    for name in result:
        result[name]["speedup_vs_sequential"] = result["sequential"]["seconds"] / result[name]["seconds"]
    return result


def render(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Mixed-adapter batches: measured",
        "",
        f"Produced by `{s['command']}` on **{s['machine']}**, {s['date']} ({s['size']}, {s['image_size']} px, "
        f"{s['num_tasks']} GPT adapters with their own heads, inference, median of {s['rounds']} interleaved "
        f"rounds{', bf16 autocast' if s['mode'] == 'gpu' else ''}). `sequential`: one forward per task after "
        "`set_adapter`; `mixed`: one forward of all tasks' images with `adapter_names`; `mixed, 2 layouts`: half of "
        "the tasks have 20 prompts instead of 10, so the mixed batch runs as one forward per layout.",
        "",
        "| images per task | batch | sequential images/s | mixed images/s | mixed speed-up | 2 layouts images/s | "
        "2 layouts speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for per_task, r in report["results"].items():
        lines.append(
            f"| {per_task} | {int(per_task) * s['num_tasks']} | {r['sequential']['images_per_s']:.1f} | "
            f"{r['mixed']['images_per_s']:.1f} | {r['mixed']['speedup_vs_sequential']:.2f}x | "
            f"{r['mixed, 2 layouts']['images_per_s']:.1f} | {r['mixed, 2 layouts']['speedup_vs_sequential']:.2f}x |")
    lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    per_task = [int(k) for k in results]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in ("sequential", "mixed", "mixed, 2 layouts"):
        ax.plot(per_task, [results[k][name]["images_per_s"] for k in results], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"images per task ({report['settings']['num_tasks']} tasks)")
    ax.set_ylabel("images / s")
    ax.set_title(f"{report['settings']['size']}: serving several adapters", fontsize=10)
    ax.legend()
    fig.suptitle(report["settings"]["machine"], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--num-tasks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default=str(DOCS / "mixed_batch"))
    args = parser.parse_args()
    gpu = args.mode == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    size, image_size = ("ViT-B", 224) if gpu else ("ViT-S", 112)
    per_task_values = (1, 4, 16, 64) if gpu else (1, 2, 8)
    rounds = args.rounds or (20 if gpu else 9)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()

    command = f"python benchmarks/mixed_batch.py --mode {args.mode}"
    if args.rounds:
        command += f" --rounds {args.rounds}"
    if args.num_tasks != 4:
        command += f" --num-tasks {args.num_tasks}"
    settings = {"mode": args.mode, "size": f"{size}/16", "image_size": image_size, "num_tasks": args.num_tasks,
                "rounds": rounds, "machine": machine(), "gated_vpt": gated_vpt.__version__,
                "date": datetime.date.today().isoformat(), "command": command}
    results = {}
    for per_task in per_task_values:
        results[per_task] = measure(size, image_size, args.num_tasks, per_task, rounds, device, autocast)
        print(per_task, {k: round(v["images_per_s"], 1) for k, v in results[per_task].items()}, flush=True)
    report = {"settings": settings, "results": results}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(report))
    plot(report, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
