"""The benchmark pages are what their scripts render from the committed JSON records (no hand-edited numbers), and
the benchmark's data sampling is the documented rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SHARED_EUROSAT = REPO.parent / "shared" / "data" / "eurosat_rgb_jpeg.npz"
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402,F401  (the command line, benchmarks/accuracy.py, imports)
import cost  # noqa: E402
import mixed_batch  # noqa: E402
import report  # noqa: E402
from vtab_accuracy import page as accuracy_page  # noqa: E402  (benchmarks/vtab_accuracy: accuracy.py's code)
from vtab_accuracy import sampling as accuracy_sampling  # noqa: E402


def record(name: str) -> dict:
    path = DOCS / name
    if not path.exists():
        pytest.skip(f"{name} not committed yet")
    return json.loads(path.read_text())


def test_accuracy_page_is_rendered_from_its_record():
    page = accuracy_page.render_markdown(
        record("benchmarks_accuracy.json"), "benchmarks_accuracy.png", "benchmarks_insertion_sweep.png"
    )
    assert (DOCS / "benchmarks_accuracy.md").read_text() == page, "run: python benchmarks/accuracy.py --report-only"


def test_cost_page_is_rendered_from_its_record():
    assert (DOCS / "benchmarks_cost.md").read_text() == cost.render(record("benchmarks_cost.json"))


def test_mixed_batch_page_is_rendered_from_its_record():
    assert (DOCS / "mixed_batch.md").read_text() == mixed_batch.render(record("mixed_batch.json"))


def test_summary_page_is_assembled_from_the_records():
    page = report.render(report.load(DOCS / "benchmarks_accuracy.json"), report.load(DOCS / "benchmarks_cost.json"))
    assert (DOCS / "benchmarks.md").read_text() == page, "run: python benchmarks/report.py"


def test_summary_page_without_records_says_not_run_yet():
    page = report.render(None, None)
    assert "Accuracy: not run yet" in page and "Cost: not run yet" in page


@pytest.mark.skipif(not SHARED_EUROSAT.exists(), reason="needs ../shared/data")
def test_vtab1k_sampling_rule_picks_the_bundled_eurosat_subset():
    """The harness samples CIFAR-10 (and, in GPU mode, EuroSAT) with the rule that built examples/data: applied to
    the full EuroSAT file it must give exactly the bundled 800 / 200 / 1,000 images."""
    with np.load(SHARED_EUROSAT, allow_pickle=False) as data:
        labels, split, filenames = data["labels"], data["split"], data["filenames"]
    picked = accuracy_sampling.vtab1k_indices(labels, split, filenames, (0,), 2, 1000)
    with np.load(accuracy_sampling.BUNDLED, allow_pickle=False) as bundled:
        names, codes = bundled["filenames"], bundled["split"]
    for part, code in (("train", 0), ("val", 1), ("test", 2)):
        assert sorted(map(str, filenames[picked[part]])) == sorted(map(str, names[codes == code])), part
