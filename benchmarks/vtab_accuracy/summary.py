# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The record the pages are written from: every run's numbers (done or not), the tables over seeds, the findings
(where GPT and CDC lose) and the run times. The committed docs/benchmarks_accuracy.json is this record."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import statistics
from typing import Any, Optional

import _runs  # benchmarks/_runs.py

from .plan import KNOBS, Plan, Spec
from .protocol import ABLATIONS, DATASETS, LABELS, PROMPT_METHODS, STAGES, THE, TITLES, TRAIN_PER_CLASS, VAL_PER_CLASS

RESULT_KEYS = ("num_train", "num_eval", "num_classes", "trainable_parameters", "adapter_bytes", "train_loss", "steps")
REFERENCES = ("lora", "full")
# What GPT and CDC are also held against: the cheaper baselines (the references have a section of their own)
OTHER_BASELINES = ("linear-probe", "vpt-shallow", "vpt-deep")


def collect(plan: Plan, command_log: pathlib.Path, render_command: str) -> dict[str, Any]:
    s, runs, checks, pending, conditions = plan.settings, [], {}, [], {}
    for dataset in DATASETS:
        rows, epochs = plan.epoch_check(dataset)
        chosen, selection = plan.selection(dataset, epochs) if epochs is not None else (None, [])
        precision = [{**{k: getattr(spec, k) for k in ("method", "epochs", "lr", "seed")},
                      "study": _precision_run(plan, spec), "other": _precision_run(plan, twin)}
                     for spec, twin in plan.precision_runs(dataset)]
        checks[dataset] = {"epoch_check": rows, "epochs": epochs, "chosen": chosen,
                           "selection": [spec.name for spec in selection], "precision": precision,
                           "precision_means": precision_means(precision)}
        runs += [record_of(stage, spec, plan.results(spec)) for stage, spec in plan.runs(dataset, STAGES)]
        # runs whose settings are not known yet, counted with placeholders: a method's selection runs not listed yet
        # (all of them before the epochs are chosen; its knobs' before its rate is; rates past a grid's end are not
        # foreseen), the test runs of the methods not chosen yet
        waiting = [m for m in s.methods if m not in (chosen or {})]
        count = sum(max(0, len(s.lr_grids[m]) + sum(len(v) - 1 for v in s.knobs.get(m, {}).values())
                        - sum(spec.method == m for spec in selection)) for m in waiting)
        if count:
            pending.append({"dataset": dataset, "group": "selection", "runs": count, "epochs": epochs})
        count = len({spec for _, spec in plan.final(dataset, 0, {m: {"lr": s.lr_grids[m][0]} for m in waiting})})
        if count:
            pending.append({"dataset": dataset, "group": "main + ablations + sweep", "runs": count, "epochs": epochs})
        # how the study's finished runs (the precision check's other precision aside) trained: one entry, or a shortfall
        trained = plan.trained(dataset).get(plan.precision_of(dataset))
        if trained:
            conditions[dataset] = {c: len(names) for c, names in sorted(trained.items())}
    commands: dict[str, dict[str, Any]] = {}
    for line in command_log.read_text().splitlines() if command_log.is_file() else ():
        entry = json.loads(line)
        commands.setdefault(entry["command"], entry)
    done = [r for r in runs if r["done"]]
    summary = summarize(s, runs)
    unused = [{"file": path.name, **{k: results.get(k) for k in ("accuracy", "precision", "date")}}
              for path in plan.unused_results() for results in [json.loads(path.read_text())]]
    return {
        "title": "Accuracy under the VTAB-1k protocol", "mode": plan.mode, "quick": s.max_samples is not None,
        "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commands": list(commands.values()),
        "render_command": render_command, "model": plan.model, "settings": dataclasses.asdict(s),
        "machine": {
            "renderer_cpu": _runs.cpu_name(), "renderer_cpu_count": os.cpu_count(),
            "python": platform.python_version(), "run_cpus": _cpus(done),
            # dataset -> the precision its runs used -> the CPUs they ran on
            "run_cpus_by_dataset": {d: {used: _cpus([r for r in mine if r["precision_used"] == used])
                                        for used in sorted({str(r["precision_used"]) for r in mine})}
                                    for d in DATASETS for mine in [[r for r in done if r["dataset"] == d]]},
            **{f"run_{k}s" if k == "device" else k: sorted({r[k] for r in done if r.get(k)})
               for k in ("device", "torch", "workers")},
            "run_dates": sorted({r["date"] for r in done if r.get("date")}),
        },
        "progress": {"done": len(done), "known": len(runs), "pending": pending},
        # dataset -> how its study's finished runs trained ("bf16 on cpu") -> how many: one entry each, or a shortfall
        "conditions_used": conditions,
        "checks": checks, "summary": summary, "findings": findings(summary), "versus": versus(summary),
        "guide": guide(summary), "goal": goal(summary), "sweep_reading": sweep_reading(summary),
        "precision_reading": precision_reading(checks),
        "runs": runs,
        # committed per-run results the protocol no longer names (made before a setting changed): kept, not used
        "unused_runs": unused,
    }


