# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""What CDC's attentive reinforcement (AR) costs: forward+backward time of a ViT-S/16-sized model on CPU.

Compares, on one randomly initialised ViT (hidden 384, 12 blocks, 6 heads, MLP 1536, 224 px / patch 16 = 196
patches, SDPA attention, nothing downloaded; batch 8), three `CDCPromptConfig` adapters with 10 prompts in every
block:

- VPT-deep (`cross_layer=False, attentive_reinforcement=False`), the baseline;
- CDC + DA, AR off (`attentive_reinforcement=False`);
- CDC + DA + AR (the default config).

Two measurements:

1. End to end: one training step (forward, cross-entropy, backward) per configuration. All adapters live in one
   `PeftModel` (switched with `set_adapter`) so they share the frozen backbone, and the configurations are timed
   interleaved, round after round, so that load changes on the machine hit all of them alike; medians are reported.
2. AR's own forward work, timed directly: the CDC block's hook methods (capturing the CLS query / keys / position
   terms, computing the CLS attention row, top-k, the addition) are wrapped with a timer. This is far less noisy than
   the difference of two end-to-end medians. (AR's backward, a masked product and a mean per block, is not timed
   separately; it is inside the end-to-end numbers.)

Both are reported as wall-clock time and as CPU time of this process (`time.process_time`). On a machine shared
with other jobs the wall clock mostly measures the other jobs; with one intra-op thread (`--threads 1`) the CPU time
is the robust number. With several threads CPU time also counts the threads' spin-waiting.

AR's scale lambda is set to 0.5 so the addition is live (its cost does not depend on the value).

    python benchmarks/cdc_ar_cost.py                  # prints a Markdown table, writes docs/cdc_ar_cost.json
    python benchmarks/cdc_ar_cost.py --threads 2 1    # one run per intra-op thread count (what docs/cdc.md shows)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import peft
import torch
import transformers

import gated_vpt
from gated_vpt import CDCPromptConfig
from gated_vpt.cdc.layer import CDCPromptBlock

CONFIGS = {
    "VPT-deep": dict(cross_layer=False, attentive_reinforcement=False),
    "CDC + DA (AR off)": dict(cross_layer=True, dynamic_aggregation=True, attentive_reinforcement=False),
    "CDC + DA + AR": dict(cross_layer=True, dynamic_aggregation=True, attentive_reinforcement=True),
}
# The CDC block's AR hooks (all run in the forward pass; with AR off they return at once).
AR_HOOKS = (
    "_capture_attention_arguments",
    "_capture_query",
    "_capture_keys",
    "_capture_bias_output",
    "_reinforce",
)
HOOK_SECONDS = {"wall": 0.0, "cpu": 0.0}


