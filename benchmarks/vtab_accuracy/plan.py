# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The runs: which ones each stage needs (benchmarks/accuracy.py names them), where each lives, its command
line of examples/image_classification.py, and running them.

``Plan.runs`` lists the runs known so far: each stage of a dataset is decided from the finished runs of the ones
before it. A run's directory is named after a hash of its settings, so a run whose results.json exists is reused,
never rerun (benchmarks/_runs.py also keeps two processes off one run); its results.json is also copied into the
committed benchmarks/results/accuracy-<mode>/, from which a fresh clone resumes the study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import statistics
from typing import Any, Optional

import _runs  # benchmarks/_runs.py

from .protocol import (
    ABLATIONS,
    BASE_METHODS,
    BUNDLED_TEST,
    DATASETS,
    FIXED_KNOBS,
    INHERITS_KNOBS,
    KNOB_FLAGS,
    STAGES,
    Settings,
)
from .sampling import data_name, image_folder


@dataclasses.dataclass(frozen=True)
class Spec:
    """One training run. split "val": train on the 800, accuracy on the 200 val; "test": train on 1,000, test."""

    dataset: str
    split: str
    method: str
    lr: float
    seed: int
    epochs: float
    layers: int = 0  # the example's --layers: prompts from 0-based block `layers` on; insertion block k = layers + 1
    ablation: str = ""  # a key of ABLATIONS (method "cdc")
    precision: str = ""  # the example's --precision; "": the settings' `precision`
    # The knobs (KNOB_FLAGS); None: the method's default, the first value of its grid in `Settings.knobs`
    gate_init: Optional[float] = None  # GPT's (None: the example's default)
    num_prompts: Optional[int] = None  # None: the settings' num_prompts
    prompt_init: Optional[str] = None  # the SPT rows' variant
    fourier_fraction: Optional[float] = None  # VFPT's alpha

    @property
    def name(self) -> str:
        tail = f"-{self.ablation}" if self.ablation else ""
        tags = (("g", self.gate_init), ("p", self.num_prompts), ("i", self.prompt_init), ("a", self.fourier_fraction))
        knobs = "".join(f"-{t}{v}" if isinstance(v, str) else f"-{t}{v:g}" for t, v in tags if v is not None)
        precision = f"-{self.precision}" if self.precision else ""
        return (f"{self.dataset}-{self.split}-{self.method}{tail}-lr{self.lr:g}{knobs}-e{self.epochs:g}"
                f"-L{self.layers}{precision}-s{self.seed}")


