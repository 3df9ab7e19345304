"""Bad input gets a clear error naming the field and the allowed range, before the model is touched."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import fresh_copy
from peft import PeftModel, get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

from gated_vpt import CDCPromptConfig, ConfigError, GatedPromptConfig, IncompatibleBackboneError, UnsupportedModelError


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_prompts", 0, r"`num_prompts` must be an integer in \[1, 4096\]"),
        ("num_prompts", -3, r"`num_prompts` must be an integer in \[1, 4096\]"),
        ("num_prompts", 2.5, r"`num_prompts` must be an integer"),
        ("num_prompts", 10**9, r"`num_prompts` must be an integer in \[1, 4096\]"),
        ("prompt_dropout", -0.1, r"`prompt_dropout` must be a probability in \[0, 1\)"),
        ("prompt_dropout", 1.0, r"`prompt_dropout` must be a probability in \[0, 1\)"),
        ("gate_init", math.inf, r"`gate_init` must be a finite number"),
        ("gate_init", math.nan, r"`gate_init` must be a finite number"),
        ("gate_init", "5", r"`gate_init` must be a finite number"),
        ("temperature_range", (2.0, 1.0), r"`temperature_range` must be a pair \(low, high\)"),
        ("temperature_range", (0.0, 1.0), r"0 < low <= high"),
        ("temperature_range", (-1.0, 1.0), r"0 < low <= high"),
        ("temperature_range", (0.1,), r"`temperature_range` must be a pair"),
        ("temperature_range", (0.1, math.inf), r"finite"),
        ("layers_to_transform", [1, 3], r"`layers_to_transform` must be a contiguous range"),
        ("layers_to_transform", [-1], r"`layers_to_transform` must be None, a non-negative int"),
        ("layers_to_transform", [], r"`layers_to_transform` must be None, a non-negative int"),
        ("prompt_init", "kaiming", r"`prompt_init` must be one of \('xavier', 'normal', 'spt-sample'"),
        ("use_gates", "yes", r"`use_gates` must be True or False"),
        ("modules_to_save", "classifier", r"`modules_to_save` must be None or a list of module names"),
    ],
)
def test_bad_config_values_name_the_field_and_range(field, value, message):
    with pytest.raises(ConfigError, match=message):
        GatedPromptConfig(**{field: value})


def assert_untouched(model, pristine):
    assert model.state_dict().keys() == pristine.state_dict().keys()
    assert all(p.requires_grad for p in model.parameters())
    assert not hasattr(model, "peft_config")
    x = pixel_values()
    with torch.no_grad():
        assert torch.equal(model(x).logits, pristine(x).logits)


def test_layers_out_of_range_fail_before_the_model_is_touched():
    model = TINY_BACKBONES["vit"]()
    pristine = fresh_copy(model)
    with pytest.raises(ConfigError, match=r"`layers_to_transform` must lie in \[0, 3\] for this backbone of 4 blocks"):
        get_peft_model(model, GatedPromptConfig(layers_to_transform=[2, 3, 4]))
    assert_untouched(model, pristine)


def test_a_model_without_a_vit_block_stack_lists_the_supported_families():
    from transformers import ResNetConfig, ResNetForImageClassification

    cnn = ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    ).eval()
    pristine = fresh_copy(cnn)
    with pytest.raises(UnsupportedModelError, match=r"no Vision Transformer block stack.*Supported families: ViT"):
        get_peft_model(cnn, GatedPromptConfig())
    assert cnn.state_dict().keys() == pristine.state_dict().keys()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(cnn(x).logits, pristine(x).logits)


def test_an_adapter_for_another_backbone_is_refused_naming_both(tmp_path):
    get_peft_model(TINY_BACKBONES["vit"](), GatedPromptConfig(num_prompts=2)).save_pretrained(tmp_path)
    other = TINY_BACKBONES["dinov2"]()
    pristine = fresh_copy(other)
    with pytest.raises(IncompatibleBackboneError, match=r"model_type: adapter 'vit' vs model 'dinov2'"):
        PeftModel.from_pretrained(other, tmp_path)
    assert_untouched(other, pristine)


def test_an_adapter_for_a_deeper_backbone_is_refused(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    deeper = ViTForImageClassification(
        ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=6, num_attention_heads=4)
    )
    get_peft_model(deeper, GatedPromptConfig(num_prompts=2)).save_pretrained(tmp_path)
    with pytest.raises(IncompatibleBackboneError, match=r"num_hidden_layers: adapter 6 vs model 4"):
        PeftModel.from_pretrained(TINY_BACKBONES["vit"](), tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Fields get_peft_model fills in: honoured when set by hand, or refused (never silently ignored)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target_modules", "message"),
    [
        (["query", "value"], r"'query' is not a transformer block of this model .*layers_to_transform"),
        (
            ["vit.layers.1.attention"],
            r"is not a transformer block .*\(its blocks are vit\.layers\.0 \.\.\. vit\.layers\.3\)",
        ),
        (["layers.0", "layers.2"], r"names blocks \[0, 2\], which are not contiguous"),
    ],
)
def test_target_modules_that_are_not_blocks_are_refused_before_the_model_is_touched(target_modules, message):
    model = TINY_BACKBONES["vit"]()
    pristine = fresh_copy(model)
    with pytest.raises(ConfigError, match=message):
        get_peft_model(model, GatedPromptConfig(target_modules=target_modules))
    assert_untouched(model, pristine)


def test_target_modules_disagreeing_with_layers_to_transform_is_refused():
    model = TINY_BACKBONES["vit"]()
    pristine = fresh_copy(model)
    config = GatedPromptConfig(target_modules=["layers.1", "layers.2"], layers_to_transform=[2, 3])
    with pytest.raises(ConfigError, match=r"names blocks 1-2 but `layers_to_transform` \[2, 3\] selects blocks 2-3"):
        get_peft_model(model, config)
    assert_untouched(model, pristine)


def test_target_modules_as_a_string_is_refused_pointing_to_layers_to_transform():
    with pytest.raises(ConfigError, match=r"list of block names .*got the string 'all-linear'.*layers_to_transform"):
        GatedPromptConfig(target_modules="all-linear")


def _record(**changes):
    record = {
        "model_type": "vit",
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "patch_size": 8,
        "num_prefix_tokens": 1,
        "prompted_blocks": [0, 3],
    }
    return {**record, **changes}


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        ({"model_type": "vit"}, r"`backbone` lacks \['hidden_size'.*leave it None"),
        (_record(depth=4), r"`backbone` holds unknown keys \['depth'\]"),
        (_record(hidden_size="32"), r"`backbone.hidden_size` has an invalid value '32'"),
        (_record(prompted_blocks=[3, 1]), r"`backbone.prompted_blocks` has an invalid value"),
        ("vit", r"`backbone` must be an object"),
    ],
)
def test_a_backbone_record_set_by_hand_must_be_complete(backbone, message):
    with pytest.raises(ConfigError, match=message):
        GatedPromptConfig(backbone=backbone)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 64}, r"hidden_size: adapter 64 vs model 32"),
        ({"prompted_blocks": [1, 3]}, r"prompted_blocks: adapter \[1, 3\] vs model \[0, 3\]"),
    ],
)
def test_a_backbone_record_set_by_hand_is_checked_against_the_model(changes, message):
    model = TINY_BACKBONES["vit"]()
    pristine = fresh_copy(model)
    with pytest.raises(IncompatibleBackboneError, match=message):
        get_peft_model(model, GatedPromptConfig(backbone=_record(**changes)))
    assert_untouched(model, pristine)


# ---------------------------------------------------------------------------------------------------------------
# Names and modules the adapter cannot take (issue 14 items 6-7): the library's errors, the model left untouched
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", r"Adapter name '' must be a non-empty string"),
        ("a.b", r"Adapter name 'a.b' may not contain '\.'"),
        ("forward", r"Adapter name 'forward' is the name of a torch module attribute"),
        ("__base__", r"Adapter name '__base__' is reserved: in mixed batches it means the base model"),
    ],
)
@pytest.mark.parametrize("how", ["get_peft_model", "add_adapter"])
def test_bad_adapter_names_are_refused(name, message, how):
    model = TINY_BACKBONES["vit"]()
    pristine = fresh_copy(model)
    if how == "get_peft_model":
        with pytest.raises(ValueError, match=message):
            get_peft_model(model, GatedPromptConfig(num_prompts=2), adapter_name=name)
        assert_untouched(model, pristine)
        return
    peft_model = get_peft_model(model, GatedPromptConfig(num_prompts=2)).eval()
    x = pixel_values()
    with torch.no_grad():
        before = peft_model(x).logits
    with pytest.raises(ValueError, match=message):
        peft_model.add_adapter(name, GatedPromptConfig(num_prompts=2))
    assert list(peft_model.peft_config) == ["default"]
    with torch.no_grad():
        assert torch.equal(peft_model(x).logits, before)


@pytest.mark.parametrize(
    ("modules_to_save", "message"),
    [
        (["q_proj"], r"'q_proj' matches 'vit\.layers\.0\.attention\.q_proj' \(and 3 more\), inside the transformer"),
        (["layers.1"], r"'layers.1' matches 'vit\.layers\.1', inside the transformer blocks"),
        (["classifier", ""], r"`modules_to_save` holds an empty name"),
        # Before: an ancestor of the block stack was accepted, copied the whole encoder and saved unloadably.
        (["vit"], r"'vit' matches 'vit', which contains the transformer blocks the adapter prompts"),
        (["classifier", "vit"], r"'vit' matches 'vit', which contains the transformer blocks"),
    ],
)
@pytest.mark.parametrize("config_class", [GatedPromptConfig, CDCPromptConfig])
def test_modules_to_save_inside_the_prompted_blocks_are_refused(modules_to_save, message, config_class):
    # Before: modules_to_save=["q_proj"] trained a copy of the projection that GPT's temperature hook never saw.
    model = TINY_BACKBONES["vit"]()
    pristine = fresh_copy(model)
    with pytest.raises(ConfigError, match=message):
        get_peft_model(model, config_class(num_prompts=2, modules_to_save=modules_to_save))
    assert_untouched(model, pristine)


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "CAUSAL_LM", "FEATURE_EXTRACTION"])
def test_a_task_type_is_refused_rather_than_changing_the_returned_class(task_type):
    # Before: task_type="SEQ_CLS" made get_peft_model return PeftModelForSequenceClassification, whose forward
    # fails with a bare TypeError on pixel_values.
    with pytest.raises(ConfigError, match=r"`task_type` must be None \(prompt adapters are for vision models"):
        GatedPromptConfig(task_type=task_type)


def test_get_peft_model_on_an_already_prompted_model_keeps_the_trained_adapter():
    # Before: a second get_peft_model silently re-initialised the trained "default" adapter (or wrapped the
    # PeftModel in a second one).
    config = GatedPromptConfig(num_prompts=2, prompt_dropout=0.0, modules_to_save=["classifier"])
    model = get_peft_model(TINY_BACKBONES["vit"](), config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.5)
    x = pixel_values()
    with torch.no_grad():
        trained = model(x).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"already holds a prompt adapter named 'default'"):
        get_peft_model(model.base_model.model, GatedPromptConfig(num_prompts=2))
    with pytest.raises(ValueError, match=r"already a PeftModel with prompt adapters"):
        get_peft_model(model, CDCPromptConfig(num_prompts=2))
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model(x).logits, trained)
    # a second adapter under another name is what add_adapter is for, and still works
    model.add_adapter("second", GatedPromptConfig(num_prompts=2))
    with torch.no_grad():
        assert torch.equal(model(x).logits, trained)
