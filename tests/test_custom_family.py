"""`gated_vpt.register_family`: the worked example of docs/custom_models.md runs as written, and the plain-PyTorch
ViT it describes then behaves like a built-in family (outputs change, disable = base, save / load bit-identical,
CDC with attentive reinforcement, prompts after CLS)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

import gated_vpt
from gated_vpt import CDCPromptConfig, UnsupportedModelError

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_models.md"


@pytest.fixture
def example():
    """The namespace of the docs' code block after running it (the family registered), unregistered afterwards."""
    code = DOC.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {"__name__": "custom_models_example"}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
    yield namespace
    gated_vpt.unregister_family("TinyViT")


def _fresh(example):
    torch.manual_seed(0)
    return example["TinyViT"]().eval()


def test_the_docs_example_runs_and_its_adapter_behaves_like_a_built_in_family(example, tmp_path):
    model, vit_cls = example["model"].eval(), example["TinyViT"]  # eval: no prompt dropout
    site = gated_vpt.find_prompt_site(model.base_model.model)
    assert (site.family.name, site.stack_name, site.depth, site.num_prefix_tokens) == ("TinyViT", "blocks", 4, 1)
    assert (site.hidden_size, site.patch_size, site.model_type) == (32, 8, "TinyViT")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = _fresh(example)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3)
        ours, plain = model(x), base(x)
        with model.disable_adapter():
            assert torch.equal(model(x), plain)
    assert not torch.allclose(ours, plain)
    # the temperature hook is on the attention's `q` (the layout the family gave)
    block = model.base_model.model.blocks[0]
    assert block.base_layer.attn.q._forward_hooks
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_fresh(example), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), ours)
    assert isinstance(reloaded.base_model.model, vit_cls)


def test_cdc_with_attentive_reinforcement_on_the_custom_family(example):
    model = get_peft_model(_fresh(example), CDCPromptConfig(num_prompts=3, reinforce_scale_init=0.5)).eval()
    assert sum("cdc_reinforce_scales" in n for n, _ in model.named_parameters()) == 4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        with model.disable_adapter():
            assert torch.equal(model(x), _fresh(example)(x))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_prompts_sit_after_the_cls_token(example):
    model = get_peft_model(_fresh(example), gated_vpt.GatedPromptConfig(num_prompts=4, prompt_dropout=0.0)).eval()
    seen = []
    handle = model.base_model.model.blocks[0].base_layer.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    handle.remove()
    prompts = model.base_model.model.blocks[0].gpt_prompts["default"]
    assert seen[0].shape == (1, 1 + 4 + 16, 32)
    assert torch.equal(seen[0][0, 1:5], prompts.detach())


def test_without_a_description_the_model_is_refused_pointing_to_register_family(example):
    gated_vpt.unregister_family("TinyViT")
    with pytest.raises(UnsupportedModelError, match=r"describe it with `gated_vpt.register_family`"):
        get_peft_model(_fresh(example), gated_vpt.GatedPromptConfig())


def test_a_description_must_say_how_to_find_the_encoder():
    with pytest.raises(ValueError, match=r"needs `stack_paths` and at least one of `model_types`"):
        gated_vpt.register_family(
            gated_vpt.BackboneFamily(name="Nothing", model_types=(), stack_paths=("blocks",), num_prefix_tokens=len)
        )
    with pytest.raises(ValueError, match=r"already belong to the family 'ViT'"):
        gated_vpt.register_family(
            gated_vpt.BackboneFamily(name="Mine", model_types=("vit",), stack_paths=("x",), num_prefix_tokens=len)
        )


def _record(**overrides):
    fields = dict(
        name="Mine",
        model_types=("my_vit",),
        stack_paths=("encoder.layer",),
        num_prefix_tokens=lambda config: 1,
    )
    return gated_vpt.BackboneFamily(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_types": "vit"}, r"`model_types` must be a tuple of strings.*substring"),
        ({"module_classes": ("ViTModel",)}, r"`module_classes` must be a tuple of nn.Module classes"),
        ({"name": "ViT"}, r"`name` 'ViT' is a built-in family's"),
        ({"name": ""}, r"`name` must be a non-empty string"),
        ({"stack_paths": "encoder.layer"}, r"`stack_paths` must be a tuple"),
        ({"num_prefix_tokens": 1}, r"`num_prefix_tokens` must be a function"),
        ({"cls_token_index": -1}, r"`cls_token_index` must be None or an integer >= 0"),
    ],
)
def test_an_invalid_family_record_is_refused_at_registration(overrides, message):
    # Before: each of these registered; a plain-string model_types claimed every ViT, a string in module_classes broke
    # every later get_peft_model, and "ViT" silently replaced the built-in family.
    from tiny_models import TINY_BACKBONES

    with pytest.raises(ValueError, match=message):
        gated_vpt.register_family(_record(**overrides))
    assert gated_vpt.find_prompt_site(TINY_BACKBONES["vit"]()).family.name == "ViT"


@pytest.mark.parametrize(
    ("fact", "value"), [("num_prefix_tokens", -1), ("patch_size", -8), ("hidden_size", 0), ("num_prefix_tokens", 1.5)]
)
def test_a_family_giving_impossible_facts_is_refused_before_the_model_is_touched(example, fact, value):
    # Before: num_prefix_tokens=-1 or patch_size=-8 trained and saved, then every loader refused the save.
    import dataclasses

    family = gated_vpt.find_prompt_site(_fresh(example)).family
    gated_vpt.register_family(dataclasses.replace(family, **{fact: lambda module: value}))
    model = _fresh(example)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=rf"gives `{fact}` = {value}.*must be an integer >= "):
        get_peft_model(model, CDCPromptConfig(num_prompts=2, attentive_reinforcement=False))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_wrapped_model_keeps_the_family_record_it_was_wrapped_with(example):
    # Before: registering a new record for the family after wrapping changed the prefix count a new adapter recorded.
    import dataclasses

    model = example["model"]
    family = gated_vpt.find_prompt_site(model.base_model.model).family
    gated_vpt.register_family(dataclasses.replace(family, num_prefix_tokens=lambda module: 0))
    model.add_adapter("second", gated_vpt.GatedPromptConfig(num_prompts=2))
    assert model.peft_config["second"].backbone["num_prefix_tokens"] == 1
