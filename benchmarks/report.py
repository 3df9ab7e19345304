#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Assemble docs/benchmarks.md, the one-page summary of the benchmarks, from their JSON records.

* docs/benchmarks_accuracy.json, written by benchmarks/accuracy.py (accuracy under the VTAB-1k protocol);
* docs/benchmarks_cost.json, written by benchmarks/cost.py (training-step and inference cost against the floor);
* docs/benchmarks_cost_<machine>.json, if any: the same measurement on another machine (`cost.py --out ...`).

Either may be missing (its section then says "not run yet"). Nothing is measured here: every number is copied or
divided from those records.

    python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any, Optional

from _targets import ratio_text, target, targets_text, verdict  # benchmarks/_targets.py
from vtab_accuracy.page import epochs_text  # benchmarks/vtab_accuracy: accuracy.py's code
from vtab_accuracy.protocol import ABLATIONS, LABELS, TITLES
from vtab_accuracy.summary import mean_std, planned

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
COST_METHODS = ("gpt", "cdc", "cdc-no-ar", "vpt-deep", "vfpt", "vapt", "e2vpt", "lora", "full")


def load(path: pathlib.Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def other_cost_records(cost: pathlib.Path) -> dict[str, Any]:
    """Other machines' cost records beside the main one (benchmarks_cost_<machine>.json), by file stem."""
    return {p.stem: load(p) for p in sorted(cost.parent.glob(f"{cost.stem}_*.json"))}


def accuracy_section(record: Optional[dict[str, Any]]) -> list[str]:
    lines = ["## Accuracy (VTAB-1k protocol)", ""]
    if record is None:
        return [*lines, "Not run yet: `python benchmarks/accuracy.py` writes docs/benchmarks_accuracy.json.", ""]
    s, progress, summary = record["settings"], record["progress"], record["summary"]
    lines += [
        f"Real DINOv2 ViT-S/14, {record['mode']} mode: {s['image_size']} px, {epochs_text(record)}, batch "
        f"{s['batch_size']}, seeds {', '.join(map(str, s['seeds']))}; learning rates chosen on the 200 val images, "
        f"then trained on all 1,000 training images and tested. {progress['done']} of {planned(progress)} runs done "
        f"({record['generated']}). Test accuracy %, mean ± std over seeds; details, the settings' shortfalls and "
        "per-seed values in [benchmarks_accuracy.md](benchmarks_accuracy.md).",
        "",
    ]
    if record.get("quick"):
        lines += ["**This record is a quick smoke test: its numbers measure nothing.**", ""]
    if not summary:
        return [*lines, "No test-split run has finished yet.", ""]
    datasets = list(summary)
    first = summary[datasets[0]]
    lines += [
        "| method | "
        + " | ".join(f"{TITLES[d]} ({summary[d]['num_test'] or 0:,} test images)" for d in datasets)
        + " | trainable params |",
        "|---|" + "---|" * len(datasets) + "---|",
    ]
    rows = [(LABELS[m], "main", m) for m in first["main"]] + [
        (ABLATIONS[a][1], "ablations", a) for a in first["ablations"]
    ]
    for label, table, key in rows:
        cells = [mean_std(summary[d][table][key]) for d in datasets]
        params = next((summary[d][table][key].get("trainable_parameters") for d in datasets), None)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'—' if params is None else f'{params:,}'} |")
    lines += ["", "GPT and CDC against the linear probe and VPT (from the numbers above):", ""]
    lines += [f"- {f}" for f in record["findings"]] or ["- nothing to compare yet"]
    lines += ["", "Each prompt method against LoRA and full fine-tuning:", ""]
    lines += [f"- {f}" for f in record.get("versus", [])] or ["- nothing to compare yet"]
    lines += ["", "The goal: a prompt method at or above LoRA, within 1 point of full fine-tuning, under 0.5% of the "
              "parameters (the table of every method against it is in benchmarks_accuracy.md):", ""]
    lines += [f"- {f}" for f in (record.get("goal") or {}).get("lines", [])] or ["- not judged yet"]
    lines += ["", "What the insertion sweep shows:", ""]
    lines += [f"- {f}" for f in record.get("sweep_reading", [])] or ["- not run yet"]
    lines += ["", "What to pick, for which goal (read off the numbers above):", ""]
    lines += [f"- {f}" for f in record.get("guide", [])] or ["- nothing to compare yet"]
    lines += [
        "",
        "![accuracy vs trainable parameters](benchmarks_accuracy.png)",
        "",
        "![insertion block sweep](benchmarks_insertion_sweep.png)",
        "",
    ]
    return lines


