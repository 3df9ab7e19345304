# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The runs: which ones each stage needs, where each lives, its command line of examples/image_classification.py,
and running them.

The stages of one dataset, each decided from the finished runs of the ones before it (``Plan.runs`` lists what is
known so far; the command line runs it, then asks again, until nothing new appears):

* ``epochs`` (only where the settings leave the epochs open): GPT and LoRA, at the middle learning rate of their
  grids, trained on the 800 and measured on the 200 val images for E and 2E epochs, over every seed. E is the first
  candidate where doubling moves every checked method's mean val accuracy by less than the threshold.
* ``precision``: the runs the settings list (GPT at the first candidate's epochs, say) in the other precision (fp32,
  or bf16 where the dataset trains in fp32), against the dataset's own runs.
* ``selection``: every method on val over its learning-rate grid (seed 0, ties: the smaller rate), grown past an end
  of it while the best rate is that end (``Settings.lr_grid_extensions``); then GPT's own knobs one after the other
  at its chosen rate (ties: the default, listed first).
* ``main``, ``ablations``, ``sweep``: trained on all 1,000 with what was chosen, test accuracy.

A run's directory is named after a hash of its settings, so a run whose results.json exists is reused, never rerun
(benchmarks/_runs.py also keeps two processes off one run). Each finished run's results.json is also copied to
benchmarks/results/accuracy-<mode>/, which is committed: a fresh clone resumes the study from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import _runs  # benchmarks/_runs.py

from .protocol import ABLATIONS, BUNDLED_TEST, DATASETS, STAGES, TITLES, Settings
from .sampling import data_name, image_folder


@dataclass(frozen=True)
class Spec:
    """One training run. split "val": train on the 800, accuracy on the 200 val; "test": train on 1,000, test."""

    dataset: str
    split: str
    method: str
    lr: float
    seed: int
    epochs: float
    layers: int = 0  # the example's --layers: prompts from 0-based block `layers` on; insertion block k = layers + 1
    ablation: str = ""
    precision: str = ""  # the example's --precision; "": the settings' `precision`
    gate_init: Optional[float] = None  # None: the example's default
    num_prompts: Optional[int] = None  # None: the settings' num_prompts

    @property
    def name(self) -> str:
        tail = f"-{self.ablation}" if self.ablation else ""
        knobs = "".join(
            f"-{tag}{value:g}" for tag, value in (("g", self.gate_init), ("p", self.num_prompts)) if value is not None
        )
        precision = f"-{self.precision}" if self.precision else ""
        return (
            f"{self.dataset}-{self.split}-{self.method}{tail}-lr{self.lr:g}{knobs}-e{self.epochs:g}"
            f"-L{self.layers}{precision}-s{self.seed}"
        )


