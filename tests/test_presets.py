"""The named prompt methods: each name is the config its docs promise, and a name cannot be bent into another."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

from gated_vpt import PRESETS, CDCPromptConfig, GatedPromptConfig, VisualPromptConfig, preset_config


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt", GatedPromptConfig(num_prompts=3)),
        ("vpt-shallow", VisualPromptConfig(num_prompts=3, deep=False)),
        ("cdc", CDCPromptConfig(num_prompts=3)),
        ("vpt-deep", VisualPromptConfig(num_prompts=3, deep=True)),
        ("cdc-no-ar", CDCPromptConfig(num_prompts=3, attentive_reinforcement=False)),
        ("cdc-static-aggregation", CDCPromptConfig(num_prompts=3, dynamic_aggregation=False)),
        ("cdc-no-cross-layer", CDCPromptConfig(num_prompts=3, cross_layer=False)),
    ],
)
def test_each_name_is_its_config(name, expected):
    assert preset_config(name, num_prompts=3).to_dict() == expected.to_dict()


def test_every_preset_builds_an_adapter_that_changes_the_output():
    x = pixel_values()
    base = TINY_BACKBONES["vit"]().eval()
    with torch.no_grad():
        reference = base(x).logits
    for name in PRESETS:
        model = get_peft_model(TINY_BACKBONES["vit"](), preset_config(name, num_prompts=2, prompt_dropout=0.0)).eval()
        with torch.no_grad():
            assert not torch.equal(model(x).logits, reference), name


def test_a_preset_refuses_fields_that_would_make_it_another_method():
    with pytest.raises(ValueError, match=r"'vpt-shallow' is VPT-shallow .* fixes \['deep'\]"):
        preset_config("vpt-shallow", deep=True)
    assert preset_config("vpt-shallow", deep=False).deep is False  # restating it is fine


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown prompt method 'vpt'; the named methods are \['cdc'"):
        preset_config("vpt")


@pytest.mark.parametrize(
    ("special_case", "vpt"),
    [
        (GatedPromptConfig(use_gates=False, learn_temperature=False), "vpt-shallow"),
        (CDCPromptConfig(cross_layer=False, attentive_reinforcement=False), "vpt-deep"),
    ],
    ids=["gpt-without-gates-and-temperatures", "cdc-without-connections-and-reinforcement"],
)
@pytest.mark.parametrize("backbone", ["vit", "deit", "dinov2_registers", "beit"])
def test_the_methods_built_on_vpt_reduce_to_it_exactly(backbone, special_case, vpt):
    """GPT and CDC with their additions switched off are VPT, output for output, under the same seed."""
    x = pixel_values()
    outputs = []
    for config in (special_case, preset_config(vpt)):
        torch.manual_seed(0)
        model = get_peft_model(TINY_BACKBONES[backbone](), copy.deepcopy(config))
        with torch.no_grad():
            outputs.append(model.eval()(pixel_values=x).logits)
    assert torch.equal(*outputs)