def _middle(grid: tuple[float, ...]) -> float:
    return grid[len(grid) // 2]


# Spec fields added after runs were committed: left out of a run's identity while unset, so no committed run's
# directory (a hash of its identity) changes
LATER_FIELDS = ("prompt_init", "fourier_fraction")
KNOBS = tuple(KNOB_FLAGS)


def knob_grid(settings: Settings, method: str, knob: str) -> tuple:
    """The values the method's `knob` is tuned over (its own, else those of the method it takes its knobs from)."""
    return settings.knobs.get(method, {}).get(knob) or settings.knobs.get(INHERITS_KNOBS.get(method), {}).get(knob, ())


def knob_value(settings: Settings, spec: Spec, knob: str):
    """What the spec's run sets `knob` to: the spec's value, else what its row fixes, else the first of its grid, else
    None (the example's default)."""
    value = getattr(spec, knob)
    if value is None:
        value = FIXED_KNOBS.get(spec.method, {}).get(knob)
    if value is None:
        value = next(iter(knob_grid(settings, spec.method, knob)), None)
    return value


class Plan:
    """Which runs each stage needs, where they live, and what they found."""

    def __init__(self, mode: str, settings: Settings, model: str, work: pathlib.Path, data_dir, shared, results_dir):
        self.mode, self.settings, self.model, self.work = mode, settings, model, work
        self.data_dir, self.shared = pathlib.Path(data_dir).expanduser(), pathlib.Path(shared).expanduser()
        self.results_dir = pathlib.Path(results_dir)

    def precision_of(self, dataset: str) -> str:
        """The `--precision` the dataset's runs ask for."""
        return self.settings.dataset_precision.get(dataset, self.settings.precision)

    def asked_precision(self, spec: Spec) -> str:
        return spec.precision or self.settings.precision

    def spec(self, dataset: str, split: str, method: str, lr: float, seed: int, epochs: float, **knobs) -> Spec:
        """A run of the dataset's study, in the dataset's precision (`Spec.precision` "" where it is the settings')."""
        precision = self.precision_of(dataset)
        tag = "" if precision == self.settings.precision else precision
        return Spec(dataset, split, method, lr, seed, epochs, precision=tag, **knobs)

    def run_dir(self, spec: Spec) -> pathlib.Path:
        s = self.settings
        identity = {
            **{k: v for k, v in dataclasses.asdict(spec).items() if v is not None or k not in LATER_FIELDS},
            "model": pathlib.Path(self.model).name,
            "data": data_name(spec.dataset, s.test_images[spec.dataset]),
            **{k: getattr(s, k) for k in ("image_size", "batch_size", "num_prompts", "head_lr", "precision")},
            "max_samples": s.max_samples,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
        # The settings' "precision" replaces the spec's in `identity`, so a run and its twin in the other precision
        # share a digest; the name tells them apart (it carries `spec.precision`). Hashing the spec's too would rename
        # every committed twin, and the study would run them again.
        return self.work / "runs" / f"{spec.name}-{digest}"

    def record_file(self, spec: Spec) -> pathlib.Path:
        return self.results_dir / f"{self.run_dir(spec).name}.json"

    def results(self, spec: Spec) -> Optional[dict[str, Any]]:
        """The run's results (with the harness' measurements): the committed copy, else its run directory's (which
        is then copied into the committed folder)."""
        try:
            return json.loads(self.record_file(spec).read_text())
        except (OSError, ValueError):
            pass
        results = _runs.read_results(self.run_dir(spec))
        if results is not None:
            self.keep(spec, results)
        return results

    def keep(self, spec: Spec, results: dict[str, Any]) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.record_file(spec).with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
        tmp.replace(self.record_file(spec))

    def trained(self, dataset: str) -> dict[str, dict[str, list[str]]]:
        """`--precision` asked -> how the dataset's finished runs asked for it trained (`run_conditions`: `auto` is
        bf16 on one machine and fp32 on another, and the example trains on a GPU wherever there is one) -> names."""
        used: dict[str, dict[str, list[str]]] = {}
        for _, spec in self.runs(dataset, STAGES):
            results = self.results(spec)
            if results is not None:
                group = used.setdefault(self.asked_precision(spec), {})
                group.setdefault(run_conditions(results), []).append(spec.name)
        return used

    def _accuracies(self, specs: list[Spec]) -> Optional[list[float]]:
        runs = [self.results(spec) for spec in specs]
        return None if any(r is None for r in runs) else [r["accuracy"] for r in runs]

    def _best(self, candidates: list[Spec]) -> Optional[tuple[Spec, float]]:
        """The most accurate of `candidates` (ties: the first listed), or None until all are done."""
        accuracies = self._accuracies(candidates)
        if accuracies is None:
            return None
        best = max(range(len(candidates)), key=lambda i: (accuracies[i], -i))
        return candidates[best], accuracies[best]

    def epoch_check(self, dataset: str) -> tuple[list[dict[str, Any]], Optional[float]]:
        """(rows of the check so far, the chosen epochs or None while a candidate's runs are missing)."""
        s = self.settings
        if s.epochs is not None:
            return [], s.epochs
        rows = []
        for epochs in s.epoch_candidates:
            row: dict[str, Any] = {"epochs": epochs, "methods": {}}
            rows.append(row)
            for method in s.epoch_check_methods:
                lr = _middle(s.lr_grids[method])
                at = [self._accuracies([self.spec(dataset, "val", method, lr, seed, e) for seed in s.seeds])
                      for e in (epochs, 2 * epochs)]
                if None in at:
                    continue
                a, b = at
                mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
                # the standard error of the change of two means over the seeds (None with one seed): how much is noise
                se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5 if len(a) > 1 else None
                row["methods"][method] = {
                    "lr": lr, "accuracy": mean_a, "accuracy_doubled": mean_b, "change_points": 100 * (mean_b - mean_a),
                    "per_seed": a, "per_seed_doubled": b, "change_se_points": None if se is None else 100 * se}
            if len(row["methods"]) < len(s.epoch_check_methods):
                return rows, None
            row["converged"] = all(abs(m["change_points"]) < s.converged_points for m in row["methods"].values())
            if row["converged"]:
                return rows, epochs
        return rows, s.epoch_candidates[-1] * 2  # none converged: the longest run made, flagged on the page

    def precision_runs(self, dataset: str) -> list[tuple[Spec, Spec]]:
        """(the dataset's precision, the other) pairs of runs on val that `settings.precision_check` lists, the other
        being fp32, or the settings' precision where the dataset trains in fp32."""
        s = self.settings
        other = "fp32" if self.precision_of(dataset) != "fp32" else ("" if s.precision != "fp32" else "bf16")
        pairs = []
        for method, epochs in s.precision_check.get(dataset, ()):
            for seed in s.seeds:
                spec = self.spec(dataset, "val", method, _middle(s.lr_grids[method]), seed, epochs)
                pairs.append((spec, dataclasses.replace(spec, precision=other)))
        return pairs

    def selection(self, dataset: str, epochs: float) -> tuple[dict[str, dict[str, Any]], list[Spec]]:
        """(method -> what was chosen on val, for the methods whose selection is complete; every selection run known so
        far, method by method).

        Each method's learning rates on seed 0; where the best is an end of the grid (once its runs are done), the next
        rate past that end too, up to `lr_grid_extensions` more. Then the method's knobs at its chosen rate, one after
        the other. A row that takes its knobs from another method (INHERITS_KNOBS) starts once that one's are chosen."""
        s, specs, chosen = self.settings, [], {}
        for method in s.methods:
            source = INHERITS_KNOBS.get(method)
            if source in s.methods and source not in chosen:
                continue
            # the source's chosen knobs, except those this row tunes itself
            base = {k: chosen[source][k] for k in KNOBS
                    if source in chosen and k not in s.knobs.get(method, {}) and chosen[source][k] is not None}
            grid = s.lr_grids[method]
            while True:
                candidates = [self.spec(dataset, "val", method, lr, s.seeds[0], epochs, **base) for lr in grid]
                best = self._best(candidates)
                if (best is None or len(grid) - len(s.lr_grids[method]) >= s.lr_grid_extensions or len(grid) < 2
                        or best[0].lr not in (grid[0], grid[-1])):
                    break
                grid = (*grid, next_rate(grid[-1], up=True)) if best[0].lr == grid[-1] else (next_rate(grid[0]), *grid)
            specs += candidates
            for knob, values in s.knobs.get(method, {}).items() if best is not None else ():
                incumbent = best[0]
                # the first value is the default: the incumbent run itself, not a copy of it with the value spelt out
                candidates = [incumbent] + [dataclasses.replace(incumbent, **{knob: v}) for v in values[1:]]
                specs += [c for c in candidates if c not in specs]
                best = self._best(candidates)
                if best is None:
                    break
            if best is not None:
                run, accuracy = best
                chosen[method] = {"lr": run.lr, **{k: getattr(run, k) for k in KNOBS}, "val_accuracy": accuracy}
        return chosen, specs

    def final(self, dataset: str, epochs: float, chosen: dict[str, dict[str, Any]]) -> list[tuple[str, Spec]]:
        """(stage, spec) of the test-split runs of the chosen methods, method by method. Sweep k = 1 is main's
        VPT-shallow."""
        s = self.settings

        def spec(method: str, seed: int, **extra) -> Spec:
            knobs = {k: v for k, v in chosen[method].items() if k in ("lr", *KNOBS)}
            return self.spec(dataset, "test", method, seed=seed, epochs=epochs, **knobs, **extra)

        stages = [("main", spec(m, seed)) for m in s.methods if m in chosen for seed in s.seeds]
        if "cdc" in chosen:
            stages += [("ablations", spec("cdc", seed, ablation=a)) for seed in s.seeds for a in s.ablations]
        if "vpt-shallow" in chosen:  # the sweep moves VPT-shallow's prompts
            sweep = [spec("vpt-shallow", seed, layers=k - 1) for seed in s.sweep_seeds for k in s.sweep_blocks]
            stages += [("sweep", run) for run in sweep]
        return stages

    def runs(self, dataset: str, stages) -> list[tuple[str, Spec]]:
        """Every run of `stages` known so far for `dataset` (done or not), as (stage, spec), each spec once: a run
        shared by two stages (the epoch check's middle learning rate is also a selection run; sweep k = 1 is main's
        VPT-shallow) is listed, and run, once, under the first."""
        s, out = self.settings, []
        rows, epochs = self.epoch_check(dataset)
        if "epochs" in stages:  # every run of the candidates looked at so far, the one still open included
            out += [("epochs", self.spec(dataset, "val", m, _middle(s.lr_grids[m]), seed, e))
                    for row in rows for m in s.epoch_check_methods for e in (row["epochs"], 2 * row["epochs"])
                    for seed in s.seeds]
        if "precision" in stages:
            out += [("precision", spec) for pair in self.precision_runs(dataset) for spec in pair]
        if epochs is not None:  # method by method: its selection, then its test runs (then CDC's ablations, the sweep)
            chosen, selection = self.selection(dataset, epochs)
            final = self.final(dataset, epochs, chosen)
            for method in s.methods:
                if "selection" in stages:
                    out += [("selection", spec) for spec in selection if spec.method == method]
                if "main" in stages:
                    out += [(stage, spec) for stage, spec in final if stage == "main" and spec.method == method]
            out += [(stage, spec) for stage, spec in final if stage != "main" and stage in stages]
        first: dict[Spec, str] = {}
        for stage, spec in out:
            first.setdefault(spec, stage)
        return [(stage, spec) for spec, stage in first.items()]

    def unused_results(self) -> list[pathlib.Path]:
        """The committed per-run results that no run of the protocol names: runs made before a setting changed."""
        used = {self.record_file(spec) for d in DATASETS for _, spec in self.runs(d, STAGES)}
        return [p for p in sorted(self.results_dir.glob("*.json")) if p not in used]

    def argv(self, spec: Spec, probe: bool) -> list[str]:
        s = self.settings
        n = s.test_images[spec.dataset]
        if spec.dataset == "eurosat" and n == BUNDLED_TEST:
            data = ["--dataset", "eurosat-vtab1k", "--eval-split", spec.split]  # the example's bundled subset
        else:
            data = ["--dataset", str(image_folder(spec.dataset, n, self.data_dir, self.shared) / spec.split)]
        method = ABLATIONS[spec.ablation][0] if spec.ablation else BASE_METHODS.get(spec.method, spec.method)
        argv = [
            *("--model", self.model, "--method", method, *data),
            *("--lr", f"{spec.lr:g}", "--head-lr", f"{s.head_lr:g}", "--seed", str(spec.seed)),
            *("--image-size", str(s.image_size), "--epochs", f"{spec.epochs:g}", "--batch-size", str(s.batch_size)),
            *("--eval-batch-size", str(s.eval_batch_size), "--num-prompts", str(spec.num_prompts or s.num_prompts)),
            *("--layers", str(spec.layers), "--no-progress", "--precision", spec.precision or s.precision),
        ]
        for knob, flag in KNOB_FLAGS.items():
            value = None if knob == "num_prompts" else knob_value(s, spec, knob)  # num_prompts: always given above
            if value is not None:
                argv += [flag, value if isinstance(value, str) else f"{value:g}"]
        if s.max_samples:
            argv += ["--max-train-samples", str(s.max_samples), "--max-eval-samples", str(s.max_samples)]
        return argv if probe else [*argv, "--no-linear-probe"]


def run_conditions(results: dict[str, Any]) -> str:
    """How a finished run trained, as the study compares runs: "<precision> on cpu" or "<precision> on cuda" (its
    results.json names the device "cpu" or the GPU)."""
    device = results.get("environment", {}).get("device", "cpu")
    return f"{results.get('precision')} on {'cpu' if device == 'cpu' else 'cuda'}"


def next_rate(lr: float, up: bool = False) -> float:
    """The learning rate next to `lr` on the 1-3-10 ladder (1e-3, 3e-3, 1e-2, ...), above it or below it; off the
    ladder, a factor of sqrt(10) away."""
    mantissa, exponent = f"{lr:e}".split("e")
    m, e = float(mantissa), int(exponent)
    if m == 1.0:
        return float(f"3e{e}" if up else f"3e{e - 1}")
    if m == 3.0:
        return float(f"1e{e + 1}" if up else f"1e{e}")
    return lr * 10**0.5 if up else lr / 10**0.5


def probe_carriers(plan: Plan, specs: list[Spec]) -> set[Spec]:
    """The runs among `specs` that also fit the linear probe: each dataset's first run on val in its own precision,
    in the order of the plan (the selection page shows its probe), and each seed's GPT test run (the main table's
    linear probe)."""
    first_val = set()
    for dataset in {s.dataset for s in specs}:
        own = (s for _, s in plan.runs(dataset, STAGES)
               if s.split == "val" and plan.asked_precision(s) == plan.precision_of(s.dataset))
        first_val.add(next(own, None))
    return {s for s in specs if s in first_val or (s.split == "test" and s.method == "gpt" and not s.ablation)}


def execute(plan: Plan, specs: list[Spec], jobs: int) -> list[str]:
    """Run (or reuse) the specs, keeping each one's results as it finishes; the names of those that failed."""
    specs = [s for s in dict.fromkeys(specs) if plan.results(s) is None]
    carriers, by_name = probe_carriers(plan, specs), {s.name: s for s in specs}

    def on_done(job: _runs.Job, results: Optional[dict[str, Any]]) -> None:
        if results is not None:
            plan.keep(by_name[job.name], results)
            probe = f", linear probe {results['linear_probe']['accuracy']:.4f}" if results.get("linear_probe") else ""
            print(f"[accuracy] {job.name}: accuracy {results['accuracy']:.4f}{probe} (training "
                  f"{results['timings_s']['train_s']:.0f} s)", flush=True)

    print(f"[accuracy] {len(specs)} runs to do", flush=True)
    jobs_ = [_runs.Job(s.name, plan.argv(s, s in carriers), plan.run_dir(s)) for s in specs]
    return [name for name, results in _runs.run_jobs(jobs_, jobs, on_done).items() if results is None]