def _se_of_difference(a: list[float], b: list[float]) -> Optional[float]:
    if len(a) < 2 or len(b) < 2:
        return None
    return (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5


def _middle(grid: tuple[float, ...]) -> float:
    return grid[len(grid) // 2]


class Plan:
    """Which runs each stage needs, where they live, and what they found."""

    def __init__(self, mode: str, settings: Settings, model: str, work: pathlib.Path, data_dir, shared, results_dir):
        self.mode, self.settings, self.model, self.work = mode, settings, model, work
        self.data_dir, self.shared = pathlib.Path(data_dir).expanduser(), pathlib.Path(shared).expanduser()
        self.results_dir = pathlib.Path(results_dir)

    # -- where runs live and what they found ---------------------------------------------------------------------

    def precision_of(self, dataset: str) -> str:
        """The `--precision` the dataset's runs ask for."""
        return self.settings.dataset_precision.get(dataset, self.settings.precision)

    def precision_tag(self, dataset: str) -> str:
        """`Spec.precision` of the dataset's runs: "" where it trains in the settings' precision."""
        precision = self.precision_of(dataset)
        return "" if precision == self.settings.precision else precision

    def spec(self, dataset: str, split: str, method: str, lr: float, seed: int, epochs: float, **knobs) -> Spec:
        """A run of the dataset's study, in the dataset's precision."""
        return Spec(dataset, split, method, lr, seed, epochs, precision=self.precision_tag(dataset), **knobs)

    def asked_precision(self, spec: Spec) -> str:
        return spec.precision or self.settings.precision

    def run_dir(self, spec: Spec) -> pathlib.Path:
        s = self.settings
        identity = {
            **dataclasses.asdict(spec),
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

    def conditions_used(self, datasets=DATASETS) -> dict[tuple[str, str], dict[str, list[str]]]:
        """(dataset, `--precision` asked) -> how its finished runs trained, as `run_conditions` says it ("bf16 on
        cpu": `--precision auto` is bf16 on one machine and fp32 on another, and the example trains on a GPU wherever
        there is one) -> the names of those runs."""
        used: dict[tuple[str, str], dict[str, list[str]]] = {}
        for dataset in datasets:
            for _, spec in self.runs(dataset, STAGES):
                results = self.results(spec)
                if results is not None:
                    group = used.setdefault((dataset, self.asked_precision(spec)), {})
                    group.setdefault(run_conditions(results), []).append(spec.name)
        return used

    def study_conditions(self) -> dict[str, dict[str, int]]:
        """Dataset -> how its study's finished runs (the precision check's other precision aside) trained -> how
        many: one entry per dataset, or a shortfall."""
        used = self.conditions_used()
        out: dict[str, dict[str, int]] = {}
        for dataset in DATASETS:
            group = used.get((dataset, self.precision_of(dataset)), {})
            if group:
                out[dataset] = {c: len(names) for c, names in sorted(group.items())}
        return out

    def conditions_conflict(self, spec: Spec, here: Callable[[str], str]) -> Optional[str]:
        """Why this machine must not make `spec`, or None. `here(precision)` is how it would train a run asked for
        `--precision precision` (e.g. "fp32 on cpu"); the dataset's finished runs asked for the same precision
        trained otherwise. Methods trained in two precisions, or on two kinds of device, would then sit in one
        table (and their training times would not compare)."""
        asked = self.asked_precision(spec)
        would = here(asked)
        group = self.conditions_used([spec.dataset]).get((spec.dataset, asked), {})
        other = {c: names for c, names in group.items() if c != would}
        if not other:
            return None
        so_far = "; ".join(f"{len(names)} in {c} (e.g. {names[0]})" for c, names in sorted(other.items()))
        return (
            f"{TITLES[spec.dataset]}'s runs asked for `--precision {asked}` ran otherwise than this machine would: "
            f"{so_far}, in {self.results_dir}. Here they would run in {would} (`--precision auto` is bf16 on a CUDA "
            "GPU with bf16 or a CPU with AVX512-BF16 or AMX, fp32 elsewhere, where bf16 is emulated and many times "
            "slower; the example trains on a GPU wherever there is one). Continue them on a machine like the one "
            "their runs used (`--report-only` works anywhere), or start a study of your own here with "
            "`--results-dir DIR --out DIR/benchmarks_accuracy --work-dir DIR/work`."
        )

    def _accuracies(self, specs: list[Spec]) -> Optional[list[float]]:
        runs = [self.results(spec) for spec in specs]
        return None if any(r is None for r in runs) else [r["accuracy"] for r in runs]

    # -- the stages ----------------------------------------------------------------------------------------------

    def epoch_check(self, dataset: str) -> tuple[list[dict[str, Any]], Optional[float], list[Spec]]:
        """(rows of the check so far, the chosen epochs or None, the runs it needs next)."""
        s = self.settings
        if s.epochs is not None:
            return [], s.epochs, []
        rows = []
        for epochs in s.epoch_candidates:
            needed, row = [], {"epochs": epochs, "methods": {}}
            for method in s.epoch_check_methods:
                lr = _middle(s.lr_grids[method])
                at = {
                    e: [self.spec(dataset, "val", method, lr, seed, e) for seed in s.seeds]
                    for e in (epochs, 2 * epochs)
                }
                found = {e: self._accuracies(specs) for e, specs in at.items()}
                needed += [spec for e, specs in at.items() if found[e] is None for spec in specs]
                if all(v is not None for v in found.values()):
                    means = {e: statistics.fmean(v) for e, v in found.items()}
                    se = _se_of_difference(found[epochs], found[2 * epochs])  # None with one seed
                    row["methods"][method] = {
                        "lr": lr,
                        "accuracy": means[epochs],
                        "accuracy_doubled": means[2 * epochs],
                        "change_points": 100 * (means[2 * epochs] - means[epochs]),
                        "per_seed": found[epochs],
                        "per_seed_doubled": found[2 * epochs],
                        # the standard error of the change of two means over the seeds: how much of it is noise
                        "change_se_points": None if se is None else 100 * se,
                    }
            rows.append(row)
            if needed:
                return rows, None, needed
            row["converged"] = all(abs(m["change_points"]) < s.converged_points for m in row["methods"].values())
            if row["converged"]:
                return rows, epochs, []
        return rows, s.epoch_candidates[-1] * 2, []  # none converged: the longest run made, flagged on the page

    def precision_runs(self, dataset: str) -> list[tuple[Spec, Spec]]:
        """(the dataset's precision, the other) pairs of runs on val that `settings.precision_check` lists, the other
        being fp32, or the settings' precision where the dataset trains in fp32."""
        s = self.settings
        own = self.precision_of(dataset)
        other = "fp32" if own != "fp32" else ("" if s.precision != "fp32" else "bf16")  # "": the settings' precision
        pairs = []
        for method, epochs in s.precision_check.get(dataset, ()):
            for seed in s.seeds:
                spec = self.spec(dataset, "val", method, _middle(s.lr_grids[method]), seed, epochs)
                pairs.append((spec, dataclasses.replace(spec, precision=other)))
        return pairs

    def selection(self, dataset: str, epochs: float) -> tuple[Optional[dict[str, dict[str, Any]]], list[Spec]]:
        """(method -> what was chosen on val, or None until all of it is known; every selection run known so far)."""
        s = self.settings
        specs: list[Spec] = []
        chosen: dict[str, dict[str, Any]] = {}
        for method in s.methods:
            candidates, best = self._lr_choice(dataset, method, epochs)
            specs += candidates
            if best is not None:
                chosen[method] = {"spec": best[0], "val_accuracy": best[1]}
        if "gpt" in chosen:  # GPT's knobs go on beside the other methods' rates
            for knob, values in s.gpt_knobs.items():
                incumbent = chosen["gpt"]["spec"]
                # the first value is the default: the incumbent run itself, not a copy of it with the value spelt out
                candidates = [incumbent] + [dataclasses.replace(incumbent, **{knob: v}) for v in values[1:]]
                specs += [c for c in candidates if c not in specs]
                best = self._best(candidates)
                if best is None:
                    return None, specs
                chosen["gpt"] = {"spec": best[0], "val_accuracy": best[1]}
        if len(chosen) < len(s.methods):
            return None, specs
        return {m: {**_knobs(c["spec"]), "val_accuracy": c["val_accuracy"]} for m, c in chosen.items()}, specs

    def lr_grid(self, dataset: str, method: str, epochs: float) -> tuple[float, ...]:
        """The method's learning rates on val, ascending: the settings' grid, and past whichever end of it the best
        rate so far is (once that grid's runs are done), up to `lr_grid_extensions` more rates."""
        return tuple(spec.lr for spec in self._lr_choice(dataset, method, epochs)[0])

    def _lr_choice(self, dataset: str, method: str, epochs: float) -> tuple[list[Spec], Optional[tuple[Spec, float]]]:
        """(the method's selection runs over `lr_grid`, the best of them or None until all are done)."""
        s = self.settings
        grid = tuple(s.lr_grids[method])
        while True:
            candidates = [self.spec(dataset, "val", method, lr, s.seeds[0], epochs) for lr in grid]
            best = self._best(candidates)
            grown = len(grid) - len(s.lr_grids[method])
            if best is None or grown >= s.lr_grid_extensions or len(grid) < 2 or best[0].lr not in (grid[0], grid[-1]):
                return candidates, best
            grid = (*grid, next_rate(grid[-1], up=True)) if best[0].lr == grid[-1] else (next_rate(grid[0]), *grid)

    def _best(self, candidates: list[Spec]) -> Optional[tuple[Spec, float]]:
        """The most accurate of `candidates` (ties: the first listed), or None until all are done."""
        accuracies = self._accuracies(candidates)
        if accuracies is None:
            return None
        best = max(range(len(candidates)), key=lambda i: (accuracies[i], -i))
        return candidates[best], accuracies[best]

    def final(self, dataset: str, epochs: float, chosen: dict[str, dict[str, Any]]) -> list[tuple[str, Spec]]:
        """(stage, spec) of the test-split runs, in the order they are run. Sweep k = 1 is main's VPT-shallow."""
        s = self.settings

        def spec(method: str, seed: int, **extra) -> Spec:
            knobs = {k: v for k, v in chosen[method].items() if k in ("lr", "gate_init", "num_prompts")}
            return self.spec(dataset, "test", method, seed=seed, epochs=epochs, **knobs, **extra)

        stages = [("main", spec(m, seed)) for seed in s.seeds for m in s.methods]
        stages += [("ablations", spec("cdc", seed, ablation=a)) for seed in s.seeds for a in s.ablations]
        if "vpt-shallow" in chosen:  # the sweep moves VPT-shallow's prompts
            sweep = [spec("vpt-shallow", seed, layers=k - 1) for seed in s.sweep_seeds for k in s.sweep_blocks]
            stages += [("sweep", run) for run in sweep]
        return stages

    def runs(self, dataset: str, stages) -> list[tuple[str, Spec]]:
        """Every run of `stages` that is known so far for `dataset` (done or not), as (stage, spec)."""
        out: list[tuple[str, Spec]] = []
        rows, epochs, _ = self.epoch_check(dataset)
        if "epochs" in stages:  # every run of the candidates looked at so far, the one still open included
            s = self.settings
            out += [
                ("epochs", self.spec(dataset, "val", m, _middle(s.lr_grids[m]), seed, e))
                for row in rows
                for m in s.epoch_check_methods
                for e in (row["epochs"], 2 * row["epochs"])
                for seed in s.seeds
            ]
        if "precision" in stages:
            out += [("precision", spec) for pair in self.precision_runs(dataset) for spec in pair]
        if epochs is None:
            return _unique(out)
        chosen, selection = self.selection(dataset, epochs)
        if "selection" in stages:
            out += [("selection", spec) for spec in selection]
        if chosen is not None:
            out += [(stage, spec) for stage, spec in self.final(dataset, epochs, chosen) if stage in stages]
        return _unique(out)

    def unused_results(self) -> list[pathlib.Path]:
        """The committed per-run results that no run of the protocol names: runs made before a setting changed."""
        used = {self.record_file(spec) for d in DATASETS for _, spec in self.runs(d, STAGES)}
        return [p for p in sorted(self.results_dir.glob("*.json")) if p not in used]

    def probe_carriers(self, specs: list[Spec]) -> set[Spec]:
        """The runs that also fit the linear probe: the first selection run of a dataset, and each seed's GPT run."""
        first_val = {}
        for s in specs:
            if s.split == "val" and s.precision == self.precision_tag(s.dataset):
                first_val.setdefault(s.dataset, s)
        return {*first_val.values(), *(s for s in specs if s.split == "test" and s.method == "gpt" and not s.ablation)}

    def argv(self, spec: Spec, probe: bool) -> list[str]:
        s = self.settings
        n = s.test_images[spec.dataset]
        if spec.dataset == "eurosat" and n == BUNDLED_TEST:
            data = ["--dataset", "eurosat-vtab1k", "--eval-split", spec.split]  # the example's bundled subset
        else:
            data = ["--dataset", str(image_folder(spec.dataset, n, self.data_dir, self.shared) / spec.split)]
        num_prompts = s.num_prompts if spec.num_prompts is None else spec.num_prompts
        argv = [
            *("--model", self.model, "--method", spec.method, *data),
            *("--lr", f"{spec.lr:g}", "--head-lr", f"{s.head_lr:g}", "--seed", str(spec.seed)),
            *("--image-size", str(s.image_size), "--epochs", f"{spec.epochs:g}", "--batch-size", str(s.batch_size)),
            *("--eval-batch-size", str(s.eval_batch_size), "--num-prompts", str(num_prompts)),
            *("--layers", str(spec.layers), "--num-workers", str(s.num_workers), "--no-progress"),
            *("--precision", spec.precision or s.precision),
        ]
        if spec.gate_init is not None:
            argv += ["--gate-init", f"{spec.gate_init:g}"]
        if spec.ablation:
            argv.append(ABLATIONS[spec.ablation][0])
        if s.max_samples:
            argv += ["--max-train-samples", str(s.max_samples), "--max-eval-samples", str(s.max_samples)]
        if not probe:
            argv.append("--no-linear-probe")
        return argv


def conditions(precision: Optional[str], device: str) -> str:
    """How a run trains, as the study compares it: "<precision> on cpu" or "<precision> on cuda"."""
    return f"{precision} on {'cpu' if device == 'cpu' else 'cuda'}"


def run_conditions(results: dict[str, Any]) -> str:
    """`conditions` of a finished run, from its results.json (its device is "cpu" or the GPU's name)."""
    return conditions(results.get("precision"), results.get("environment", {}).get("device", "cpu"))


def next_rate(lr: float, up: bool = False) -> float:
    """The learning rate next to `lr` on the 1-3-10 ladder (1e-3, 3e-3, 1e-2, ...), above it or below it; off the
    ladder, a factor of sqrt(10) away."""
    mantissa, exponent = f"{lr:e}".split("e")
    m, e = float(mantissa), int(exponent)
    if m == 1.0:
        return float(f"3e{e}") if up else float(f"3e{e - 1}")
    if m == 3.0:
        return float(f"1e{e + 1}") if up else float(f"1e{e}")
    return lr * 10**0.5 if up else lr / 10**0.5


def _knobs(spec: Spec) -> dict[str, Any]:
    return {"lr": spec.lr, "gate_init": spec.gate_init, "num_prompts": spec.num_prompts}


def _unique(runs: list[tuple[str, Spec]]) -> list[tuple[str, Spec]]:
    """The first (stage, spec) of each spec: a run shared by two stages (the epoch check's middle learning rate is
    also a selection run; sweep k = 1 is main's VPT-shallow) is listed, and run, once."""
    seen: set[Spec] = set()
    out = []
    for stage, spec in runs:
        if spec not in seen:
            seen.add(spec)
            out.append((stage, spec))
    return out


def execute(plan: Plan, specs: list[Spec], jobs: int) -> list[str]:
    """Run (or reuse) the specs; the names of those that failed."""
    specs = [s for s in dict.fromkeys(specs) if plan.results(s) is None]
    carriers = plan.probe_carriers(specs)
    by_name = {s.name: s for s in specs}
    todo = [_runs.Job(s.name, plan.argv(s, s in carriers), plan.run_dir(s)) for s in specs]
    print(f"[accuracy] {len(todo)} runs to do", flush=True)
    failed: list[str] = []
    count = [0]

    def on_done(job: _runs.Job, results: Optional[dict[str, Any]]) -> None:
        if results is None:
            failed.append(job.name)
            return
        spec = by_name[job.name]
        plan.keep(spec, results)
        count[0] += 1
        probe, harness = results.get("linear_probe"), results["harness"]
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