def machine_label(settings: dict[str, Any]) -> str:
    """The record's machine, with whether its CPU has native bf16 where recorded: two CPUs of one name can differ."""
    native = settings.get("cpu_native_bf16")
    flag = "" if native is None else f" ({'native' if native else 'no native'} bf16)"
    return settings.get("machine", "?") + flag


def date_and_commit(settings: dict[str, Any]) -> str:
    """The record's date, and the commit it measured where recorded."""
    commit = settings.get("commit")
    return settings.get("date", "date not recorded") + (f", commit `{commit}`" if commit else "")


def other_cost_section(name: str, record: dict[str, Any]) -> list[str]:
    """The summary of a cost record from another machine (docs/<name>.json, written by `cost.py --out docs/<name>`)."""
    machine = machine_label(record.get("settings", {}))
    lines = [f"### The same measurement on another machine: {machine}", ""]
    try:
        lines += _cost_per_precision(record, f"{name}.md")
    except (KeyError, TypeError, AttributeError, ValueError, StopIteration, ZeroDivisionError) as error:
        lines += [f"docs/{name}.json has an unexpected structure ({error!r}).", ""]
    return [*lines, f"![cost on {machine}]({name}.png)", ""]


def cost_section(record: Optional[dict[str, Any]]) -> list[str]:
    lines = ["## Cost (training step and inference against the floor)", ""]
    if record is None:
        return [*lines, "Not run yet: `python benchmarks/cost.py` writes docs/benchmarks_cost.json.", ""]
    try:
        lines += _cost_per_precision(record)  # one block per precision (fp32, bf16) and the epoch of the main job
        lines += ["![cost](benchmarks_cost.png)", ""]
    except (KeyError, TypeError, AttributeError, ValueError, StopIteration, ZeroDivisionError) as error:
        lines += [f"docs/benchmarks_cost.json has an unexpected structure ({error!r}); see benchmarks_cost.md.", ""]
    return lines


FLOOR_TEXT = (
    "The floor is the frozen backbone's forward + input-gradient backward on a sequence that already carries the "
    f"prompt tokens. {targets_text('x')}"
)
PAIRED_TEXT = (
    "A ratio is the median of the per-round ratios (method and floor timed in the same round), [q1–q3] their "
    "quartiles; a target counts as missed when three quarters of the rounds are above it."
)
DETAILS = "Details in [{page}]({page})."
MEDIANS_TEXT = "A ratio is the method's median time over the floor's (this record predates the per-round quartiles)."


def _ratio_reading(tables: list[dict[str, Any]]) -> str:
    paired = any("train_ratio_quartiles" in r for table in tables for r in table.values())
    return PAIRED_TEXT if paired else MEDIANS_TEXT


def ratio_cells(r: dict[str, Any], method: str) -> tuple[list[str], list[tuple[str, str, float, float]]]:
    """The table cells of a method's training and inference ratios (median of the rounds [quartiles]) with their
    targets, and (reading, what, value, target) of each target not met: "missed" (three quarters of the rounds
    above it) or "noise" (the median above it, the lower quartile within)."""
    cells, above = [], []
    for key, what in (("train", "training"), ("infer", "inference")):
        limit = target(method, key)
        text = ratio_text(r, key, "x")
        if limit is None:
            cells += [text, ""]
            continue
        reading = verdict(r, key, limit)
        if reading == "met":
            cells += [text, f"≤ {limit:.2f}x met"]
        elif reading == "noise":
            cells += [text, f"≤ {limit:.2f}x: above, within the rounds' spread"]
        else:
            cells += [f"**{text}**", f"≤ {limit:.2f}x **missed**"]
        if reading != "met":
            above.append((reading, what, r[f"{key}_ratio_to_floor"], limit))
    return cells, above


def target_lines(above: list[tuple[str, str]]) -> list[str]:
    """The sentences under a ratio table, from (reading, description) of every target not met."""
    missed = [d for reading, d in above if reading == "missed"]
    noisy = [d for reading, d in above if reading == "noise"]
    lines = [f"Missed targets: {'; '.join(missed)}." if missed else "No target is missed at 10 prompts."]
    if noisy:
        lines.append(f"Above the target, but within the spread of the rounds: {'; '.join(noisy)}.")
    return ["", *lines, ""]