def _precision_run(plan: Plan, spec: Spec) -> dict[str, Any]:
    """One side of the precision check: the `--precision` asked and, once run, what it resolved to and found."""
    results, row = plan.results(spec), {"asked": plan.asked_precision(spec)}
    if results is not None:
        row.update(used=results.get("precision"), accuracy=results["accuracy"], train_s=results["timings_s"]["train_s"])
    return row


def _cpus(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({f"{r['cpu']} ({r['cpu_count']} cores)" for r in rows if r.get("cpu")})


def precision_means(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, epochs) whose pairs are all done: the mean val accuracy in the dataset's precision and in the
    other, and the mean of the per-seed differences bf16 - fp32 (in points; over the pairs where one run used each)
    with its standard error over the seeds."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for pair in pairs:
        groups.setdefault((pair["method"], pair["epochs"]), []).append(pair)
    out = []
    for (method, epochs), group in groups.items():
        if not all("accuracy" in p["study"] and "accuracy" in p["other"] for p in group):
            continue
        by_used = [{p[k]["used"]: p[k]["accuracy"] for k in ("study", "other")} for p in group]
        # `auto` on a CPU without native bf16 is fp32: such a pair compares nothing
        diffs = [100 * (a["bf16"] - a["fp32"]) for a in by_used if set(a) == {"bf16", "fp32"}]
        out.append({
            "method": method, "epochs": epochs, "seeds": len(group),
            "accuracy": statistics.fmean(p["study"]["accuracy"] for p in group),
            "accuracy_other": statistics.fmean(p["other"]["accuracy"] for p in group),
            "compared": len(diffs), "bf16_minus_fp32_points": statistics.fmean(diffs) if diffs else None,
            # a seed fixes the data order and the initialisation of both runs: the spread of the paired differences
            "se_points": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None,
            "used": sorted({p["study"]["used"] for p in group}),
            "used_other": sorted({p["other"]["used"] for p in group}),
        })
    return out


def record_of(stage: str, spec: Spec, results: Optional[dict[str, Any]]) -> dict[str, Any]:
    row = {"stage": stage, "name": spec.name, **dataclasses.asdict(spec), "k": spec.layers + 1}
    row["done"] = results is not None
    if results is None:
        return row
    probe, env, harness = results.get("linear_probe"), results.get("environment", {}), results.get("harness", {})
    row.update(
        accuracy=results["accuracy"], **{k: results[k] for k in RESULT_KEYS}, train_s=results["timings_s"]["train_s"],
        train_cpu_s=results["timings_s"].get("train_cpu_s"),  # runs before 2026-12-03 did not record it
        precision_used=results.get("precision"), wall_s=results["wall_time_s"], run_s=harness.get("run_s"),
        cpu_s=harness.get("cpu_s"),
        linear_probe=None if probe is None else {k: probe[k] for k in ("accuracy", "l2", "feature_dim", "seconds")},
        date=results.get("date"), torch=env.get("torch"), device=env.get("device"),
        **{k: harness.get(k) for k in ("cpu", "cpu_count", "workers", "load_average")},
    )
    return row


def summarize(settings, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: the main table (methods and linear probe), the ablations and the sweep, over seeds."""
    summary: dict[str, Any] = {}
    for dataset in DATASETS:
        mine = [r for r in runs if r["dataset"] == dataset and r["split"] == "test"]
        if not mine:
            continue
        gpt = [r for r in mine if r["done"] and r["stage"] == "main" and r["method"] == "gpt"]
        probes = {r["seed"]: r["linear_probe"] for r in gpt}
        seeds = settings.seeds
        probe = {**stats([probes[s]["accuracy"] if probes.get(s) else None for s in seeds]), "seeds": list(seeds)}
        first = next((p for p in probes.values() if p), None)
        if first is not None:
            classes = next(r["num_classes"] for r in mine if r["done"])
            probe["trainable_parameters"] = (first["feature_dim"] + 1) * classes
            probe["adapter_bytes"] = None  # the example does not save the probe
        summary[dataset] = {
            "num_test": next((r["num_eval"] for r in mine if r["done"]), None),
            "main": {"linear-probe": probe, **{m: table_row(mine, "main", seeds, method=m) for m in settings.methods}},
            "ablations": {a: table_row(mine, "ablations", seeds, ablation=a) for a in settings.ablations},
            "sweep": {k: table_row(mine, "sweep" if k > 1 else "main", settings.sweep_seeds, method="vpt-shallow",
                                   layers=k - 1) for k in settings.sweep_blocks},  # k = 1 is main's VPT-shallow run
        }
    return summary


def table_row(runs: list[dict[str, Any]], stage: str, seeds, **match) -> dict[str, Any]:
    """One table row: the runs of `stage` matching `match`, over `seeds`."""
    found = {r["seed"]: r for r in runs if r["stage"] == stage and all(r[k] == v for k, v in match.items())}
    done = [found[s] for s in seeds if s in found and found[s]["done"]]
    out = stats([found[s]["accuracy"] if s in found and found[s]["done"] else None for s in seeds])
    first = next(iter(found.values()), {})
    out.update(seeds=list(seeds), **{k: first.get(k) for k in ("lr", *KNOBS)})
    if done:
        out.update(trainable_parameters=done[0]["trainable_parameters"], adapter_bytes=done[0]["adapter_bytes"],
                   train_s=statistics.fmean(r["train_s"] for r in done),
                   # only where every run recorded it: a mean over some of the seeds would not compare with the others
                   train_cpu_s=statistics.fmean(r["train_cpu_s"] for r in done)
                   if all(r.get("train_cpu_s") for r in done) else None)
    return out


def stats(values: list[Optional[float]]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) of the values that exist."""
    done = [v for v in values if v is not None]
    return {"values": values, "n": len(done), "mean": statistics.fmean(done) if done else None,
            "std": statistics.stdev(done) if len(done) > 1 else None}


def findings(summary: dict[str, Any]) -> list[str]:
    """GPT and CDC against the linear probe and VPT, and where one of CDC's parts hurts, per dataset, from the
    numbers (LoRA and full fine-tuning are `versus`'s)."""
    lines = []
    for dataset, tables in summary.items():
        lines += versus({dataset: tables}, ("gpt", "cdc"), OTHER_BASELINES)
        main, cdc = tables["main"], tables["main"].get("cdc", {}).get("mean")
        for name, s in tables["ablations"].items():
            if cdc is not None and s["mean"] is not None and s["mean"] > cdc:
                lines.append(f"{ABLATIONS[name][1]} scores above full CDC on {TITLES[dataset]} by "
                             f"{100 * (s['mean'] - cdc):.1f} points ({_versus(s, main['cdc'])}).")
    return lines


def versus(summary: dict[str, Any], methods=PROMPT_METHODS, references=REFERENCES) -> list[str]:
    """Each of methods against each of references, per dataset: the gap in points with its standard error, both
    means with their spreads, and whether the gap is clear of the noise. A gap that rounds to 0.0 is 'level'."""
    lines = []
    for dataset, tables in summary.items():
        for ours in methods:
            for ref in references:
                a, b = tables["main"].get(ours), tables["main"].get(ref)
                if not a or not b or a["mean"] is None or b["mean"] is None:
                    continue
                gap, se = gap_points(a, b)
                shown = round(gap, 1)
                word = "above" if shown > 0 else "below" if shown < 0 else "level with"
                points = f"{abs(gap):.1f} points" if se is None else f"{abs(gap):.1f} ± {se:.1f} points (s.e.)"
                by = f" by {points}" if shown else ""
                # not clear: within twice its standard error, or measured on one seed
                noise = " — one seed, so its noise is unknown" if se is None else ""
                if se is not None and abs(gap) <= 2 * se:
                    noise = " — less than twice its standard error, so not a clear difference"
                lines.append(f"{TITLES[dataset]}: {LABELS[ours]} is {word} {THE.get(ref, LABELS[ref])}{by} "
                             f"({_versus(a, b)}){noise}.")
    return lines


# The second study's goal (issue #35): a prompt method at or above LoRA's mean accuracy and within this many points of
# full fine-tuning's, training under this share of the model's parameters (full fine-tuning's trainable count)
GOAL_POINTS_TO_FULL, GOAL_PARAMETER_SHARE = 1.0, 0.005


def goal(summary: dict[str, Any]) -> dict[str, Any]:
    """Per dataset, each prompt method with a mean against the goal: its gaps to LoRA and to full fine-tuning (points,
    with their standard errors), its share of the parameters, whether it meets the goal (only once every seed of it,
    LoRA and full fine-tuning is in; None before), and the points it would need to gain to meet both accuracy terms;
    and the readings: which methods meet it, else the closest under the parameter bound and by how much it misses."""
    rows, lines = [], []
    for dataset, tables in summary.items():
        main = tables["main"]
        lora, full = main.get("lora"), main.get("full")
        if not lora or not full or lora["mean"] is None or full["mean"] is None or not full.get("trainable_parameters"):
            continue
        mine = []
        for method in PROMPT_METHODS:
            r = main.get(method)
            if not r or r["mean"] is None or not r.get("trainable_parameters"):
                continue
            (to_lora, se_lora), (to_full, se_full) = gap_points(r, lora), gap_points(r, full)
            share = r["trainable_parameters"] / full["trainable_parameters"]
            complete = all(x["n"] == len(x["values"]) for x in (r, lora, full))
            needs = max(0.0, -to_lora, -to_full - GOAL_POINTS_TO_FULL)
            meets = (needs == 0.0 and share < GOAL_PARAMETER_SHARE) if complete else None
            mine.append({"dataset": dataset, "method": method, "mean": r["mean"], "n": r["n"],
                         "seeds": len(r["values"]), "to_lora_points": to_lora, "to_lora_se": se_lora,
                         "to_full_points": to_full, "to_full_se": se_full, "parameter_share": share, "meets": meets,
                         "needs_points": needs})
        rows += mine
        title, done = TITLES[dataset], [r for r in mine if r["meets"] is not None]
        met = [r for r in done if r["meets"]]
        if met:
            met = sorted(met, key=lambda r: -r["mean"])
            lines.append(f"{title}: the goal is met by " + ", ".join(f"{LABELS[r['method']]} ({_gaps(r)})" for r in met)
                         + ".")
            # the goal compares means; where the lead over LoRA is inside the seeds' noise, say so
            level = [LABELS[r["method"]] for r in met if r["to_lora_se"] is None
                     or r["to_lora_points"] <= 2 * r["to_lora_se"]]
            if level:
                lines.append(f"{title}: by the means only for {', '.join(level)}: the lead over LoRA is within twice "
                             "its standard error, so level with LoRA rather than clearly above it.")
            continue
        small = [r for r in done if r["parameter_share"] < GOAL_PARAMETER_SHARE]
        if small:
            best = min(small, key=lambda r: (r["needs_points"], -r["mean"]))
            listed = sum(m in main for m in PROMPT_METHODS)
            lines.append(f"{title}: no prompt configuration meets the goal ({len(done)} of {listed} prompt methods "
                         f"judged, with every seed in). The closest under {100 * GOAL_PARAMETER_SHARE:g}% of the "
                         "parameters is "
                         f"{LABELS[best['method']]}, {best['needs_points']:.1f} points short: {_gaps(best)}.")
    return {"rows": rows, "lines": lines}


def _gaps(r: dict[str, Any]) -> str:
    def gap(points: float, se: Optional[float], ref: str) -> str:
        if round(points, 1) == 0:
            return f"level with {ref}"
        return f"{abs(points):.1f}{'' if se is None else f' ± {se:.1f}'} {'above' if points > 0 else 'below'} {ref}"

    return (f"{100 * r['mean']:.1f}, {gap(r['to_lora_points'], r['to_lora_se'], 'LoRA')}, "
            f"{gap(r['to_full_points'], r['to_full_se'], 'full fine-tuning')}, "
            f"{100 * r['parameter_share']:.2f}% of the parameters")


def gap_points(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, Optional[float]]:
    """a's mean minus b's, in points, and the standard error of that difference (None with fewer than 2 seeds on
    either side): sqrt(std_a^2 / n_a + std_b^2 / n_b)."""
    gap = 100 * (a["mean"] - b["mean"])
    if a["std"] is None or b["std"] is None:
        return gap, None
    return gap, 100 * (a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"]) ** 0.5


def guide(summary: dict[str, Any]) -> list[str]:
    """Which method to pick for which goal, read off the tables: per dataset the most accurate method (and those not
    clearly below it), the fewest trainable parameters, the smallest adapter, the fastest training; and for serving
    many tasks on one frozen backbone (every method but full fine-tuning, which copies the whole model per task), the
    smallest adapter among the frozen-backbone methods not clearly below the most accurate of them."""
    lines = []
    for dataset, tables in summary.items():
        main = {m: r for m, r in tables["main"].items() if r["mean"] is not None and m != "linear-probe"}
        if not main:
            continue
        title, best = TITLES[dataset], max(main, key=lambda m: main[m]["mean"])
        tied = ", ".join(f"{LABELS[m]} ({mean_std(main[m], False)})" for m in _not_clearly_below(main, best))
        lines.append(f"{title}, accuracy: {LABELS[best]} ({mean_std(main[best], False)})"
                     + (f"; not clearly below it: {tied}." if tied else "."))
        # training time: CPU seconds where every method has them (a run's wall time also counts a shared CPU)
        timed = [r for r in main.values() if r.get("train_s")]
        cpu = bool(timed) and all(r.get("train_cpu_s") for r in timed)
        for key, what, unit in (("trainable_parameters", "fewest trainable parameters", "parameters"),
                                ("adapter_bytes", "smallest adapter on disk", "bytes"),
                                ("train_cpu_s", "fastest training", "CPU s of training per run") if cpu
                                else ("train_s", "fastest training", "s of training per run")):
            have = {m: r[key] for m, r in main.items() if r.get(key)}
            if have:
                pick = min(have, key=have.get)
                lines.append(f"{title}, {what}: {LABELS[pick]} ({have[pick]:,.0f} {unit}; {LABELS[best]}: "
                             f"{main[best].get(key) or 0:,.0f}); accuracy {mean_std(main[pick], False)}.")
        frozen = {m: r for m, r in main.items() if m != "full"}
        top = max(frozen, key=lambda m: frozen[m]["mean"], default=None)
        close = [m for m in (top, *_not_clearly_below(frozen, top)) if frozen[m].get("adapter_bytes")] if top else []
        if close:
            pick = min(close, key=lambda m: frozen[m]["adapter_bytes"])
            lines.append(
                f"{title}, many tasks on one frozen backbone: {LABELS[pick]} ({mean_std(frozen[pick], False)}, "
                f"{frozen[pick]['adapter_bytes']:,} bytes per task), "
                + ("the most accurate frozen-backbone method; no smaller adapter is shown to be as good." if pick == top
                   else "the smallest adapter not clearly below the most accurate frozen-backbone method "
                   f"({LABELS[top]}, {mean_std(frozen[top], False)})."))
    return lines


def _not_clearly_below(rows: dict[str, dict[str, Any]], best: str) -> list[str]:
    """The methods other than `best` whose gap to it is within twice its standard error; a gap whose noise is unknown
    (one seed on either side) is not counted as a tie, so one-seed rows do not read as equals."""
    gaps = {m: gap_points(rows[best], r) for m, r in rows.items() if m != best}
    return [m for m, (gap, se) in gaps.items() if se is not None and gap <= 2 * se]


def sweep_reading(summary: dict[str, Any]) -> list[str]:
    """What the insertion sweep shows, per dataset: the best block, and the first against the last block."""
    lines = []
    for dataset, tables in summary.items():
        sweep = {int(k): r for k, r in tables["sweep"].items() if r["mean"] is not None}
        if len(sweep) >= 2:
            best, first, last = max(sweep, key=lambda k: sweep[k]["mean"]), min(sweep), max(sweep)
            lines.append(
                f"{TITLES[dataset]}: VPT-shallow is most accurate with the prompts inserted before block {best} "
                f"({mean_std(sweep[best], False)}); block {first}: {mean_std(sweep[first], False)}, block {last}: "
                f"{mean_std(sweep[last], False)} ({len(sweep)} of {len(tables['sweep'])} blocks run).")
    return lines


def precision_reading(checks: dict[str, Any]) -> list[str]:
    """What the precision check shows: the range of the mean differences bf16 - fp32, and which exceed twice their
    standard error (with 5% false alarms each, one in many comparisons is expected by chance)."""
    rows = [(d, m) for d, c in checks.items() for m in c.get("precision_means", []) if m["compared"]]
    if not rows:
        return []
    diffs = [m["bf16_minus_fp32_points"] for _, m in rows]
    outside = [f"{LABELS[m['method']]} at {m['epochs']:g} epochs on {TITLES[d]} ({m['bf16_minus_fp32_points']:+.1f} ± "
               f"{m['se_points']:.1f})" for d, m in rows
               if m["se_points"] and abs(m["bf16_minus_fp32_points"]) > 2 * m["se_points"]]
    line = (f"Over {len(rows)} comparison{'s' if len(rows) > 1 else ''}, bf16's mean val accuracy minus fp32's ranges "
            f"from {min(diffs):+.1f} to {max(diffs):+.1f} points (mean {statistics.fmean(diffs):+.1f})")
    if outside:
        return [f"{line}; it exceeds twice its standard error in {len(outside)}: {', '.join(outside)}."]
    return [f"{line}; none exceeds twice its standard error."]


def _versus(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'83.3 ± 0.4 vs 88.8 ± 0.2; 2 seeds' (or 'n of m seeds so far')."""
    n, m = min(a["n"], b["n"]), len(a["values"])
    seeds = f"{n} seed{'s' * (n > 1)}" if n == m else f"{n} of {m} seeds so far"
    return f"{mean_std(a, False)} vs {mean_std(b, False)}; {seeds}"


def pts(x: Optional[float]) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def mean_std(s: dict[str, Any], seeds: bool = True) -> str:
    if s["mean"] is None:
        return "not run yet"
    std = "" if s["std"] is None else f" ± {100 * s['std']:.1f}"
    partial = seeds and s["n"] < len(s["values"])
    return f"{100 * s['mean']:.1f}{std}" + (f" ({s['n']} of {len(s['values'])} seeds)" if partial else "")


def planned(progress: dict[str, Any]) -> int:
    """The runs planned so far: those known, and those counted with placeholders until their settings are."""
    return progress["known"] + sum(p["runs"] for p in progress["pending"])


def times(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (dataset, stage): runs done and planned, mean wall and CPU time per run, estimated time of the runs left.

    A run left is estimated at its epochs times the CPU seconds per epoch of its group's finished runs, else of its
    dataset's runs of the same split, else of the other split scaled by the training images (a test-split run
    trains on train + val), else of every run of the split. The CPU time is used where it was recorded: a run has one
    torch thread, so its CPU time is what its wall time would be on an otherwise idle core (wall times also count
    pauses and a shared CPU). Runs whose epochs are not chosen yet are not estimated (left_s None)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in record["runs"]:
        groups.setdefault((r["dataset"], r["stage"]), []).append(r)
    for p in record["progress"]["pending"]:
        rows = [{"done": False, "split": "val" if p["group"] == "selection" else "test", "epochs": p["epochs"]}]
        groups.setdefault((p["dataset"], p["group"]), []).extend(rows * p["runs"])
    scale = (TRAIN_PER_CLASS + VAL_PER_CLASS) / TRAIN_PER_CLASS  # a test-split run's training images over a val one's
    out = []
    for (dataset, stage), rows in groups.items():
        left, left_s = [r for r in rows if not r["done"]], 0.0
        mine = [r for r in record["runs"] if r["dataset"] == dataset]
        for r in left:
            split = r["split"]
            other = _per_epoch(mine, "val" if split == "test" else "test")
            scaled = None if other is None else other * (scale if split == "test" else 1 / scale)
            rates = (_per_epoch(rows, split), _per_epoch(mine, split), scaled, _per_epoch(record["runs"], split))
            per_epoch = next((x for x in rates if x is not None), None)
            if not r["epochs"] or per_epoch is None:
                left_s = None
                break
            left_s += per_epoch * r["epochs"]
        out.append({"group": f"{TITLES[dataset]} {stage}", "done": len(rows) - len(left), "planned": len(rows),
                    "wall_s": _mean(rows, "run_s"), "cpu_s": _mean(rows, "cpu_s"), "left_s": left_s})
    return out


def _per_epoch(rows: list[dict[str, Any]], split: str) -> Optional[float]:
    """CPU (else wall) seconds per epoch of the finished runs of `split` among rows."""
    done = [r for r in rows if r["done"] and r["split"] == split and r["epochs"] and (r.get("cpu_s") or r.get("run_s"))]
    return sum(r.get("cpu_s") or r["run_s"] for r in done) / sum(r["epochs"] for r in done) if done else None


def _mean(rows: list[dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r["done"] and r.get(key)]
    return statistics.fmean(values) if values else None
