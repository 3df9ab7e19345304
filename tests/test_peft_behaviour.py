"""The PEFT behaviours users rely on: save/load round trips, several adapters, disable, unload, merge errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import (
    expect_transformers_adapter_api,
    fresh_copy,
    main_output,
    perturb_adapter,
    transformers_adapter_api_refused,
)
from methods import METHOD_CASES, method_config
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from tiny_models import TINY_BACKBONES, pixel_values

import gated_vpt
from gated_vpt import GatedPromptConfig, MergeNotSupportedError
from gated_vpt.prompting.prompt_layer import PromptBlock

REPO_ROOT = Path(__file__).resolve().parents[1]


def config(method: str = "gpt", model=None, **overrides):
    """The method's config with 4 prompts and a trained head (tests/methods.py builds it)."""
    return method_config(method, model, **{"num_prompts": 4, "modules_to_save": ["classifier"], **overrides})


@pytest.fixture
def trained(backbone_name, method, tmp_path):
    """(a saved, perturbed adapter of `method` on `backbone_name`, the untouched base, the save folder)."""
    base = TINY_BACKBONES[backbone_name]()
    pristine = fresh_copy(base)
    model = get_peft_model(base, config(method, base)).eval()
    perturb_adapter(model)
    model.save_pretrained(tmp_path)
    return model, pristine, tmp_path