def _instrument_ar_hooks() -> None:
    """Wrap the AR hook methods with timers (before the model is built: the hooks are bound at construction)."""
    for name in AR_HOOKS:
        original = getattr(CDCPromptBlock, name)

        def timed(self, *args, _original=original, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return _original(self, *args, **kwargs)
            finally:
                HOOK_SECONDS["wall"] += time.perf_counter() - wall
                HOOK_SECONDS["cpu"] += time.process_time() - cpu

        setattr(CDCPromptBlock, name, timed)


def build_model(num_prompts: int) -> peft.PeftModel:
    config = transformers.ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
        num_labels=10,
    )
    torch.manual_seed(0)
    base = transformers.ViTForImageClassification(config)
    names = list(CONFIGS)
    model = None
    for name in names:
        cfg = CDCPromptConfig(num_prompts=num_prompts, modules_to_save=["classifier"], **CONFIGS[name])
        if model is None:
            model = peft.get_peft_model(base, cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "cdc_reinforce_scales" in param_name:
                param.fill_(0.5)
    return model


def time_step(model: peft.PeftModel, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Wall-clock and CPU (process) seconds of one training step, and of it the seconds spent inside AR's hooks."""
    model.train()
    HOOK_SECONDS.update(wall=0.0, cpu=0.0)
    wall, cpu = time.perf_counter(), time.process_time()
    loss = torch.nn.functional.cross_entropy(model(images).logits, labels)
    loss.backward()
    timings = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    model.zero_grad(set_to_none=True)
    return {**timings, "hooks_wall": HOOK_SECONDS["wall"], "hooks_cpu": HOOK_SECONDS["cpu"]}


KINDS = ("wall", "cpu", "hooks_wall", "hooks_cpu")


def measure(model: peft.PeftModel, images: torch.Tensor, labels: torch.Tensor, rounds: int, threads: int) -> dict:
    """Time every configuration `rounds` times (after one warm-up round) with `threads` intra-op threads."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    samples: dict[str, dict[str, list[float]]] = {name: {kind: [] for kind in KINDS} for name in CONFIGS}
    names = list(CONFIGS)
    for round_index in range(rounds + 1):  # round 0 warms up (allocator, kernels) and is discarded
        # Rotate the order every round so that no configuration always runs right after another one.
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            model.set_adapter(name)
            timings = time_step(model, images, labels)
            if round_index > 0:
                for kind in KINDS:
                    samples[name][kind].append(timings[kind])
    load_after = os.getloadavg()

    median = {name: {kind: statistics.median(samples[name][kind]) for kind in KINDS} for name in CONFIGS}
    base = median["VPT-deep"]
    rows = []
    lines = [
        f"torch threads: {threads}; load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f}",
        "",
        "| config | step wall (ms) | vs VPT-deep | step CPU (ms) | vs VPT-deep | AR hooks CPU (ms) "
        "| AR hooks / step CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        m = median[name]
        rows.append(
            {
                "config": name,
                "settings": CONFIGS[name],
                **{f"{kind}_ms": [round(1000 * t, 2) for t in samples[name][kind]] for kind in KINDS},
                **{f"{kind}_median_ms": round(1000 * m[kind], 2) for kind in KINDS},
                "wall_overhead_vs_vpt_deep_pct": round(100 * (m["wall"] / base["wall"] - 1), 1),
                "cpu_overhead_vs_vpt_deep_pct": round(100 * (m["cpu"] / base["cpu"] - 1), 1),
                "ar_hooks_share_of_step_cpu_pct": round(100 * m["hooks_cpu"] / m["cpu"], 2),
            }
        )
        lines.append(
            f"| {name} | {1000 * m['wall']:.0f} | {100 * (m['wall'] / base['wall'] - 1):+.1f}% "
            f"| {1000 * m['cpu']:.0f} | {100 * (m['cpu'] / base['cpu'] - 1):+.1f}% "
            f"| {1000 * m['hooks_cpu']:.1f} | {100 * m['hooks_cpu'] / m['cpu']:.2f}% |"
        )
    return {
        "torch_threads": threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "results": rows,
        "markdown": "\n".join(lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds (each runs every config once)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="torch intra-op thread counts to measure, one run each (default: torch's default)",
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "cdc_ar_cost.json")
    args = parser.parse_args()

    _instrument_ar_hooks()
    model = build_model(args.num_prompts)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224, generator=generator)
    labels = torch.randint(0, 10, (args.batch,), generator=generator)

    runs = []
    for threads in args.threads:
        runs.append(measure(model, images, labels, args.rounds, threads))
        print(runs[-1]["markdown"] + "\n", flush=True)

    report = {
        "benchmark": "benchmarks/cdc_ar_cost.py",
        "command": "python benchmarks/cdc_ar_cost.py " + " ".join(sys.argv[1:]),
        "model": "ViT, hidden 384, 12 blocks, 6 heads, MLP 1536, 224 px / patch 16 (196 patches), SDPA, random init",
        "measured": "one training step (forward, cross-entropy, backward) per config, configs interleaved per round",
        "batch": args.batch,
        "num_prompts": args.num_prompts,
        "rounds": args.rounds,
        "runs": runs,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "gated_vpt": gated_vpt.__version__,
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
