"""Every registered backbone family works, proven on tiny configs (issue 4: "any Hugging Face ViT").

For every family of `TINY_BACKBONES`, with Gated Prompt Tuning and (when the package has it) CDC:
- outputs keep the base model's shapes, change with the adapter, and equal the base exactly when it is disabled;
- hidden states are prompt-free and, before the first prompted block, bit-identical to the base model's;
- attention maps come back (eager attention) and include the prompt rows / columns;
- save_pretrained -> PeftModel.from_pretrained onto a fresh base gives bit-identical outputs;
- another image size works (interpolated position embeddings, or natively for DINOv2 / DINOv3);
- the prompts sit right after the family's prefix tokens, which are the base model's.
Then the family-specific cases (DeiT's teacher head, ViTMAE pre-training, CLIP / SigLIP two-tower models, DINOv3 RoPE,
BEiT / Data2Vec relative position biases, Backbone classes), unsupported models, and the generated docs table.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from helpers import InputRecorder, main_output, perturb_adapter
from methods import METHOD_CASES, extra_attention_keys, method_config, skip_unless_any_image_size
from peft import PeftModel, get_peft_model
from tiny_models import (
    DEPTH,
    HEADS,
    HIDDEN,
    IMAGE_SIZE,
    NUM_LABELS,
    OTHER_INPUT_BACKBONES,
    TINY_BACKBONES,
    TINY_FAMILY_FACTS,
    pixel_values,
    tiny_aimv2_model,
    tiny_clip_model,
    tiny_deit_with_teacher,
    tiny_metaclip_2_model,
    tiny_siglip_model,
    tiny_vit_mae_pretraining,
)

from gated_vpt import FAMILIES, GatedPromptConfig, UnsupportedModelError, find_prompt_site
from gated_vpt.prompting.prompt_layer import PromptBlock
from gated_vpt.vit.backbones import supported_models_markdown
from gated_vpt.vit.timm_families import TIMM_FAMILIES

NUM_PROMPTS = 3
FAMILY_IDS = sorted(TINY_BACKBONES)
# Families whose forward has no `interpolate_pos_encoding` argument: they take any image size as is.
ANY_SIZE_NATIVELY = {"dinov2", "dinov2_registers", "dinov3"}
# Families whose base model takes only its configured image size (learned position embeddings, no interpolation).
FIXED_SIZE = {"aimv2"}
DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "supported_models.md"


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def prompt_config(method: str, model: torch.nn.Module, **overrides):
    """A config whose adapter visibly changes the outputs (open gates, CDC with a non-zero AR scale)."""
    return method_config(method, model, visible=True, num_prompts=NUM_PROMPTS, prompt_dropout=0.0, **overrides)


def wrap(base: torch.nn.Module, method: str, **overrides):
    """(PeftModel in eval mode, untouched copy of the base).

    The copy is frozen like the wrapped base: `nn.MultiheadAttention` (SigLIP's pooling head) takes a different, not
    bit-identical, fast path when none of its parameters requires a gradient."""
    reference = copy.deepcopy(base).requires_grad_(False)
    model = get_peft_model(base, prompt_config(method, base, **overrides)).eval()
    return model, reference


def prompt_blocks(model: torch.nn.Module) -> dict[str, PromptBlock]:
    return {name: module for name, module in model.named_modules() if isinstance(module, PromptBlock)}


def first_block(model: PeftModel) -> PromptBlock:
    inner = model.base_model.model
    return inner.get_submodule(find_prompt_site(inner).block_names[0])


# ----------------------------------------------------------------------------------------------------------------
# the registry and the docs
# ----------------------------------------------------------------------------------------------------------------


# Families whose inputs or outputs the shared tests cannot use, tested by their own tests instead: NaFlex patch lists
# (below), and videos and pose heatmaps (the same checks in tests/test_families_video_pose.py).
OWN_HARNESS = {
    "SigLIP2 vision tower (NaFlex)": "test_siglip2_naflex_prompts_attend_real_patches_only",
    **{case.family: "tests/test_families_video_pose.py" for case in OTHER_INPUT_BACKBONES.values()},
    # timm models (needs timm, which CI's newest-releases leg installs), supported and refused
    **{family.name: "tests/test_timm.py" for family in TIMM_FAMILIES},
}


def test_every_registered_family_has_a_tiny_model():
    tested = {family_name for family_name, _ in TINY_FAMILY_FACTS.values()}
    assert tested | set(OWN_HARNESS) >= {family.name for family in FAMILIES if not family.refusal}
    assert set(TINY_FAMILY_FACTS) == set(TINY_BACKBONES)
    assert {family.name for family in FAMILIES if family.refusal} == set(REFUSED) | {
        family.name for family in TIMM_FAMILIES if family.refusal
    }


def _tiny(class_name: str, config_name: str, **fields):
    def build():
        import transformers

        torch.manual_seed(0)
        return getattr(transformers, class_name)(getattr(transformers, config_name)(**fields)).eval()

    return build


_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
# Family name -> (a tiny model of it, a phrase its refusal must give)
REFUSED = {
    "ViTDet": (
        _tiny("VitDetModel", "VitDetConfig", **_SMALL, pretrain_image_size=32, window_size=2, window_block_indices=[0]),
        "fixed windows",
    ),
    "SAM / SAM-HQ / SAM 3 image encoders": (
        _tiny("SamVisionModel", "SamVisionConfig", **_SMALL, output_channels=16, window_size=2, mlp_dim=64),
        "windowed attention",
    ),
    "Hiera": (
        _tiny(
            "HieraModel",
            "HieraConfig",
            embed_dim=16,
            image_size=[32, 32],
            patch_size=[4, 4],
            patch_stride=[4, 4],
            patch_padding=[0, 0],
            depths=[1, 1],
            num_heads=[1, 2],
            num_query_pool=1,
            query_stride=[2, 2],
            masked_unit_size=[2, 2],
            masked_unit_attention=[True, False],
        ),
        "hierarchical",
    ),
    "Pixtral vision encoder": (
        _tiny("PixtralVisionModel", "PixtralVisionConfig", **_SMALL, intermediate_size=64, head_dim=16),
        "block-diagonal attention",
    ),
    "RADIO": (
        _tiny("RadioModel", "RadioConfig", **_SMALL, num_cls_tokens=1, num_registers=1, max_img_size=64),
        "packed mode",
    ),
}


@pytest.mark.parametrize("family_name", sorted(REFUSED))
def test_refused_families_say_why_and_are_left_untouched(family_name, method):
    build, reason = REFUSED[family_name]
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # without the parts of the method that need a CLS token: the refusal must be the family's, whatever it holds
    config = method_config(method, num_prompts=NUM_PROMPTS, **METHOD_CASES[method].without_cls)
    with pytest.raises(UnsupportedModelError, match=rf"holds a {re.escape(family_name)} encoder .*{reason}"):
        get_peft_model(model, config)
    assert not hasattr(model, "peft_config")
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_the_tiny_model_resolves_to_its_family(family_id):
    family_name, prefix = TINY_FAMILY_FACTS[family_id]
    for head in (True, False):
        site = find_prompt_site(TINY_BACKBONES[family_id](head=head))
        assert site.family.name == family_name
        assert site.num_prefix_tokens == prefix
        assert (site.hidden_size, site.depth, site.patch_size) == (HIDDEN, DEPTH, 8)
        assert (site.cls_token_index is None) == (prefix == 0)


# Every class the docs table claims as tested is built (and prompted) by some test of this module.
EXTRA_CLASSES = {
    "DeiTForImageClassificationWithTeacher": tiny_deit_with_teacher,
    "ViTMAEForPreTraining": tiny_vit_mae_pretraining,
    "CLIPModel": tiny_clip_model,
    "SiglipModel": tiny_siglip_model,
    "MetaClip2Model": tiny_metaclip_2_model,
    "Aimv2Model": tiny_aimv2_model,
    "Siglip2VisionModel": lambda: _tiny_siglip2(),
    "Siglip2Model": lambda: _tiny_siglip2_model(),
    "Idefics3Model": lambda: _tiny_idefics3_model(),
    # built and prompted by tests/test_families_video_pose.py
    **{
        type(case.build(head=head)).__name__: (lambda case=case, head=head: case.build(head=head))
        for case in OTHER_INPUT_BACKBONES.values()
        for head in (True, False)
    },
}
BACKBONE_CLASSES = {"Dinov2Backbone": "dinov2", "DINOv3ViTBackbone": "dinov3"}
# the refused families' classes are built (and refused) by test_refused_families_say_why_and_are_left_untouched
REFUSED_CLASSES = {"VitDetModel", "SamVisionModel", "HieraModel", "PixtralVisionModel", "RadioModel"}


def test_docs_claim_only_tested_classes():
    built = {type(TINY_BACKBONES[f](head=h)).__name__ for f in FAMILY_IDS for h in (True, False)}
    assert all(type(factory()).__name__ == name for name, factory in EXTRA_CLASSES.items())
    claimed = {name for family in FAMILIES if not family.class_names for name in family.example_classes}
    refused = {type(build()).__name__ for build, _ in REFUSED.values()}
    assert refused == REFUSED_CLASSES
    assert claimed <= built | set(EXTRA_CLASSES) | set(BACKBONE_CLASSES) | refused, claimed - built


def test_supported_models_page_is_generated_from_the_registry():
    spec = importlib.util.spec_from_file_location(
        "gen_supported_models", DOCS_PAGE.with_name("gen_supported_models.py")
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.render() == supported_models_markdown()
    assert DOCS_PAGE.read_text(encoding="utf-8") == generator.render(), (
        "docs/supported_models.md is out of date: run `python docs/gen_supported_models.py`"
    )
    for family in FAMILIES:
        assert f"| {family.name} |" in supported_models_markdown()


# ----------------------------------------------------------------------------------------------------------------
# every family x every method
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", [True, False], ids=["head", "encoder"])
@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_outputs_change_with_the_adapter_and_equal_the_base_when_disabled(family_id, head, method):
    model, reference = wrap(TINY_BACKBONES[family_id](head=head), method)
    x = pixel_values()
    with torch.no_grad():
        base = reference(x)
        ours = model(x)
        with model.disable_adapter():
            off = model(x)
    for key, value in base.items():
        if torch.is_tensor(value):
            assert ours[key].shape == value.shape, key
            assert torch.equal(off[key], value), key
    assert not torch.allclose(main_output(ours), main_output(base))
    assert len(prompt_blocks(model)) == DEPTH


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_hidden_states_are_prompt_free_and_untouched_before_the_first_prompted_block(family_id, method):
    model, reference = wrap(TINY_BACKBONES[family_id](head=False), method, layers_to_transform=[2, 3])
    x = pixel_values()
    with torch.no_grad():
        ours = model(x, output_hidden_states=True)
        base = reference(x, output_hidden_states=True)
    assert len(ours.hidden_states) == len(base.hidden_states) == DEPTH + 1
    assert [h.shape for h in ours.hidden_states] == [h.shape for h in base.hidden_states]
    for index in range(3):  # the embeddings and the outputs of blocks 0 and 1
        assert torch.equal(ours.hidden_states[index], base.hidden_states[index]), index
    assert not torch.allclose(ours.hidden_states[-1], base.hidden_states[-1])
    assert ours.last_hidden_state.shape == base.last_hidden_state.shape


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_attention_maps_include_the_prompt_rows_and_columns(family_id, method):
    model, reference = wrap(TINY_BACKBONES[family_id](head=True, attn_implementation="eager"), method)
    x = pixel_values()
    with torch.no_grad():
        ours = model(x, output_attentions=True).attentions
        base = reference(x, output_attentions=True).attentions
        with model.disable_adapter():
            off = model(x, output_attentions=True).attentions
    assert len(ours) == len(base) == DEPTH
    extra = NUM_PROMPTS + extra_attention_keys(method, model.peft_config["default"])  # E²VPT: its key-value rows too
    for mine, theirs in zip(ours, base, strict=True):
        batch, heads, length, _ = theirs.shape
        assert (batch, heads) == (2, HEADS)
        assert mine.shape == (batch, heads, length + extra, length + extra)
        torch.testing.assert_close(mine.sum(-1), torch.ones(mine.shape[:-1]))
    assert all(torch.equal(a, b) for a, b in zip(off, base, strict=True))


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_save_and_load_give_bit_identical_outputs(family_id, method, tmp_path):
    factory = TINY_BACKBONES[family_id]
    model, _ = wrap(factory(head=True), method, modules_to_save=["classifier"])
    perturb_adapter(model, scale=0.1, seed=7)
    x = pixel_values()
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(factory(head=True), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, expected)


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_another_image_size(family_id, method):
    skip_unless_any_image_size(method)
    size = 48
    model, reference = wrap(TINY_BACKBONES[family_id](head=False), method)
    x = pixel_values(size=size)
    if family_id in FIXED_SIZE:  # the base model's own limit: the adapter neither lifts nor hides it
        with torch.no_grad(), pytest.raises(RuntimeError):
            reference(x)
        with torch.no_grad(), pytest.raises(RuntimeError):
            model(x)
        return
    kwargs = {} if family_id in ANY_SIZE_NATIVELY else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        base = reference(x, **kwargs).last_hidden_state
        ours = model(x, **kwargs).last_hidden_state
        with model.disable_adapter():
            off = model(x, **kwargs).last_hidden_state
    prefix = TINY_FAMILY_FACTS[family_id][1]
    assert base.shape == (2, prefix + (size // 8) ** 2, HIDDEN)
    assert ours.shape == base.shape
    assert torch.equal(off, base)
    assert not torch.allclose(ours, base)


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_prompts_follow_the_prefix_tokens(family_id, method):
    model, reference = wrap(TINY_BACKBONES[family_id](head=False), method)
    prefix = TINY_FAMILY_FACTS[family_id][1]
    block = first_block(model)
    assert block.num_prefix_tokens == prefix
    ours = InputRecorder(block.base_layer)
    theirs = InputRecorder(reference.get_submodule(find_prompt_site(reference).block_names[0]))
    with torch.no_grad():
        model(pixel_values())
        reference(pixel_values())
        prompts = block._entry_prompts("default", block.prompt_roles["default"], theirs.inputs[0])
    ours.remove()
    theirs.remove()
    (seq,), (base_seq,) = ours.inputs, theirs.inputs
    assert seq.shape[1] == base_seq.shape[1] + NUM_PROMPTS
    assert torch.equal(seq[:, :prefix], base_seq[:, :prefix])  # CLS / distillation / registers, as in the base
    assert torch.equal(seq[:, prefix : prefix + NUM_PROMPTS], prompts)
    assert torch.equal(seq[:, prefix + NUM_PROMPTS :], base_seq[:, prefix:])  # the patches, as in the base


# ----------------------------------------------------------------------------------------------------------------
# family-specific cases
# ----------------------------------------------------------------------------------------------------------------


def test_deit_with_teacher_keeps_both_heads_on_their_tokens(method):
    model, reference = wrap(tiny_deit_with_teacher(), method)
    assert first_block(model).num_prefix_tokens == 2
    x = pixel_values()
    with torch.no_grad():
        base, ours = reference(x), model(x)
        with model.disable_adapter():
            off = model(x)
    for key in ("logits", "cls_logits", "distillation_logits"):
        assert ours[key].shape == base[key].shape == (2, NUM_LABELS)
        assert torch.equal(off[key], base[key])
        assert not torch.allclose(ours[key], base[key])
    torch.testing.assert_close(ours.logits, (ours.cls_logits + ours.distillation_logits) / 2)


def test_vit_mae_pretraining_prompts_the_encoder_only(method):
    base_model = tiny_vit_mae_pretraining(mask_ratio=0.75)
    model, reference = wrap(base_model, method)
    wrapped = prompt_blocks(model)
    assert len(wrapped) == DEPTH and all(".vit.layers." in name for name in wrapped)
    assert not any(isinstance(m, PromptBlock) for m in model.base_model.model.decoder.modules())

    inner = model.base_model.model
    decoder_in = InputRecorder(inner.decoder)
    base_decoder_in = InputRecorder(reference.decoder)
    encoder_in = InputRecorder(first_block(model).base_layer)
    base_encoder_in = InputRecorder(reference.vit.layers[0])
    x = pixel_values()
    with torch.no_grad():
        ours, base = model(x), reference(x)
        with model.disable_adapter():
            off = model(x)
        block = first_block(model)
        prompts = block._entry_prompts("default", block.prompt_roles["default"], base_encoder_in.inputs[0])
    for recorder in (decoder_in, base_decoder_in, encoder_in, base_encoder_in):
        recorder.remove()

    kept = int(16 * (1 - 0.75))
    assert base_decoder_in.inputs[0].shape == (2, 1 + kept, HIDDEN)  # [CLS; kept patches]
    assert decoder_in.inputs[0].shape == base_decoder_in.inputs[0].shape  # the decoder gets a prompt-free latent
    # prompts after CLS of the masked sequence [CLS; kept patches]
    assert encoder_in.inputs[0].shape == (2, 1 + NUM_PROMPTS + kept, HIDDEN)
    assert torch.equal(encoder_in.inputs[0][:, :1], base_encoder_in.inputs[0][:, :1])
    assert torch.equal(encoder_in.inputs[0][:, 1 : 1 + NUM_PROMPTS], prompts)
    assert torch.equal(encoder_in.inputs[0][:, 1 + NUM_PROMPTS :], base_encoder_in.inputs[0][:, 1:])
    assert ours.logits.shape == base.logits.shape
    assert torch.isfinite(ours.loss) and ours.loss != base.loss
    assert torch.equal(off.loss, base.loss) and torch.equal(off.mask, base.mask)

    model.train()
    model(x).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def _images() -> dict[str, torch.Tensor]:
    return {"pixel_values": pixel_values()}


# model class -> (factory, image inputs); SigLIP2's are NaFlex patch lists (see _naflex_batch below)
TWO_TOWER_MODELS = {
    "CLIPModel": (tiny_clip_model, _images),
    "SiglipModel": (tiny_siglip_model, _images),
    "MetaClip2Model": (tiny_metaclip_2_model, _images),
    "Aimv2Model": (tiny_aimv2_model, _images),
    "Siglip2Model": (lambda: _tiny_siglip2_model(), lambda: _naflex_batch()),
}


@pytest.mark.parametrize("model_class", sorted(TWO_TOWER_MODELS))
def test_two_tower_models_prompt_the_vision_tower_only(model_class, method):
    factory, images = TWO_TOWER_MODELS[model_class]
    model, reference = wrap(factory(), method)
    wrapped = prompt_blocks(model)
    assert sorted(wrapped) == [f"base_model.model.vision_model.encoder.layers.{i}" for i in range(DEPTH)]
    text_layers = model.base_model.model.text_model.encoder.layers
    assert not any(isinstance(m, PromptBlock) for m in text_layers.modules())
    inputs = {"input_ids": torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]]), **images()}
    with torch.no_grad():
        ours, base = model(**inputs), reference(**inputs)
        with model.disable_adapter():
            off = model(**inputs)
    assert ours.logits_per_image.shape == base.logits_per_image.shape == (2, 2)
    assert torch.equal(ours.text_embeds, base.text_embeds)  # the text tower is untouched
    assert not torch.allclose(ours.image_embeds, base.image_embeds)
    assert torch.equal(off.logits_per_image, base.logits_per_image)
    assert ours.vision_model_output.last_hidden_state.shape == base.vision_model_output.last_hidden_state.shape


def test_dinov3_prompts_get_no_rotary_embedding(method, monkeypatch):
    from transformers.models.dinov3_vit import modeling_dinov3_vit as dinov3

    model, _ = wrap(TINY_BACKBONES["dinov3"](head=False), method)
    prefix, num_patches = TINY_FAMILY_FACTS["dinov3"][1], 16
    calls = []
    original = dinov3.apply_rotary_pos_emb

    def spy(q, k, cos, sin, **kwargs):
        q_out, k_out = original(q, k, cos, sin, **kwargs)
        calls.append((q, k, q_out, k_out, cos))
        return q_out, k_out

    monkeypatch.setattr(dinov3, "apply_rotary_pos_emb", spy)
    with torch.no_grad():
        model(pixel_values())
    assert len(calls) == DEPTH
    unrotated = prefix + NUM_PROMPTS
    for q, k, q_out, k_out, cos in calls:
        assert q.shape[-2] == unrotated + num_patches and cos.shape[-2] == num_patches
        # CLS, registers and prompts pass unrotated; the patches are rotated
        assert torch.equal(q_out[..., :unrotated, :], q[..., :unrotated, :])
        assert torch.equal(k_out[..., :unrotated, :], k[..., :unrotated, :])
        assert not torch.allclose(q_out[..., unrotated:, :], q[..., unrotated:, :])


def _bias_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m).__name__.endswith("RelativePositionBias")}


def _strip_prompt_slots(bias: torch.Tensor, start: int = 1) -> torch.Tensor:
    """The `[..., T + N_p, T + N_p]` bias without the prompt rows / columns, after checking that they are zero."""
    stop = start + NUM_PROMPTS
    assert not bias[..., start:stop, :].any() and not bias[..., :, start:stop].any()
    keep = [*range(start), *range(stop, bias.shape[-1])]
    return bias[..., keep, :][..., keep]


def _record_outputs(modules: dict[str, torch.nn.Module], store: list, rename=None) -> list:
    def recorder(name: str):
        return lambda module, args, output: store.append((name, output.detach().clone()))

    rename = rename or (lambda name: name)
    return [m.register_forward_hook(recorder(rename(n))) for n, m in modules.items()]


def _record_block_biases(blocks: list[torch.nn.Module], store: list) -> list:
    """The sequence-sized tensors (masks, biases) a block receives besides the hidden states."""

    def hook(index):
        def record(module, args, kwargs):
            for value in (*args[1:], *kwargs.values()):
                if torch.is_tensor(value) and value.dim() >= 3:
                    store.append((index, value.detach().clone()))

        return record

    return [block.register_forward_pre_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]


def _unwrapped_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


@pytest.mark.parametrize("size", [IMAGE_SIZE, 48])
@pytest.mark.parametrize("family_id", ["beit", "data2vec_vision"])
def test_relative_position_biases_give_prompts_zero_bias(family_id, size, method):
    """Per-block biases (computed inside the block from the window size) and the shared bias (computed by the model
    or the encoder, then passed to the blocks) are the base model's for the prompt-free tokens and zero for prompts,
    also when `interpolate_pos_encoding=True` resizes them to the sequence length."""
    if size != IMAGE_SIZE:
        skip_unless_any_image_size(method)
    model, reference = wrap(TINY_BACKBONES[family_id](head=False), method)
    inner_blocks = [b.base_layer for b in prompt_blocks(model).values()]
    base_blocks = list(reference.get_submodule(find_prompt_site(reference).stack_name))
    ours_bias, base_bias, ours_received, base_received = [], [], [], []
    handles = _record_outputs(_bias_modules(model), ours_bias, _unwrapped_name)
    handles += _record_outputs(_bias_modules(reference), base_bias)
    handles += _record_block_biases(inner_blocks, ours_received) + _record_block_biases(base_blocks, base_received)
    x = pixel_values(size=size)
    with torch.no_grad():
        ours = model(x, interpolate_pos_encoding=True)
        base = reference(x, interpolate_pos_encoding=True)
    for handle in handles:
        handle.remove()

    free = (size // 8) ** 2 + 1
    expected = dict(base_bias)  # the base computes the same bias on every call of one module
    assert len(expected) == DEPTH + 1  # one per block and the shared one
    assert all(b.shape == (1, HEADS, free, free) for b in expected.values())
    padded_calls = set()
    for name, bias in ours_bias:
        if bias.shape[-1] == free:  # computed for the prompt-free sequence (before the first prompted block)
            assert torch.equal(bias, expected[name]), name
        else:
            assert bias.shape == (1, HEADS, free + NUM_PROMPTS, free + NUM_PROMPTS), name
            assert torch.equal(_strip_prompt_slots(bias), expected[name]), name
            padded_calls.add(name)
    assert sum(".relative_position_bias" in n and "layer" in n for n in padded_calls) == DEPTH  # every block's own

    # what the blocks finally see as shared bias / mask: padded with zeros for the prompts
    assert len(ours_received) == len(base_received) == DEPTH
    for (index, mine), (_, theirs) in zip(ours_received, base_received, strict=True):
        assert mine.shape[-1] == free + NUM_PROMPTS, index
        assert torch.equal(_strip_prompt_slots(mine), theirs), index
    assert ours.last_hidden_state.shape == base.last_hidden_state.shape


@pytest.mark.parametrize("family_id", ["beit", "data2vec_vision"])
def test_relative_position_bias_hooks_are_removed_on_unload(family_id):
    model, reference = wrap(TINY_BACKBONES[family_id](head=False), "gpt")
    assert all(m._forward_hooks and m._forward_pre_hooks for m in _bias_modules(model).values())
    unloaded = model.unload()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in _bias_modules(unloaded).values())
    x = pixel_values()
    with torch.no_grad():
        assert torch.equal(unloaded(x).last_hidden_state, reference(x).last_hidden_state)


@pytest.mark.parametrize("family_id", ["beit", "data2vec_vision", "dinov3"])
def test_activation_checkpointing_gives_the_same_gradients(family_id):
    grads = []
    for checkpointing in (False, True):
        model, _ = wrap(TINY_BACKBONES[family_id](head=True), "gpt", modules_to_save=["classifier"])
        if checkpointing:
            model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(pixel_values()).logits.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def _tiny_backbone(family_id: str) -> torch.nn.Module:
    if family_id == "dinov2":
        from transformers import Dinov2Backbone, Dinov2Config

        config = Dinov2Config(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=HIDDEN,
            num_hidden_layers=DEPTH,
            num_attention_heads=HEADS,
            mlp_ratio=2,
            out_features=["stage2", "stage4"],
        )
        cls = Dinov2Backbone
    else:
        from transformers import DINOv3ViTBackbone, DINOv3ViTConfig

        config = DINOv3ViTConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=HIDDEN,
            num_hidden_layers=DEPTH,
            num_attention_heads=HEADS,
            intermediate_size=64,
            num_register_tokens=2,
            out_features=["stage2", "stage4"],
        )
        cls = DINOv3ViTBackbone
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("family_id", sorted(set(BACKBONE_CLASSES.values())))
def test_backbone_classes_get_prompt_free_feature_maps(family_id, method):
    model, reference = wrap(_tiny_backbone(family_id), method)
    assert type(model.base_model.model).__name__ in BACKBONE_CLASSES
    x = pixel_values()
    with torch.no_grad():
        ours, base = model(x).feature_maps, reference(x).feature_maps
        with model.disable_adapter():
            off = model(x).feature_maps
    assert [f.shape for f in ours] == [f.shape for f in base] == [(2, HIDDEN, 4, 4)] * 2
    assert all(torch.equal(a, b) for a, b in zip(off, base, strict=True))
    assert not torch.allclose(ours[-1], base[-1])


# ----------------------------------------------------------------------------------------------------------------
# unsupported models
# ----------------------------------------------------------------------------------------------------------------


def _resnet():
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    return ResNetModel(config), {"pixel_values": pixel_values()}


def _convnext():
    from transformers import ConvNextConfig, ConvNextModel

    config = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    return ConvNextModel(config), {"pixel_values": pixel_values()}


def _bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=50, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64
    )
    return BertModel(config), {"input_ids": torch.tensor([[1, 2, 3, 4]])}


def _swin():
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(
        image_size=IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4
    )
    return SwinModel(config), {"pixel_values": pixel_values()}


@pytest.mark.parametrize("factory", [_resnet, _convnext, _bert, _swin], ids=["resnet", "convnext", "bert", "swin"])
def test_unsupported_models_are_refused_and_left_untouched(factory, method):
    torch.manual_seed(0)
    model, inputs = factory()
    model.eval()
    keys = list(model.state_dict())
    modules = [type(m) for m in model.modules()]
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
    config = (
        GatedPromptConfig(num_prompts=NUM_PROMPTS)
        if method == "gpt"
        else prompt_config("cdc", TINY_BACKBONES["vit"](head=False))
    )
    with pytest.raises(UnsupportedModelError) as info:
        get_peft_model(model, config)
    message = str(info.value)
    assert type(model).__name__ in message
    for family in FAMILIES:
        if not family.refusal:  # the message lists the families that work
            assert family.name in message
            assert all(t in message for t in family.class_names or family.model_types)
    assert list(model.state_dict()) == keys
    assert [type(m) for m in model.modules()] == modules
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, before)


def test_prompts_never_attend_padded_patches(method):
    # Idefics3 pads images to a fixed grid and masks the padding (`patch_attention_mask`); under SDPA the blocks get a
    # boolean mask, whose prompt rows copy a real token's. So what sits in the padded patches cannot reach the prompts,
    # and through them the real tokens (before: prompt rows attended everything, padding included).
    model, _ = wrap(TINY_BACKBONES["idefics3"](head=False), method)
    grid = IMAGE_SIZE // 8
    keep = torch.ones(2, grid, grid, dtype=torch.bool)
    keep[1, :, grid // 2 :] = False  # the right half of the second image is padding
    x = pixel_values()
    other = x.clone()
    other[1, :, :, IMAGE_SIZE // 2 :] = torch.randn_like(other[1, :, :, IMAGE_SIZE // 2 :]) * 5  # change the padding
    with torch.no_grad():
        a = model(pixel_values=x, patch_attention_mask=keep).last_hidden_state
        b = model(pixel_values=other, patch_attention_mask=keep).last_hidden_state
    real = keep.flatten(1)
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[~real], b[~real])  # the padded positions themselves did change


def test_mlcd_prompts_get_the_identity_rotation_and_other_tokens_keep_theirs(method):
    # MLCD passes a 2-D RoPE over CLS and patches to every block; the prompt slots are padded with cos 1, sin 0.
    model, reference = wrap(TINY_BACKBONES["mlcd"](head=False), method)
    ours, theirs = [], []

    def recorder(store):
        def hook(module, args, kwargs):
            store.append(next(v for v in (*args[1:], *kwargs.values()) if isinstance(v, (tuple, list))))

        return hook

    block = first_block(model).base_layer
    base_block = reference.get_submodule(find_prompt_site(reference).block_names[0])
    handles = [block.register_forward_pre_hook(recorder(ours), with_kwargs=True)]
    handles.append(base_block.register_forward_pre_hook(recorder(theirs), with_kwargs=True))
    with torch.no_grad():
        model(pixel_values())
        reference(pixel_values())
    for handle in handles:
        handle.remove()
    (cos, sin), (base_cos, base_sin) = ours[0], theirs[0]
    prompts = slice(1, 1 + NUM_PROMPTS)
    assert cos.shape[-2] == base_cos.shape[-2] + NUM_PROMPTS
    assert torch.equal(cos[..., prompts, :], torch.ones_like(cos[..., prompts, :]))
    assert torch.equal(sin[..., prompts, :], torch.zeros_like(sin[..., prompts, :]))
    keep = [0, *range(1 + NUM_PROMPTS, cos.shape[-2])]
    assert torch.equal(cos[..., keep, :], base_cos) and torch.equal(sin[..., keep, :], base_sin)


def _tiny_siglip2():
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(0)
    config = Siglip2VisionConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=64,
        patch_size=8,
        num_patches=16,
    )
    return Siglip2VisionModel(config).eval()


def _naflex_batch(seed: int = 0):
    """Two images as NaFlex patch lists of length 16: a 4x4 grid, and a 3x4 grid padded with 4 masked patches."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 16, 3 * 8 * 8, generator=generator)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    return {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor([[4, 4], [3, 4]])}


def test_siglip2_naflex_prompts_attend_real_patches_only(method, tmp_path):
    base = _tiny_siglip2()
    assert find_prompt_site(base).family.name == "SigLIP2 vision tower (NaFlex)"
    model, reference = wrap(base, method)
    inputs = _naflex_batch()
    other = {k: v.clone() for k, v in inputs.items()}
    other["pixel_values"][1, 12:] = torch.randn(4, 192) * 5  # what sits in the padding
    with torch.no_grad():
        ours, base_out = model(**inputs).last_hidden_state, reference(**inputs).last_hidden_state
        moved = model(**other).last_hidden_state
        with model.disable_adapter():
            assert torch.equal(model(**inputs).last_hidden_state, base_out)
    assert ours.shape == base_out.shape == (2, 16, HIDDEN)
    assert not torch.allclose(ours, base_out)
    real = inputs["pixel_attention_mask"].bool()
    torch.testing.assert_close(ours[real], moved[real], rtol=1e-5, atol=1e-6)  # padding never reaches real tokens
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_tiny_siglip2(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).last_hidden_state, ours)


