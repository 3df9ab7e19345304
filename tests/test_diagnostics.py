"""gate_report reads what a GPT adapter learned; its selection ratios match docs/methods.md §2 item 6."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model
from tiny_models import TINY_BACKBONES

from gated_vpt import GatedPromptConfig, gate_report, plot_gate_report, summarize_gate_report


def gpt_with_gates(gates: list[float], **config):
    model = get_peft_model(TINY_BACKBONES["vit"](), GatedPromptConfig(num_prompts=2, **config))
    with torch.no_grad():
        for block, gate in zip(model.base_model.model.vit.layers, gates, strict=False):
            block.gpt_gate_logits["default"].fill_(torch.logit(torch.tensor(gate)).item())
    return model


def test_selection_ratios_are_the_normalised_unrolled_mixing_weights():
    gates = [0.5, 0.2, 0.9]
    report = gate_report(gpt_with_gates(gates))
    assert [row["block"] for row in report] == [0, 1, 2, 3]
    assert "gate" not in report[3] and report[3]["temperature"] == 1.0
    # unrolled by hand: g~_l = g_l * prod_{j > l} (1 - g_j)
    contributions = [0.5 * 0.8 * 0.1, 0.2 * 0.1, 0.9]
    total = sum(contributions)
    for row, gate, contribution in zip(report, gates, contributions, strict=False):
        assert row["gate"] == pytest.approx(gate, rel=1e-6)
        assert row["selection_ratio"] == pytest.approx(contribution / total, rel=1e-6)
    assert summarize_gate_report(report) == "this task mostly used block 2 (94% of the selection)"


def test_report_follows_layers_to_transform_and_named_adapters(tmp_path):
    model = gpt_with_gates([0.5, 0.5, 0.5])
    model.add_adapter("late", GatedPromptConfig(num_prompts=2, layers_to_transform=[2, 3], learn_temperature=False))
    report = gate_report(model, "late")
    assert [row["block"] for row in report] == [2, 3]
    assert report[0]["selection_ratio"] == 1.0 and "temperature" not in report[0]
    path = plot_gate_report(gate_report(model), str(tmp_path / "gates.png"))
    assert (tmp_path / "gates.png").stat().st_size > 1000 and path.endswith("gates.png")


def test_vpt_shallow_has_no_gates_to_read():
    model = get_peft_model(TINY_BACKBONES["vit"](), GatedPromptConfig(use_gates=False, learn_temperature=False))
    report = gate_report(model)
    assert all(set(row) == {"block"} for row in report)
    assert summarize_gate_report(report).startswith("no gates")


def test_report_on_a_plain_model_is_a_clear_error():
    with pytest.raises(ValueError, match="No gated-vpt prompt blocks"):
        gate_report(TINY_BACKBONES["vit"]())


@pytest.mark.parametrize("gate_init", [5.0, 2.0])
def test_gates_still_at_their_prior_name_no_block(gate_init):
    model = get_peft_model(TINY_BACKBONES["vit"](), GatedPromptConfig(num_prompts=2, gate_init=gate_init))
    report = gate_report(model)
    prior = 1 / (1 + math.exp(gate_init))
    assert all(row["gate_prior"] == pytest.approx(prior) for row in report if "gate" in row)
    summary = summarize_gate_report(report)
    assert summary.startswith("the gates have not moved from their prior") and f"{prior:.4g}" in summary
    assert "block" not in summary.split(":")[0]
    # one gate that moved is enough for a reading
    with torch.no_grad():
        model.base_model.model.vit.layers[1].gpt_gate_logits["default"].fill_(3.0)
    assert summarize_gate_report(gate_report(model)).startswith("this task mostly used block 1 (")
