"""benchmarks/gpu_check.py, the one prepared GPU run, end to end at tiny sizes on the CPU (`--smoke`): every part
writes its record and the page renders from them, so the script cannot rot between the sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out / "results")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_the_smoke_run_writes_every_part(smoke_run):
    results = smoke_run / "results"
    record = json.loads((results / "gpu_check.json").read_text())
    assert record["smoke"] is True and record["environment"]["torch"]
    check = record["correctness"]
    assert check["exit_code"] == 0 and check["passed"] > 0 and check["failed"] == 0
    cost = json.loads((results / "cost.json").read_text())
    table = next(iter(cost["precisions"]["fp32"]["num_prompts_10"].values()))
    assert {"floor", "gpt", "cdc", "vpt-deep", "lora", "full"} <= set(table)
    assert all(table[m]["train_images_per_s"] > 0 for m in table)
    runs = record["accuracy"]["runs"]
    assert set(runs) == {"gpt", "lora"}
    assert all(r["exit_code"] == 0 and 0.0 <= r["accuracy"] <= 1.0 for r in runs.values())


def test_the_page_renders_from_the_results(smoke_run):
    page = smoke_run / "page"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--render", str(smoke_run / "results"), "--docs-out", str(page)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = page.with_suffix(".md").read_text()
    assert "Smoke run" in text and "## Correctness" in text and "| gpt |" in text and "| lora |" in text
    assert "### " in text and "\n# Cost" not in text  # the cost page's headings sit below this page's
    assert page.with_suffix(".png").stat().st_size > 0
    assert json.loads(page.with_suffix(".json").read_text())["cost"]["settings"]["smoke"] is True