def _tiny_siglip2_model():
    """The full two-tower `Siglip2Model` (text tower of 2 blocks) with the NaFlex vision tower of `_tiny_siglip2`."""
    from transformers import Siglip2Config, Siglip2Model

    text = dict(vocab_size=99, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=HEADS)
    vision = dict(
        hidden_size=HIDDEN, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=64, patch_size=8
    )
    torch.manual_seed(0)
    config = Siglip2Config(
        text_config={**text, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        vision_config={**vision, "num_patches": 16},
    )
    return Siglip2Model(config).eval()


def test_siglip2_two_tower_model_never_reads_the_padding_and_round_trips(method, tmp_path):
    model, _ = wrap(_tiny_siglip2_model(), method)
    inputs = {"input_ids": torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]]), **_naflex_batch()}
    other = {k: v.clone() for k, v in inputs.items()}
    other["pixel_values"][1, 12:] = torch.randn(4, 192) * 5  # what sits in the padding
    with torch.no_grad():
        ours, moved = model(**inputs), model(**other)
    torch.testing.assert_close(moved.image_embeds, ours.image_embeds, rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_tiny_siglip2_model(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits_per_image, ours.logits_per_image)


def _tiny_idefics3_model():
    """The vision-language `Idefics3Model`: its vision transformer (2 blocks), the pixel-shuffle connector, and a
    2-block Llama text model; one 32 px image becomes 4 image tokens of the text sequence."""
    from transformers import Idefics3Config, Idefics3Model

    vision = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64)
    text = dict(
        model_type="llama",
        vocab_size=128,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        pad_token_id=0,
    )
    config = Idefics3Config(
        vision_config={**vision, "image_size": IMAGE_SIZE, "patch_size": 8},
        text_config=text,
        scale_factor=2,
        image_token_id=100,
    )
    torch.manual_seed(0)
    return Idefics3Model(config).eval()


def test_a_vision_language_model_gets_prompts_in_its_vision_transformer_only(method, tmp_path):
    model, reference = wrap(_tiny_idefics3_model(), method)
    assert sorted(prompt_blocks(model)) == [f"base_model.model.vision_model.encoder.layers.{i}" for i in range(2)]
    image_tokens = (IMAGE_SIZE // 8) ** 2 // 4  # the connector's pixel shuffle merges 2 x 2 patches
    inputs = {"input_ids": torch.tensor([[1, 2, *[100] * image_tokens, 3, 4]]), "pixel_values": pixel_values(1)[None]}
    with torch.no_grad():
        ours, base = model(**inputs).last_hidden_state, reference(**inputs).last_hidden_state
        with model.disable_adapter():
            assert torch.equal(model(**inputs).last_hidden_state, base)
    assert ours.shape == base.shape == (1, 4 + image_tokens, HIDDEN)
    assert not torch.allclose(ours, base)
    torch.testing.assert_close(ours[:, :2], base[:, :2])  # text before the image: causal, so untouched
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_tiny_idefics3_model(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).last_hidden_state, ours)