def _method_label(method: str) -> str:
    return "CDC without attentive reinforcement" if method == "cdc-no-ar" else LABELS.get(method, method)


def _sweep_missed(sweep: dict[str, Any], suffix: str = "") -> list[str]:
    return [
        f"{LABELS[method]} {what} {r[method][f'{key}_ratio_to_floor']:.3f}x at {n} prompt{'' if int(n) == 1 else 's'}"
        f"{suffix}"
        for n, r in sweep.items()
        for method in ("gpt", "cdc")
        for key, what in (("train", "training"), ("infer", "inference"))
        if method in r and verdict(r[method], key, target(method, key)) == "missed"
    ]


def _sweep_note(sweep_missed: list[str], size: str = "ViT-S") -> list[str]:
    if not sweep_missed:
        return []
    return [
        f"In the number-of-prompts sweep of {size} (fewer rounds, so noisier: compare its 10-prompt row with the "
        f"table above) these ratios are above their targets: {'; '.join(sweep_missed)}.",
        "",
    ]


def _cost_per_precision(record: dict[str, Any], page: str = "benchmarks_cost.md") -> list[str]:
    """The summary of a cost record with one block per precision; `page`: its detailed page."""
    s, blocks = record["settings"], record["precisions"]
    kernels = ", ".join(f"{p} {b['attn_implementation']}" for p, b in blocks.items())
    lines = [
        f"{machine_label(s)}, {date_and_commit(s)}, {s['mode']} mode: {s['image_size']} px, batch {s['batch_size']}, "
        f"10 prompts, median of {s['rounds']} interleaved rounds, in {' and '.join(blocks)} ("
        + ("bf16: autocast over fp32 weights; " if "bf16" in blocks else "")
        + f"attention kernel {kernels}). {FLOOR_TEXT} "
        + _ratio_reading([table for b in blocks.values() for table in b["num_prompts_10"].values()])
        + " "
        + DETAILS.format(page=page),
        "",
    ]
    if s.get("smoke"):
        lines += ["**This record is a smoke test (tiny models, 1 round): its numbers measure nothing.**", ""]
    lines += [
        "| backbone | method | precision | training step / floor | target | inference / floor | target |",
        "|---|---|---|---|---|---|---|",
    ]
    above = []
    for size in next(iter(blocks.values()))["num_prompts_10"]:
        for method in COST_METHODS:
            for precision, block in blocks.items():
                results = block["num_prompts_10"][size]
                if method not in results:
                    continue
                cells, misses = ratio_cells(results[method], method)
                above += [
                    (r, f"{LABELS.get(method, method)} {w} on {size} in {precision} ({v:.3f}x > {t:.2f}x)")
                    for r, w, v, t in misses
                ]
                lines.append(f"| {size} | {_method_label(method)} | {precision} | " + " | ".join(cells) + " |")
    lines += target_lines(above)
    lines += _sweep_note(
        [m for p, b in blocks.items() for m in _sweep_missed(b.get("num_prompts_sweep", {}), f" in {p}")],
        next(iter(s["sizes"])),
    )
    job = s["epoch_job"]
    both = "fp32" in blocks and "bf16" in blocks
    lines += [
        f"One epoch of the example's main job ({job['image_size']} px, batch {job['batch_size']}, "
        f"{job['train_images']:,} training images = {job['steps_per_epoch']} steps, on DINOv2 ViT-S/14's shape): the "
        f"median training step × {job['steps_per_epoch']} (forward + backward; no optimizer step, data loading or "
        "evaluation).",
        "",
        "| method | " + " | ".join(blocks) + (" | bf16 speed-up |" if both else " |"),
        "|---|" + "---|" * (len(blocks) + both),
    ]
    for method in next(iter(blocks.values()))["epoch"]:
        times = [f"{b['epoch'][method]['epoch_s']:.1f} s" for b in blocks.values()]
        if both:
            fp32, bf16 = (blocks[p]["epoch"][method]["epoch_s"] for p in ("fp32", "bf16"))
            times.append(f"{fp32 / bf16:.2f}x")
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(times) + " |")
    return [*lines, ""]


