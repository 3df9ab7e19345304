"""Data-driven prompt initialisation (SPT), `gated_vpt.initialize_prompts`: the identities of
../shared/docs/METHODS_NEXT.md §1.5, for every registered method, through the public API."""

from __future__ import annotations

import json

import pytest
import torch
from methods import method_config
from peft import PeftModel, get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

from gated_vpt import ConfigError, find_prompt_site, initialize_prompts, preset_config
from gated_vpt.vpt.initialization import window_pool


def _model(method: str, backbone: str = "vit", **fields):
    torch.manual_seed(0)
    base = TINY_BACKBONES[backbone]().eval()
    return get_peft_model(base, method_config(method, base, **{"num_prompts": 3, **fields}))


def _batches(count: int = 3, size: int = 4):
    return [
        {"pixel_values": pixel_values(size, seed=10 + i), "labels": torch.zeros(size, dtype=torch.long)}
        for i in range(count)
    ]


def _owners(model):
    return [m for m in model.modules() if hasattr(m, "prompts") and "default" in m.prompts]


def _prompt_free_block_inputs(model, batches):
    """Each prompt-owning block's input in the prompt-free model, per batch (the candidates SPT draws from)."""
    owners = _owners(model)
    seen = {id(b): [] for b in owners}
    handles = [
        b.register_forward_pre_hook(lambda m, args, kwargs: seen[id(m)].append(args[0].detach()), with_kwargs=True)
        for b in owners
    ]
    with model.disable_adapter(), torch.no_grad():
        for batch in batches:
            model(pixel_values=batch["pixel_values"])
    for handle in handles:
        handle.remove()
    return owners, seen


@pytest.mark.parametrize("backbone", ["vit", "dinov2_registers"])
def test_spt_sample_draws_every_prompt_from_the_patch_tokens_of_its_block(method, backbone):
    model = _model(method, backbone, prompt_init="spt-sample")
    batches = _batches()
    owners, inputs = _prompt_free_block_inputs(model, batches)
    prefix = find_prompt_site(model.base_model.model).num_prefix_tokens
    record = initialize_prompts(model, batches)
    assert record == {"method": "spt-sample", "batches": 3, "images": 12, "seed": 0}
    assert owners, method
    for block in owners:
        tokens = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs[id(block)]]).float()
        patches = torch.cat([x[:, prefix:].reshape(-1, x.shape[-1]) for x in inputs[id(block)]]).float()
        prompts = block.prompts["default"].detach()
        for row in prompts:  # bit-identical to a patch token, never to a CLS / register token
            assert (patches == row).all(-1).any()
            matches = (tokens == row).all(-1).nonzero().flatten()
            positions = {int(i) % inputs[id(block)][0].shape[1] for i in matches}
            assert min(positions) >= prefix
        assert len({tuple(r.tolist()) for r in prompts}) == len(prompts)  # without replacement


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_spt_pooling_windows_are_consecutive_raster_tokens_of_one_image(mode):
    model = _model("vpt", prompt_init=f"spt-{mode}", num_prompts=5)  # 4 windows of 4 tokens over the 16 patches
    batches = _batches(2)
    owners, inputs = _prompt_free_block_inputs(model, batches)
    initialize_prompts(model, batches)
    for block in owners:
        patches = torch.cat([x[:, 1:] for x in inputs[id(block)]]).float()  # [images, 16, D]
        windows = patches.reshape(patches.shape[0], 4, 4, -1)
        pooled = windows.mean(dim=2) if mode == "mean" else windows.amax(dim=2)
        whole = patches.mean(dim=1) if mode == "mean" else patches.amax(dim=1)  # no tail: the whole sequence
        candidates = torch.cat([pooled.reshape(-1, pooled.shape[-1]), whole])
        for row in block.prompts["default"].detach():
            assert torch.isclose(candidates, row, rtol=0, atol=1e-6).all(-1).any()


def test_window_pool_has_a_tail_window_and_one_prompt_pools_everything():
    patches = torch.arange(10.0).reshape(1, 10, 1)
    # 3 prompts: 2 windows of 5, no rest -> the tail is the whole sequence
    assert window_pool(patches, 3, "mean").flatten().tolist() == [2.0, 7.0, 4.5]
    # 4 prompts: 3 windows of 3, tail = the last token
    assert window_pool(patches, 4, "max").flatten().tolist() == [2.0, 5.0, 8.0, 9.0]
    assert window_pool(patches, 1, "mean").flatten().tolist() == [4.5]


def test_the_draw_is_seeded():
    first, second, other = (_model("vpt", prompt_init="spt-sample") for _ in range(3))
    for model, seed in ((first, 0), (second, 0), (other, 1)):
        initialize_prompts(model, _batches(), seed=seed)
    same = [
        torch.equal(a.prompts["default"], b.prompts["default"])
        for a, b in zip(_owners(first), _owners(second), strict=True)
    ]
    differ = [
        torch.equal(a.prompts["default"], b.prompts["default"])
        for a, b in zip(_owners(first), _owners(other), strict=True)
    ]
    assert all(same) and not all(differ)


def test_the_forward_refuses_placeholder_prompts_and_the_fix_is_named():
    model = _model("gpt", prompt_init="spt-mean")
    with pytest.raises(RuntimeError, match=r"initialize_prompts\(model, train_batches\)"):
        model(pixel_values=pixel_values())


def test_a_saved_adapter_reloads_without_data(tmp_path):
    model = _model("cdc", prompt_init="spt-max")
    initialize_prompts(model, _batches(), max_batches=2)
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values()).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["prompt_init"] == "spt-max"
    assert saved["prompt_init_record"] == {"method": "spt-max", "batches": 2, "images": 8, "seed": 0}
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(TINY_BACKBONES["vit"]().eval(), tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=pixel_values()).logits, expected)


def test_batches_may_be_tensors_or_image_label_pairs_and_training_mode_is_kept():
    images = [pixel_values(4, seed=s) for s in range(2)]
    from_tensors, from_pairs = _model("vpt", prompt_init="spt-sample"), _model("vpt", prompt_init="spt-sample")
    from_tensors.train()
    initialize_prompts(from_tensors, images)
    initialize_prompts(from_pairs, [(x, torch.zeros(4)) for x in images])
    assert from_tensors.training and all(m.training for m in from_tensors.modules())
    for a, b in zip(_owners(from_tensors), _owners(from_pairs), strict=True):
        assert torch.equal(a.prompts["default"], b.prompts["default"])


def test_bf16_backbone_keeps_fp32_prompts():
    torch.manual_seed(0)
    base = TINY_BACKBONES["vit"]().to(torch.bfloat16)
    model = get_peft_model(base, preset_config("vpt-deep", num_prompts=3, prompt_init="spt-mean"))
    initialize_prompts(model, _batches())
    assert all(b.prompts["default"].dtype == torch.float32 for b in _owners(model))
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=pixel_values().to(torch.bfloat16)).logits).all()


def test_what_cannot_be_initialised_is_refused_clearly():
    with pytest.raises(ValueError, match="not data-driven"):
        initialize_prompts(_model("vpt"), _batches())
    with pytest.raises(ValueError, match="pass more batches"):
        initialize_prompts(_model("vpt", prompt_init="spt-sample"), [])
    with pytest.raises(TypeError, match="dicts of model inputs"):
        initialize_prompts(_model("vpt", prompt_init="spt-sample"), ["images.png"])
    with pytest.raises(ConfigError, match="prompt_init_record"):
        preset_config("vpt-deep", prompt_init_record={"method": object()})
