"""The benchmark pages are what their scripts render from the committed JSON records (no hand-edited numbers), and
the benchmark's data sampling is the documented rule."""

from __future__ import annotations

import json
import re
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


def test_cost_smoke_run_measures_both_precisions_end_to_end(tmp_path):
    """`cost.py --smoke` (tiny models, 1 round) writes a record with an fp32 and a bf16 block, each with every table,
    computed with the example's attention rule (sdpa in fp32, eager in bf16 on a CPU); the page and the summary
    section are rendered from it."""
    out = cost.main(["--smoke", "--out", str(tmp_path / "cost")])
    report_ = json.loads(out.with_suffix(".json").read_text())
    assert report_["format"] == cost.FORMAT and report_["settings"]["smoke"]
    assert report_["settings"]["precisions"] == ["fp32", "bf16"] == list(report_["precisions"])
    job = report_["settings"]["epoch_job"]
    assert job["steps_per_epoch"] == -(-job["train_images"] // job["batch_size"])
    for precision, attention in (("fp32", "sdpa"), ("bf16", "eager")):
        block = report_["precisions"][precision]
        assert block["attn_implementation"] == attention
        assert set(block) >= {"num_prompts_10", "num_prompts_sweep", "batch_size_sweep", "epoch"}
        assert [list(t) for t in block["num_prompts_10"].values()] == [list(cost.MAIN_METHODS)]
        assert list(block["epoch"]) == list(cost.EPOCH_METHODS)
        for table in cost.block_tables(block):
            for r in table.values():
                assert r["attn_implementation"] == attention and r["train_step_s"] > 0 and r["activation_bytes"] > 0
                assert (r["weight_copy_bytes"] > 0) == (precision == "bf16")  # autocast's bf16 copies of weights
        for r in block["epoch"].values():
            assert r["epoch_s"] == pytest.approx(r["train_step_s"] * job["steps_per_epoch"])
    page = out.with_suffix(".md").read_text()
    assert page == cost.render(report_) and "smoke test" in page and "## Time of one epoch of the main job" in page
    assert out.with_suffix(".png").stat().st_size > 0
    # the record names the code it measured (the tests run from a git checkout)
    commit = report_["settings"]["commit"]
    assert commit and f"at commit `{commit}`" in page
    section = "\n".join(report.cost_section(report_))
    assert "unexpected structure" not in section and "| bf16 |" in section and "bf16 speed-up" in section
    # the same record as another machine's, beside the main one on the summary page
    page = report.render(None, None, {"benchmarks_cost_other": report_})
    assert f"### The same measurement on another machine: {report_['settings']['machine']}" in page
    assert "(benchmarks_cost_other.md)" in page and "unexpected structure" not in page
    # ... which links its own page, says whether the CPU has native bf16 (two CPUs of one name can differ) and names
    # the commit it measured
    other = "\n".join(report.other_cost_section("benchmarks_cost_other", report_))
    assert "Details in [benchmarks_cost_other.md](benchmarks_cost_other.md)." in other
    assert "(benchmarks_cost.md)" not in other and f"commit `{commit}`" in other
    assert ("(native bf16)" if report_["settings"]["cpu_native_bf16"] else "(no native bf16)") in other


def test_cost_ratios_are_paired_per_round_and_a_target_is_missed_only_beyond_the_spread_of_the_rounds():
    # round 3 is a slow spell of the machine for both: the per-round ratio divides it out
    floor, method = [1.0, 1.0, 3.0, 1.0, 1.0], [1.04, 1.08, 3.09, 1.02, 1.06]
    paired = cost.paired_ratios(method, floor, "infer")
    assert paired["infer_ratio_to_floor"] == pytest.approx(1.04)
    assert paired["infer_ratio_quartiles"] == pytest.approx([1.03, 1.06])
    spread = {**paired, "infer_ratio_to_floor": 1.06}  # median above 1.05, lower quartile within: noise
    beyond = {**paired, "infer_ratio_to_floor": 1.08, "infer_ratio_quartiles": [1.07, 1.09]}
    old = {"infer_ratio_to_floor": 1.06}  # a record from before the quartiles: met or missed only
    assert [cost.verdict(r, "infer", 1.05) for r in (paired, spread, beyond, old)] == [
        "met",
        "noise",
        "missed",
        "missed",
    ]
    assert cost.target_mark("gpt", spread, inference=True) == " ≈" and cost.target_mark("lora", beyond, True) == ""
    # the summary page: the median, its quartiles, and only the miss beyond the spread is listed as missed
    rows = {"train_ratio_to_floor": 1.0, "train_ratio_quartiles": [0.99, 1.01]}
    cells, above = report.ratio_cells({**rows, **spread}, "gpt")
    assert cells[2] == "1.060x [1.03–1.06]" and "within the rounds' spread" in cells[3]
    assert above == [("noise", "inference", 1.06, 1.05)]
    cells, above = report.ratio_cells({**rows, **beyond}, "cdc")
    assert cells[2] == "**1.080x [1.07–1.09]**" and above == [("missed", "inference", 1.08, 1.05)]
    assert report.target_lines([("noise", "GPT inference")]) == [
        "",
        "No target is missed at 10 prompts.",
        "Above the target, but within the spread of the rounds: GPT inference.",
        "",
    ]


def test_cost_summary_falls_back_on_an_unexpected_record():
    assert "unexpected structure" in "\n".join(report.cost_section({"settings": {}, "precisions": {}}))
    assert "Not run yet" in "\n".join(report.cost_section(None))


def test_mixed_batch_page_is_rendered_from_its_record():
    assert (DOCS / "mixed_batch.md").read_text() == mixed_batch.render(record("mixed_batch.json"))


def test_summary_page_is_assembled_from_the_records():
    cost_record = DOCS / "benchmarks_cost.json"
    others = report.other_cost_records(cost_record)
    page = report.render(report.load(DOCS / "benchmarks_accuracy.json"), report.load(cost_record), others)
    assert (DOCS / "benchmarks.md").read_text() == page, "run: python benchmarks/report.py"
    for name, other in others.items():  # each other machine's page is its script's rendering too
        assert (DOCS / f"{name}.md").read_text() == cost.render(other)
        assert f"### The same measurement on another machine: {other['settings']['machine']}" in page


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


def _quoted_results(text: str) -> list[str]:
    """The 'mean ± std' figures a prose passage quotes (line breaks and spacing normalised)."""
    return re.findall(r"\d+\.\d ± \d+\.\d", " ".join(text.split()))


def test_the_readme_and_the_faq_quote_the_accuracy_page():
    """README's Benchmarks paragraph and the FAQ's "which method" entry are hand-written from the study's page: every
    mean ± std they quote is one the page (rendered from the committed runs) shows."""
    page = " ".join((DOCS / "benchmarks_accuracy.md").read_text().split())
    readme = (REPO / "README.md").read_text().split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    faq = (DOCS / "faq.md").read_text().split("\n### Which prompt method should I pick?\n", 1)[1].split("\n### ", 1)[0]
    for name, text in (("README.md", readme), ("docs/faq.md", faq)):
        quoted = _quoted_results(text)
        assert quoted, name
        assert [q for q in quoted if q not in page] == [], f"{name} quotes figures the accuracy page does not show"
