# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The runs: which ones each stage needs, where each lives, its command line of examples/image_classification.py,
and running them.

Stage ``selection`` trains on the 800 and measures the 200 val images for every learning rate of a method's grid;
``Plan.choose`` picks the best (ties: the smaller rate). Stages ``main``, ``ablations`` and ``sweep`` then train on
all 1,000 with the chosen rates and report test accuracy. A run's directory is named after a hash of its settings,
so a run whose results.json exists is reused, never rerun (benchmarks/_runs.py also keeps two processes off one run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from dataclasses import dataclass
from typing import Any, Optional

import _runs  # benchmarks/_runs.py

from .protocol import ABLATIONS, BUNDLED_TEST, Settings
from .sampling import data_name, image_folder


@dataclass(frozen=True)
class Spec:
    """One training run. split "val": train on the 800, accuracy on the 200 val; "test": train on 1,000, test."""

    dataset: str
    split: str
    method: str
    lr: float
    seed: int
    layers: int = 0  # the example's --layers: prompts from 0-based block `layers` on; insertion block k = layers + 1
    ablation: str = ""

    @property
    def name(self) -> str:
        tail = f"-{self.ablation}" if self.ablation else ""
        return f"{self.dataset}-{self.split}-{self.method}{tail}-lr{self.lr:g}-L{self.layers}-s{self.seed}"


class Plan:
    """Which runs each stage needs, where they live, and what they found."""

    def __init__(self, mode: str, settings: Settings, model: str, work: pathlib.Path, data_dir, shared):
        self.mode, self.settings, self.model, self.work = mode, settings, model, work
        self.data_dir, self.shared = pathlib.Path(data_dir).expanduser(), pathlib.Path(shared).expanduser()

    def run_dir(self, spec: Spec) -> pathlib.Path:
        s = self.settings
        identity = {
            **dataclasses.asdict(spec),
            "model": pathlib.Path(self.model).name,
            "data": data_name(spec.dataset, s.test_images[spec.dataset]),
            **{k: getattr(s, k) for k in ("image_size", "epochs", "batch_size", "num_prompts", "head_lr")},
            "max_samples": s.max_samples,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
        return self.work / "runs" / f"{spec.name}-{digest}"

    def results(self, spec: Spec) -> Optional[dict[str, Any]]:
        return _runs.read_results(self.run_dir(spec))

    def selection(self, dataset: str) -> list[Spec]:
        seed = self.settings.seeds[0]
        grids = self.settings.lr_grids
        return [
            Spec(dataset, "val", m, lr, seed) for m in self.settings.methods if len(grids[m]) > 1 for lr in grids[m]
        ]

    def choose(self, dataset: str) -> Optional[dict[str, dict[str, Any]]]:
        """method -> {"lr", "val_accuracy"} chosen on `dataset`'s val split; None until every selection run is done."""
        chosen = {}
        for method in self.settings.methods:
            grid = self.settings.lr_grids[method]
            if len(grid) == 1:
                chosen[method] = {"lr": grid[0], "val_accuracy": None}
                continue
            runs = [self.results(Spec(dataset, "val", method, lr, self.settings.seeds[0])) for lr in grid]
            if any(r is None for r in runs):
                return None
            best = max(range(len(grid)), key=lambda i: (runs[i]["accuracy"], -i))
            chosen[method] = {"lr": grid[best], "val_accuracy": runs[best]["accuracy"]}
        return chosen

    def final(self, dataset: str, lrs: dict[str, float]) -> list[tuple[str, Spec]]:
        """(stage, spec) of the test-split runs, in the order they are run. Sweep k = 1 is main's VPT-shallow."""
        s = self.settings
        stages = [("main", Spec(dataset, "test", m, lrs[m], seed)) for seed in s.seeds for m in s.methods]
        stages += [
            ("ablations", Spec(dataset, "test", "cdc", lrs["cdc"], seed, ablation=a))
            for seed in s.seeds
            for a in s.ablations
        ]
        stages += [
            ("sweep", Spec(dataset, "test", "vpt-shallow", lrs["vpt-shallow"], seed, layers=k - 1))
            for seed in s.sweep_seeds
            for k in s.sweep_blocks
        ]
        return stages

    def probe_carriers(self, specs: list[Spec]) -> set[Spec]:
        """The runs that also fit the linear probe: the first selection run of a dataset, and each seed's GPT run."""
        first_val = {}
        for s in specs:
            if s.split == "val":
                first_val.setdefault(s.dataset, s)
        return {*first_val.values(), *(s for s in specs if s.split == "test" and s.method == "gpt" and not s.ablation)}

    def argv(self, spec: Spec, probe: bool) -> list[str]:
        s = self.settings
        n = s.test_images[spec.dataset]
        if spec.dataset == "eurosat" and n == BUNDLED_TEST:
            data = ["--dataset", "eurosat-vtab1k", "--eval-split", spec.split]  # the example's bundled subset
        else:
            data = ["--dataset", str(image_folder(spec.dataset, n, self.data_dir, self.shared) / spec.split)]
        argv = [
            *("--model", self.model, "--method", spec.method, *data),
            *("--lr", f"{spec.lr:g}", "--head-lr", f"{s.head_lr:g}", "--seed", str(spec.seed)),
            *("--image-size", str(s.image_size), "--epochs", f"{s.epochs:g}", "--batch-size", str(s.batch_size)),
            *("--eval-batch-size", str(s.eval_batch_size), "--num-prompts", str(s.num_prompts)),
            *("--layers", str(spec.layers), "--num-workers", str(s.num_workers), "--no-progress"),
        ]
        if spec.ablation:
            argv.append(ABLATIONS[spec.ablation][0])
        if s.max_samples:
            argv += ["--max-train-samples", str(s.max_samples), "--max-eval-samples", str(s.max_samples)]
        if not probe:
            argv.append("--no-linear-probe")
        return argv


def execute(plan: Plan, specs: list[Spec], jobs: int) -> list[str]:
    """Run (or reuse) the specs; the names of those that failed."""
    specs = list(dict.fromkeys(specs))  # sweep k = 1 and main's VPT-shallow are one run
    carriers = plan.probe_carriers(specs)
    by_name = {s.name: s for s in specs}
    todo = [_runs.Job(s.name, plan.argv(s, s in carriers), plan.run_dir(s)) for s in specs]
    reused = {job.name for job in todo if _runs.read_results(job.out) is not None}
    print(f"[accuracy] {len(todo)} runs, {len(reused)} already done (reused)", flush=True)
    failed: list[str] = []
    count = [len(reused)]

    def on_done(job: _runs.Job, results: Optional[dict[str, Any]]) -> None:
        if results is None:
            failed.append(job.name)
            return
        if job.name in reused:
            return
        count[0] += 1
        spec, probe, harness = by_name[job.name], results.get("linear_probe"), results["harness"]
        extra = f", linear probe {probe['accuracy']:.4f}" if probe else ""
        if harness.get("cpu_s"):
            took = f"run {harness['run_s']:.0f} s, CPU {harness['cpu_s']:.0f} s"
        else:
            took = "run by another process"
        print(
            f"[accuracy] {count[0]}/{len(todo)} {spec.name}: {spec.split} accuracy {results['accuracy']:.4f}{extra} "
            f"({took}; training {results['timings_s']['train_s']:.0f} s)",
            flush=True,
        )

    _runs.run_jobs(todo, jobs, on_done)
    return failed