def test_saved_files_are_only_the_tiny_adapter(trained, method):
    model, _, path = trained
    assert sorted(os.listdir(path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    weights = load_file(path / "adapter_model.safetensors")
    n_saved = sum(t.numel() for t in weights.values())
    assert n_saved == model.get_nb_trainable_parameters()[0]
    assert all(t.dtype == torch.float32 for t in weights.values())
    saved = json.loads((path / "adapter_config.json").read_text())
    assert saved["peft_type"] == METHOD_CASES[method].peft_type
    assert saved["target_modules"] == sorted(saved["target_modules"], key=lambda n: int(n.rsplit(".", 1)[1]))
    assert saved["backbone"]["num_hidden_layers"] == 4


def test_peft_model_from_pretrained_is_bit_identical(trained):
    model, pristine, path = trained
    x = pixel_values()
    with torch.no_grad():
        expected = main_output(model(x))
        loaded = PeftModel.from_pretrained(fresh_copy(pristine), path).eval()
        assert torch.equal(main_output(loaded(x)), expected)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_peft_config_from_pretrained_round_trips(trained):
    model, _, path = trained
    loaded = PeftConfig.from_pretrained(path)
    assert type(loaded) is type(model.peft_config["default"])
    # PEFT itself sets inference_mode and auto_mapping when saving; every field of ours round-trips
    ignore = {"inference_mode", "auto_mapping"}
    strip = lambda d: {k: v for k, v in d.items() if k not in ignore}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(model.peft_config["default"].to_dict())


def test_is_trainable_reload_trains_the_same_parameters(trained):
    model, pristine, path = trained
    loaded = PeftModel.from_pretrained(fresh_copy(pristine), path, is_trainable=True)
    names = lambda m: sorted(n for n, p in m.named_parameters() if p.requires_grad)  # noqa: E731
    assert names(loaded) == names(model)


def test_load_adapter_adds_a_second_identical_adapter(trained):
    model, pristine, path = trained
    x = pixel_values()
    loaded = PeftModel.from_pretrained(fresh_copy(pristine), path).eval()
    loaded.load_adapter(path, adapter_name="again")
    loaded.set_adapter("again")
    with torch.no_grad():
        assert torch.equal(main_output(loaded(x)), main_output(model(x)))


def test_transformers_load_adapter(trained, backbone_name):
    model, pristine, path = trained
    base = fresh_copy(pristine)
    base.load_adapter(str(path))
    x = pixel_values()
    with torch.no_grad():
        torch.testing.assert_close(main_output(base(x)), main_output(model(x)), rtol=0, atol=0)
    # transformers' own adapter API after the load. transformers >= 5.24 refuses peft < 0.22 there, for every PEFT
    # method (LoRA too): then each call must give that refusal and leave the loaded adapter working.
    if transformers_adapter_api_refused():
        for call in (base.active_adapters, lambda: base.set_adapter("default"), base.disable_adapters):
            expect_transformers_adapter_api(call)
        with torch.no_grad():
            torch.testing.assert_close(main_output(base(x)), main_output(model(x)), rtol=0, atol=0)
        return
    assert base.active_adapters() == ["default"]
    base.set_adapter("default")
    base.disable_adapters()
    with torch.no_grad():
        torch.testing.assert_close(main_output(base(x)), main_output(pristine(x)), rtol=0, atol=0)
    base.enable_adapters()
    with torch.no_grad():
        torch.testing.assert_close(main_output(base(x)), main_output(model(x)), rtol=0, atol=0)


def test_gated_vpt_loader_checks_and_loads(trained):
    model, pristine, path = trained
    loaded = gated_vpt.from_pretrained(fresh_copy(pristine), path).eval()
    x = pixel_values()
    with torch.no_grad():
        assert torch.equal(main_output(loaded(x)), main_output(model(x)))


def test_several_adapters_switch_and_delete(backbone_name, method):
    base = TINY_BACKBONES[backbone_name]()
    pristine = fresh_copy(base)
    x = pixel_values()
    model = get_peft_model(base, config(method, base)).eval()
    perturb_adapter(model, seed=1)
    model.add_adapter("other", config(method, base, num_prompts=2, layers_to_transform=[1, 2, 3]))
    model.set_adapter("other")
    perturb_adapter(model, seed=2)  # only "other" is trainable now
    with torch.no_grad():
        out_other = main_output(model(x))
        model.set_adapter("default")
        out_default = main_output(model(x))
        base_out = main_output(pristine(x))
        assert not torch.allclose(out_other, out_default)
        model.delete_adapter("default")
        assert model.active_adapters == ["other"]
        assert torch.equal(main_output(model(x)), out_other)
        model.delete_adapter("other")
        assert model.base_model.active_adapters == []
        # With every adapter gone the blocks pass through and the head is the original one. (PEFT's PeftModel
        # keeps a stale `active_adapter` then, for every PEFT method, so call the wrapped model or unload().)
        assert torch.equal(main_output(model.base_model.model(x)), base_out)
        assert torch.equal(main_output(model.unload()(x)), base_out)


def test_two_prompt_adapters_cannot_be_active_together(method):
    model = get_peft_model(TINY_BACKBONES["vit"](), config(method))
    model.add_adapter("other", config(method))
    with pytest.raises(ValueError, match="one prompt adapter"):
        model.base_model.set_adapter(["default", "other"])


def test_disable_adapter_equals_the_base_model(trained):
    model, pristine, _ = trained
    x = pixel_values()
    with torch.no_grad():
        with model.disable_adapter():
            disabled = model(x, output_hidden_states=True)
        base = pristine(x, output_hidden_states=True)
        assert torch.equal(main_output(disabled), main_output(base))
        assert all(torch.equal(a, b) for a, b in zip(disabled.hidden_states, base.hidden_states, strict=False))
        assert not torch.equal(main_output(model(x)), main_output(base))


def test_unload_returns_the_original_model_bit_for_bit(trained):
    model, pristine, _ = trained
    trained_head = {
        k: v.clone() for k, v in model.base_model.model.classifier.modules_to_save["default"].state_dict().items()
    }
    unloaded = model.unload()
    assert type(unloaded) is type(pristine)
    assert unloaded.state_dict().keys() == pristine.state_dict().keys()
    assert not any(isinstance(m, gated_vpt.prompting.prompt_layer.PromptBlock) for m in unloaded.modules())
    assert not any(m._forward_hooks for m in unloaded.modules())
    x = pixel_values()
    with torch.no_grad():
        hidden = unloaded(x, output_hidden_states=True).hidden_states
        assert all(
            torch.equal(a, b)
            for a, b in zip(hidden, pristine(x, output_hidden_states=True).hidden_states, strict=False)
        )
    # PEFT's unload() keeps the trained copy of each `modules_to_save` module (its documented semantics)
    assert all(torch.equal(v, trained_head[k]) for k, v in unloaded.classifier.state_dict().items())


def test_unload_without_trained_modules_equals_the_original_outputs(backbone_name, method):
    base = TINY_BACKBONES[backbone_name]()
    pristine = fresh_copy(base)
    model = get_peft_model(base, config(method, base, modules_to_save=None))
    perturb_adapter(model)
    unloaded = model.unload()
    x = pixel_values()
    with torch.no_grad():
        assert torch.equal(unloaded(x).logits, pristine(x).logits)
    assert all(
        torch.equal(a, b) for a, b in zip(unloaded.state_dict().values(), pristine.state_dict().values(), strict=False)
    )


def test_merging_is_refused_with_a_clear_error(trained):
    model, _, _ = trained
    with pytest.raises(MergeNotSupportedError, match="cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(MergeNotSupportedError, match="cannot be merged"):
        model.merge_adapter()


def test_bare_peft_load_without_import_fails_but_our_loader_works(tmp_path):
    """PEFT discovers no plugins: without `import gated_vpt` the adapter type is unknown. Our loader works."""
    path = tmp_path
    get_peft_model(TINY_BACKBONES["vit"](), config()).save_pretrained(path)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        from peft import PeftConfig
        try:
            PeftConfig.from_pretrained({str(path)!r})
        except KeyError as error:
            print("bare KeyError", error)
        import gated_vpt
        config = PeftConfig.from_pretrained({str(path)!r})
        print("loaded", type(config).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "bare KeyError 'GATED_PROMPT'" in result.stdout
    assert "loaded GatedPromptConfig" in result.stdout


def test_registration_is_idempotent():
    import importlib

    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    importlib.reload(gated_vpt.prompting.registration)
    gated_vpt.register("gated_prompt", GatedPromptConfig, gated_vpt.GatedPromptModel, prefix="gpt_")
    assert PEFT_TYPE_TO_TUNER_MAPPING["GATED_PROMPT"] is gated_vpt.GatedPromptModel


def test_get_peft_model_does_not_consume_the_config():
    # One config object reused for two backbones of different depth, as users do with LoRA configs.
    shallow = TINY_BACKBONES["vit"]()
    deep_config = shallow.config.__class__(**{**shallow.config.to_dict(), "num_hidden_layers": 6})
    deep = type(shallow)(deep_config)
    cfg = config()
    first = get_peft_model(shallow, cfg)
    assert cfg.backbone is None and cfg.target_modules is None
    second = get_peft_model(deep, cfg)
    assert first.peft_config["default"].backbone["num_hidden_layers"] == 4
    assert second.peft_config["default"].backbone["num_hidden_layers"] == 6
    assert len(second.peft_config["default"].target_modules) == 6


@pytest.mark.parametrize("target_modules", [["vit.layers.2", "vit.layers.3"], ["layers.2", "layers.3"], ["layers.2"]])
def test_target_modules_naming_blocks_choose_the_prompted_blocks(target_modules, tmp_path):
    # Full module names or dotted tails; the result is the adapter `layers_to_transform` gives for those blocks.
    indices = sorted({int(name.rsplit(".", 1)[1]) for name in target_modules})
    by_name = get_peft_model(TINY_BACKBONES["vit"](), config(target_modules=target_modules)).eval()
    by_index = get_peft_model(TINY_BACKBONES["vit"](), config(layers_to_transform=indices)).eval()
    wrapped = [n for n, m in by_name.named_modules() if isinstance(m, PromptBlock)]
    assert wrapped == [f"base_model.model.vit.layers.{i}" for i in indices]
    saved = by_name.peft_config["default"]
    assert saved.layers_to_transform == indices and saved.backbone["prompted_blocks"] == [indices[0], indices[-1]]
    by_index.load_state_dict(by_name.state_dict())
    x = pixel_values()
    with torch.no_grad():
        assert torch.equal(by_name(x).logits, by_index(x).logits)
    by_name.save_pretrained(tmp_path)
    reloaded = gated_vpt.from_pretrained(TINY_BACKBONES["vit"](), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, by_name(x).logits)


def test_a_backbone_record_copied_from_an_adapter_is_accepted_on_its_backbone():
    record = get_peft_model(TINY_BACKBONES["vit"](), config()).peft_config["default"].backbone
    again = get_peft_model(TINY_BACKBONES["vit"](), config(backbone=record))
    assert again.peft_config["default"].backbone == record


@pytest.mark.parametrize("call", ["add_weighted_adapter", "subtract_mutated_init"])
def test_lora_only_calls_say_they_are_not_supported(call):
    model = get_peft_model(TINY_BACKBONES["vit"](), config())
    with pytest.raises(NotImplementedError, match="not supported for prompt adapters"):
        getattr(model, call)(["default"], [1.0], "merged")
    assert list(model.peft_config) == ["default"]


@pytest.mark.parametrize("method", ["gpt", "cdc"])
def test_prompt_tuning_on_top_of_lora_reads_the_wrapped_projections(method):
    # LoRA injected first (q_proj, k_proj wrapped by lora.Linear), prompts on top: GPT's temperature must divide the
    # whole query (base + LoRA update), CDC's AR must read the wrapped query and key.
    from peft import LoraConfig, inject_adapter_in_model

    def lora_vit():
        vit = inject_adapter_in_model(
            LoraConfig(target_modules=["q_proj", "k_proj"], init_lora_weights=False), TINY_BACKBONES["vit"]()
        )
        return vit

    if method == "cdc":
        model = get_peft_model(lora_vit(), gated_vpt.CDCPromptConfig(num_prompts=3, prompt_dropout=0.0)).eval()
        assert sum("cdc_reinforce_scales" in n for n, _ in model.named_parameters()) >= 3
        with torch.no_grad():
            model(pixel_values())
        return
    model = get_peft_model(lora_vit(), config(prompt_dropout=0.0)).eval()
    reference = fresh_copy(model)
    with torch.no_grad():
        for block in model.base_model.model.vit.layers:
            block.gpt_temperatures["default"].fill_(2.0)
        # the same attention logits: the query (base weight, bias and LoRA's B) halved instead
        for block in reference.base_model.model.vit.layers:
            q_proj = block.base_layer.attention.q_proj
            q_proj.base_layer.weight.mul_(0.5)
            q_proj.base_layer.bias.mul_(0.5)
            q_proj.lora_B["default"].weight.mul_(0.5)
    x = pixel_values()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference(x).logits, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(x).logits, TINY_BACKBONES["vit"]()(x).logits)