def render(
    accuracy: Optional[dict[str, Any]], cost: Optional[dict[str, Any]], other_costs: Optional[dict[str, Any]] = None
) -> str:
    """The page; `other_costs`: name -> cost record of another machine (docs/benchmarks_cost_<machine>.json)."""
    other_costs = other_costs or {}
    lines = [
        "# Benchmarks",
        "",
        "Assembled by `python benchmarks/report.py` from docs/benchmarks_accuracy.json and "
        "docs/benchmarks_cost.json (dates of the runs in each section); do not edit by hand.",
        "",
        "What is measured:",
        "",
        "- **Accuracy** (`benchmarks/accuracy.py`): GPT and CDC against the linear probe, full fine-tuning, LoRA, "
        "VPT-shallow and VPT-deep, CDC's ablations and VPT-shallow's insertion block, on EuroSAT and CIFAR-10 under "
        "the VTAB-1k protocol (1,000 training images, learning rates chosen on 200 of them), on the real DINOv2 "
        "ViT-S/14; every run is a command line of examples/image_classification.py.",
        "- **Cost** (`benchmarks/cost.py`): time of one training step and of inference, and activation memory, "
        "against the floor (the frozen backbone with the same number of extra tokens), random-init ViT-S/16 and "
        "ViT-B/16.",
        "",
        "## Commands and machines",
        "",
    ]
    if accuracy is not None:
        m = accuracy["machine"]
        runs = "; ".join(f"`{c['command']}`" for c in accuracy["commands"]) or "(none recorded)"
        lines.append(
            f"- Accuracy: runs {runs}; page rendered by `{accuracy['render_command']}`. Machine: "
            f"{', '.join(m['run_cpus']) or '—'}, device {', '.join(m['run_devices']) or '—'}, torch "
            f"{', '.join(m['torch']) or '—'}."
        )
    else:
        lines.append("- Accuracy: not run yet (`python benchmarks/accuracy.py --mode cpu`).")
    if cost is not None:
        s = cost.get("settings", {})
        lines.append(f"- Cost: `{s.get('command', 'python benchmarks/cost.py')}`. Machine: {machine_label(s)}.")
        for name, other in other_costs.items():
            o = other.get("settings", {})
            lines.append(
                f"- Cost on another machine: `{o.get('command', 'python benchmarks/cost.py')} --out docs/{name}`. "
                f"Machine: {machine_label(o)}."
            )
    else:
        lines.append("- Cost: not run yet (`python benchmarks/cost.py`).")
    lines += ["- This page: `python benchmarks/report.py`.", ""]
    lines += accuracy_section(accuracy)
    lines += cost_section(cost)
    for name, other in other_costs.items():
        lines += other_cost_section(name, other)
    lines += [
        "## Detailed pages",
        "",
        "- [benchmarks_accuracy.md](benchmarks_accuracy.md): per-seed values, adapter sizes, learning-rate selection, "
        "insertion sweep, run times ([plot](benchmarks_accuracy.png), [sweep plot](benchmarks_insertion_sweep.png)).",
        "- [benchmarks_cost.md](benchmarks_cost.md): every method, the number-of-prompts and batch-size sweeps "
        "([plot](benchmarks_cost.png)).",
        gpu_page_line(),
        "",
    ]
    return "\n".join(lines)


def gpu_page_line() -> str:
    """The GPU check's page once a GPU run is in (benchmarks/gpu_check.py), else how to run it."""
    if (DOCS / "benchmarks_gpu.json").is_file():
        return ("- [benchmarks_gpu.md](benchmarks_gpu.md): the GPU run: correctness on CUDA, training and inference "
                "throughput and peak memory against the floor, a short real-weights accuracy run "
                "([plot](benchmarks_gpu.png)).")
    return ("- GPU: `benchmarks/gpu_check.py` (correctness on CUDA, throughput and peak memory against the floor, a "
            "short real-weights accuracy run) is prepared and tested on the CPU (`--smoke`) but has not run on a "
            "GPU yet; [training_at_scale.md](training_at_scale.md#checking-a-gpu-machine) says how to run it.")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", default=str(DOCS / "benchmarks_accuracy.json"))
    parser.add_argument("--cost", default=str(DOCS / "benchmarks_cost.json"))
    parser.add_argument("--out", default=str(DOCS / "benchmarks.md"))
    args = parser.parse_args(argv)
    cost_path = pathlib.Path(args.cost)
    page = render(load(pathlib.Path(args.accuracy)), load(cost_path), other_cost_records(cost_path))
    pathlib.Path(args.out).write_text(page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
