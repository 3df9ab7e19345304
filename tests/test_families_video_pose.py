"""The families whose inputs or outputs the image harness of test_families.py cannot use, with the same checks.

ViViT and V-JEPA 2 take videos (tubelet tokens of all frames in one sequence; V-JEPA 2 with a 3-D RoPE computed from
each token's index), ViTPose returns pose heatmaps and sequence feature maps and routes each sample through the
expert of its `dataset_index`. For each, with Gated Prompt Tuning and CDC: outputs keep the base shapes, change with
the adapter and equal the base exactly when it is disabled; hidden states are prompt-free and bit-identical before
the first prompted block; attention maps include the prompt rows and columns; save / load is bit-identical; the
prompts sit after the prefix tokens; gradients reach the adapter. Then V-JEPA 2's positions.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import InputRecorder, perturb_adapter
from methods import extra_attention_keys, method_config
from peft import PeftModel, get_peft_model
from tiny_models import DEPTH, HEADS, HIDDEN, OTHER_INPUT_BACKBONES

from gated_vpt import find_prompt_site
from gated_vpt.prompting.prompt_layer import PromptBlock

NUM_PROMPTS = 3
IDS = sorted(OTHER_INPUT_BACKBONES)


def wrap(family_id: str, method: str, head: bool = True, attn_implementation=None, **overrides):
    base = OTHER_INPUT_BACKBONES[family_id].build(head=head, attn_implementation=attn_implementation)
    reference = copy.deepcopy(base).requires_grad_(False)
    config = method_config(method, base, visible=True, num_prompts=NUM_PROMPTS, prompt_dropout=0.0, **overrides)
    return get_peft_model(base, config).eval(), reference


def tensors(value) -> tuple[torch.Tensor, ...]:
    """The tensors of one output field: a tensor, or a tuple of them (ViTPose's feature maps)."""
    return tuple(v for v in (value if isinstance(value, tuple) else (value,)) if torch.is_tensor(v))


def blocks(model) -> list[PromptBlock]:
    return [m for m in model.modules() if isinstance(m, PromptBlock)]


@pytest.mark.parametrize("family_id", IDS)
def test_the_model_resolves_to_its_family(family_id):
    case = OTHER_INPUT_BACKBONES[family_id]
    for head in (True, False):
        site = find_prompt_site(case.build(head=head))
        assert (site.family.name, site.num_prefix_tokens) == (case.family, case.prefix)
        assert (site.hidden_size, site.depth, site.patch_size) == (HIDDEN, DEPTH, 8)


@pytest.mark.parametrize("head", [True, False], ids=["head", "encoder"])
@pytest.mark.parametrize("family_id", IDS)
def test_outputs_change_with_the_adapter_and_equal_the_base_when_disabled(family_id, head, method):
    case = OTHER_INPUT_BACKBONES[family_id]
    model, reference = wrap(family_id, method, head=head)
    inputs = case.inputs()
    with torch.no_grad():
        base, ours = reference(**inputs), model(**inputs)
        with model.disable_adapter():
            off = model(**inputs)
    compared = 0
    for key, value in base.items():
        for theirs, mine, disabled in zip(tensors(value), tensors(ours[key]), tensors(off[key]), strict=True):
            assert mine.shape == theirs.shape, key
            assert torch.equal(disabled, theirs), key
            compared += 1
    assert compared
    assert not torch.allclose(case.output(ours, head), case.output(base, head))
    assert len(blocks(model)) == DEPTH


@pytest.mark.parametrize("family_id", IDS)
def test_hidden_states_are_prompt_free_and_untouched_before_the_first_prompted_block(family_id, method):
    case = OTHER_INPUT_BACKBONES[family_id]
    model, reference = wrap(family_id, method, head=False, layers_to_transform=[2, 3])
    inputs = case.inputs()
    with torch.no_grad():
        ours = model(**inputs, output_hidden_states=True).hidden_states
        base = reference(**inputs, output_hidden_states=True).hidden_states
    assert len(ours) == len(base) == DEPTH + 1
    assert [h.shape for h in ours] == [h.shape for h in base]
    for index in range(3):  # the embeddings and the outputs of blocks 0 and 1
        assert torch.equal(ours[index], base[index]), index
    assert not torch.allclose(ours[-1], base[-1])


@pytest.mark.parametrize("family_id", IDS)
def test_attention_maps_include_the_prompt_rows_and_columns(family_id, method):
    case = OTHER_INPUT_BACKBONES[family_id]
    model, reference = wrap(family_id, method, head=False, attn_implementation="eager")
    inputs = case.inputs()
    with torch.no_grad():
        ours = model(**inputs, output_attentions=True).attentions
        base = reference(**inputs, output_attentions=True).attentions
    assert len(ours) == len(base) == DEPTH
    extra = NUM_PROMPTS + extra_attention_keys(method, model.peft_config["default"])  # E²VPT: its key-value rows too
    for mine, theirs in zip(ours, base, strict=True):
        batch, heads, length, _ = theirs.shape
        assert (batch, heads) == (2, HEADS)
        assert mine.shape == (batch, heads, length + extra, length + extra)


@pytest.mark.parametrize("family_id", IDS)
def test_save_and_load_give_bit_identical_outputs(family_id, method, tmp_path):
    case = OTHER_INPUT_BACKBONES[family_id]
    model, _ = wrap(family_id, method)
    perturb_adapter(model, scale=0.1, seed=7)
    inputs = case.inputs()
    with torch.no_grad():
        expected = case.output(model(**inputs), True)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(case.build(head=True), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(case.output(loaded(**inputs), True), expected)


@pytest.mark.parametrize("family_id", IDS)
def test_prompts_follow_the_prefix_tokens_and_get_gradients(family_id, method):
    case = OTHER_INPUT_BACKBONES[family_id]
    model, reference = wrap(family_id, method)
    block = blocks(model)[0]
    ours = InputRecorder(block.base_layer)
    theirs = InputRecorder(reference.get_submodule(find_prompt_site(reference).block_names[0]))
    inputs = case.inputs()
    with torch.no_grad():
        reference(**inputs)
    model.train()
    case.output(model(**inputs), True).square().mean().backward()
    ours.remove()
    theirs.remove()
    (seq,), (base_seq,) = ours.inputs, theirs.inputs
    start = case.prefix
    assert seq.shape[1] == base_seq.shape[1] + NUM_PROMPTS
    assert torch.equal(seq[:, :start], base_seq[:, :start])
    assert torch.equal(seq[:, start + NUM_PROMPTS :], base_seq[:, start:])
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)


def test_vjepa2_patches_keep_their_rotary_positions_and_prompts_get_the_identity_rotation(method):
    # V-JEPA 2's attention rotates queries and keys by each token's (frame, row, column), read from its index. The
    # prompted blocks get `position_mask` = the prompt-free index of every patch and 0 (angle 0: no rotation) for
    # every prompt; without it the attention would number the prompts first and shift every patch.
    from transformers.models.vjepa2.modeling_vjepa2 import rotate_queries_or_keys

    model, reference = wrap("vjepa2", method, head=False)
    seen, base_seen = [], []

    def recorder(store):
        def hook(module, args, kwargs):
            store.append(kwargs.get("position_mask"))

        return hook

    attention = blocks(model)[0].base_layer.attention
    base_attention = reference.get_submodule(find_prompt_site(reference).block_names[0]).attention
    handles = [attention.register_forward_pre_hook(recorder(seen), with_kwargs=True)]
    handles.append(base_attention.register_forward_pre_hook(recorder(base_seen), with_kwargs=True))
    inputs = OTHER_INPUT_BACKBONES["vjepa2"].inputs()
    with torch.no_grad():
        model(**inputs, skip_predictor=True)
        reference(**inputs, skip_predictor=True)
    for handle in handles:
        handle.remove()
    assert base_seen[0] is None  # the base numbers the tokens as they come
    num_patches = 2 * 4 * 4  # 2 tubelets of 4 x 4 patches
    expected = torch.cat((torch.zeros(NUM_PROMPTS, dtype=torch.long), torch.arange(num_patches)))
    assert torch.equal(seen[0], expected.expand(2, -1))
    assert all(torch.equal(positions, seen[0]) for positions in seen)  # every prompted block, the same
    x = torch.randn(2, HEADS, 5, HIDDEN // HEADS)
    assert torch.equal(rotate_queries_or_keys(x, pos=torch.zeros(2, HEADS, 5, dtype=torch.long)), x)
