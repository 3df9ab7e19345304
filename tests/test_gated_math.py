"""Gated Prompt Tuning computes exactly what docs/methods.md §2 specifies, on every tiny backbone family."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import InputRecorder, blocks_of, fresh_copy, main_output, prefix_count, vpt_reference
from peft import get_peft_model
from tiny_models import DEPTH, HIDDEN, TINY_BACKBONES, pixel_values

from gated_vpt import GatedPromptConfig
from gated_vpt.vpt.layer import xavier_prompt_bound

NUM_PROMPTS = 3


def wrap(name: str, head: bool = True, **config):
    base = TINY_BACKBONES[name](head=head)
    reference = fresh_copy(base)
    config = {"num_prompts": NUM_PROMPTS, "prompt_dropout": 0.0, **config}
    if head:
        config.setdefault("modules_to_save", ["classifier"])
    model = get_peft_model(base, GatedPromptConfig(**config)).eval()
    return model, reference


def share_head(model, reference) -> None:
    """The adapter trains a copy of the head (modules_to_save); give the reference model the same one."""
    reference.classifier.load_state_dict(model.base_model.model.classifier.modules_to_save["default"].state_dict())


def adapter_params(model, kind: str) -> dict[int, torch.nn.Parameter]:
    """Block index -> parameter of the default adapter, for kind in prompts / gate_logits / temperatures."""
    out = {}
    for index, block in enumerate(blocks_of(model.base_model.model)):
        params = getattr(block, f"gpt_{kind}", {})
        if "default" in params:
            out[index] = params["default"]
    return out


def test_trainable_parameters_are_exactly_prompts_gates_temperatures_and_head(backbone_name):
    model, reference = wrap(backbone_name)
    head = sum(p.numel() for p in reference.classifier.parameters())
    expected = NUM_PROMPTS * HIDDEN + (DEPTH - 1) + DEPTH + head
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected, trainable
    assert model.get_nb_trainable_parameters()[0] == expected
    assert all(("gpt_" in n) or ("classifier.modules_to_save" in n) for n in trainable)
    # prompts only where they are inserted, no gate after the last block (DDP: no parameter without a gradient)
    assert sorted(adapter_params(model, "prompts")) == [0]
    assert sorted(adapter_params(model, "gate_logits")) == list(range(DEPTH - 1))
    assert sorted(adapter_params(model, "temperatures")) == list(range(DEPTH))


def test_vpt_shallow_is_gpt_without_gates_and_temperatures(backbone_name):
    model, reference = wrap(backbone_name, use_gates=False, learn_temperature=False)
    head = sum(p.numel() for p in reference.classifier.parameters())
    assert model.get_nb_trainable_parameters()[0] == NUM_PROMPTS * HIDDEN + head
    prompts = adapter_params(model, "prompts")[0].detach()
    share_head(model, reference)
    x = pixel_values()
    with torch.no_grad(), vpt_reference(reference, {0: prompts}, last=DEPTH - 1) as vpt:
        expected = main_output(vpt(x))
        actual = main_output(model(x))
    assert torch.equal(actual, expected)


def test_gates_at_one_and_unit_temperature_equal_vpt_shallow(backbone_name):
    model, reference = wrap(backbone_name)
    with torch.no_grad():
        for gate in adapter_params(model, "gate_logits").values():
            gate.fill_(math.inf)  # sigmoid(+inf) == 1 exactly
    share_head(model, reference)
    prompts = adapter_params(model, "prompts")[0].detach()
    x = pixel_values()
    with torch.no_grad(), vpt_reference(reference, {0: prompts}, last=DEPTH - 1) as vpt:
        expected = main_output(vpt(x))
        actual = main_output(model(x))
    assert torch.equal(actual, expected)


def test_closed_gates_deliver_the_prompts_unchanged_to_the_last_block(backbone_name):
    model, _ = wrap(backbone_name)
    with torch.no_grad():
        for gate in adapter_params(model, "gate_logits").values():
            gate.fill_(-math.inf)  # sigmoid(-inf) == 0 exactly
    prompts = adapter_params(model, "prompts")[0].detach()
    last_block = blocks_of(model.base_model.model)[DEPTH - 1].base_layer
    recorder = InputRecorder(last_block)
    with torch.no_grad():
        model(pixel_values())
    recorder.remove()
    start = prefix_count(model.base_model.model)
    slots = recorder.inputs[0][:, start : start + NUM_PROMPTS]
    assert torch.equal(slots, prompts.expand_as(slots))


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_gate_mixes_block_output_and_input_prompts(backbone_name, grad):
    model, _ = wrap(backbone_name, learn_temperature=False)
    gate_logit = adapter_params(model, "gate_logits")[0]
    with torch.no_grad():
        gate_logit.fill_(0.3)
    g = torch.sigmoid(torch.tensor(0.3))
    block0 = blocks_of(model.base_model.model)[0]
    block1_inner = blocks_of(model.base_model.model)[1].base_layer
    captured = {}
    h_out = block0.base_layer.register_forward_hook(lambda m, a, o: captured.update(inner_in=a[0], inner_out=o))
    recorder = InputRecorder(block1_inner)
    with torch.set_grad_enabled(grad):
        model(pixel_values())
    h_out.remove()
    recorder.remove()
    start = prefix_count(model.base_model.model)
    sl = slice(start, start + NUM_PROMPTS)
    inner_out = captured["inner_out"][0] if isinstance(captured["inner_out"], tuple) else captured["inner_out"]
    expected = g * inner_out[:, sl] + (1 - g) * captured["inner_in"][:, sl]
    torch.testing.assert_close(recorder.inputs[0][:, sl], expected, rtol=1e-6, atol=1e-6)
    # prefix and patch tokens are never gated
    assert torch.equal(recorder.inputs[0][:, :start], inner_out[:, :start])
    assert torch.equal(recorder.inputs[0][:, start + NUM_PROMPTS :], inner_out[:, start + NUM_PROMPTS :])


def test_inference_and_autograd_forwards_are_bit_identical(backbone_name):
    """Without autograd the gate and the temperature take a shorter path (no saved tensors); it computes the same bits,
    so a loaded adapter serves exactly what it was trained to compute."""
    model, _ = wrap(backbone_name)
    with torch.no_grad():
        for gate in adapter_params(model, "gate_logits").values():
            gate.uniform_(-2.0, 2.0)
        for tau in adapter_params(model, "temperatures").values():
            tau.uniform_(0.5, 2.0)
    x = pixel_values()
    with torch.no_grad():
        inference = main_output(model(x))
    autograd = main_output(model(x))
    assert autograd.requires_grad
    assert torch.equal(inference, autograd.detach())


def test_temperature_equals_scaling_the_query_projection(backbone_name):
    """softmax(QK^T / (sqrt(d) tau)) == attention with q_proj's weight and bias divided by tau."""
    model, reference = wrap(backbone_name, use_gates=False)
    taus = {1: 2.5, 2: 0.4}
    with torch.no_grad():
        for index, tau in taus.items():
            adapter_params(model, "temperatures")[index].fill_(tau)
        for index, tau in taus.items():
            q_proj = next(m for n, m in blocks_of(reference)[index].named_modules() if n.endswith(("q_proj", "query")))
            q_proj.weight.div_(tau)
            if q_proj.bias is not None:
                q_proj.bias.div_(tau)
    share_head(model, reference)
    prompts = adapter_params(model, "prompts")[0].detach()
    x = pixel_values()
    with torch.no_grad(), vpt_reference(reference, {0: prompts}, last=DEPTH - 1) as vpt:
        expected = main_output(vpt(x))
        actual = main_output(model(x))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    # and the temperature does change the output
    with torch.no_grad():
        for tau in adapter_params(model, "temperatures").values():
            tau.fill_(1.0)
        assert not torch.allclose(main_output(model(x)), actual)


def test_the_forward_uses_temperatures_projected_into_their_range():
    model, _ = wrap("vit", temperature_range=(0.5, 2.0))
    temps = adapter_params(model, "temperatures")
    x = pixel_values()
    with torch.no_grad():
        for tau in temps.values():
            tau.fill_(1.0)
        temps[0].fill_(2.0)
        temps[1].fill_(0.5)
        temps[2].fill_(1.5)
        expected = main_output(model(x))
        temps[0].fill_(100.0)
        temps[1].fill_(-3.0)
        actual = main_output(model(x))
    assert torch.equal(actual, expected)
    # ... without writing into the parameters (autograd may still hold them)
    assert temps[0].item() == 100.0 and temps[1].item() == -3.0


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.AdamW])
@pytest.mark.parametrize("copied", [False, True])
def test_each_optimizer_step_projects_the_temperatures_it_updated(optimizer_cls, copied):
    """Projected gradient descent: a step that pushes tau out of its range leaves it on the boundary (also on a
    `copy.deepcopy` of the model, e.g. an EMA copy)."""
    model, _ = wrap("vit", temperature_range=(0.5, 2.0))
    if copied:
        model = copy.deepcopy(model)
    temps = adapter_params(model, "temperatures")
    optimizer = optimizer_cls([temps[0], temps[1]], lr=10.0)
    temps[0].grad, temps[1].grad = torch.tensor(-1.0), torch.tensor(1.0)
    with torch.no_grad():
        temps[2].fill_(7.0)  # outside, but held by no optimizer that steps: left as it is
    optimizer.step()
    assert temps[0].item() == 2.0 and temps[1].item() == 0.5
    assert temps[2].item() == 7.0


def test_prompt_init_follows_vpt_xavier_bound():
    model, _ = wrap("vit", num_prompts=200)
    prompts = adapter_params(model, "prompts")[0]
    bound = xavier_prompt_bound(8, HIDDEN)
    assert prompts.abs().max() <= bound
    assert prompts.dtype == torch.float32
    # uniform(-v, v) has std v / sqrt(3)
    assert abs(prompts.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_gates_start_at_the_prior_and_temperatures_at_one():
    model, _ = wrap("vit", gate_init=3.0)
    assert all(g.item() == -3.0 for g in adapter_params(model, "gate_logits").values())
    assert all(t.item() == 1.0 for t in adapter_params(model, "temperatures").values())


def test_prompt_dropout_is_per_sample_and_only_in_training():
    model, _ = wrap("vit", prompt_dropout=0.5)
    first_block = blocks_of(model.base_model.model)[0].base_layer
    recorder = InputRecorder(first_block)
    x = pixel_values(batch=1).expand(4, -1, -1, -1)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        model(x)
    recorder.remove()
    train_slots, eval_slots = recorder.inputs[0][:, 1 : 1 + NUM_PROMPTS], recorder.inputs[1][:, 1 : 1 + NUM_PROMPTS]
    prompts = adapter_params(model, "prompts")[0].detach()
    assert torch.equal(eval_slots, prompts.expand_as(eval_slots))
    assert (train_slots == 0).any()
    assert not torch.equal(train_slots[0], train_slots[1])  # a different mask per sample


def test_insertion_from_a_later_block(backbone_name):
    """VPT/GPT from block k (the paper's motivating sweep): blocks before k see the base model's tokens."""
    model, reference = wrap(backbone_name, head=False, layers_to_transform=[2, 3])
    assert sorted(adapter_params(model, "prompts")) == [2]
    assert sorted(adapter_params(model, "gate_logits")) == [2]
    assert sorted(adapter_params(model, "temperatures")) == [2, 3]
    x = pixel_values()
    with torch.no_grad():
        ours = model(x, output_hidden_states=True).hidden_states
        base = reference(x, output_hidden_states=True).hidden_states
    assert len(ours) == len(base)
    for i in range(3):  # the embeddings and the outputs of blocks 0 and 1
        assert torch.equal(ours[i], base[i])
    assert all(o.shape == b.shape for o, b in zip(ours, base, strict=False))
    assert not torch.allclose(ours[-1], base[-1])


def test_single_prompted_block_inserts_and_removes():
    model, _ = wrap("vit", head=False, layers_to_transform=3)
    assert sorted(adapter_params(model, "prompts")) == [3]
    assert adapter_params(model, "gate_logits") == {}
    out = model(pixel_values()).last_hidden_state
    assert out.shape == (2, 17, HIDDEN)


@pytest.mark.parametrize("head", [True, False])
def test_outputs_outside_the_encoder_are_prompt_free(backbone_name, head):
    model, reference = wrap(backbone_name, head=head)
    x = pixel_values()
    with torch.no_grad():
        ours = model(x, output_hidden_states=True)
        base = reference(x, output_hidden_states=True)
    assert [h.shape for h in ours.hidden_states] == [h.shape for h in base.hidden_states]
    if head:
        assert ours.logits.shape == base.logits.shape
    else:
        assert ours.last_hidden_state.shape == base.last_hidden_state.shape
        if getattr(base, "pooler_output", None) is not None:
            assert ours.pooler_output.shape == base.pooler_output.shape
    # the last recorded hidden state is the stack's output, which the final norm then sees
    tuple_out = model(x, output_hidden_states=True, return_dict=False)
    assert all(h.shape == b.shape for h, b in zip(tuple_out[-1], base.hidden_states, strict=False))


@pytest.mark.parametrize("value", [11.8, -3.0, 0.0])
def test_temperatures_outside_their_range_are_never_read_or_saved(value, tmp_path):
    # Before: an optimizer step could leave tau = 11.8 (or <= 0) until the next forward, and gate_report and
    # save_pretrained showed / wrote it.
    from safetensors.torch import load_file

    from gated_vpt import gate_report

    model = get_peft_model(TINY_BACKBONES["vit"](), GatedPromptConfig(num_prompts=2, temperature_range=(0.05, 4.0)))
    with torch.no_grad():
        for block in blocks_of(model):
            block.gpt_temperatures["default"].fill_(value)
    expected = min(max(value, 0.05), 4.0)
    assert all(row["temperature"] == pytest.approx(expected) for row in gate_report(model))
    with torch.no_grad():
        for block in blocks_of(model):
            block.gpt_temperatures["default"].fill_(value)
    model.save_pretrained(tmp_path)
    saved = [t.item() for k, t in load_file(tmp_path / "adapter_model.safetensors").items() if "temperatures" in k]
    assert saved and all(t == pytest.approx(expected) for t in saved)


def _between_forward_and_backward(kind: str, model, tmp_path) -> None:
    """Something a user does after a forward and before its `backward()`, which reads GPT's temperatures."""
    from gated_vpt import gate_report

    model = getattr(model, "_orig_mod", model)  # a compiled model: save and report on the module itself

    if kind == "no_grad_forward":  # an eval forward inside the training step
        with torch.no_grad():
            model(pixel_values(seed=5))
    elif kind == "save_pretrained":
        model.save_pretrained(tmp_path / "mid-step")
    elif kind == "gate_report":
        gate_report(model)
    elif kind == "state_dict":
        model.state_dict()


def _temperature_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("kind", ["no_grad_forward", "save_pretrained", "gate_report", "state_dict"])
def test_reading_temperatures_between_forward_and_backward_keeps_the_gradients(kind, tmp_path):
    # Before: the default config (learn_temperature=True) raised autograd's "modified by an inplace operation" here,
    # because the projection of tau into its range wrote in place into the tensor the forward had saved.
    model, _ = wrap("vit", temperature_range=(0.5, 2.0))
    model.train()
    with torch.no_grad():
        for index, tau in adapter_params(model, "temperatures").items():
            tau.fill_(3.0 if index % 2 else 0.7)  # one out of range: the projection has something to do
    x = pixel_values()
    reference = copy.deepcopy(model)
    main_output(reference(x)).square().mean().backward()
    loss = main_output(model(x)).square().mean()
    _between_forward_and_backward(kind, model, tmp_path)
    loss.backward()
    expected, actual = _temperature_grads(reference), _temperature_grads(model)
    assert expected.keys() == actual.keys() and any("temperatures" in n for n in actual)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("mode", ["eager", "checkpointing", "compile"])
def test_two_view_loss_with_the_default_config_has_the_gradients_of_its_parts(mode, tmp_path):
    # Before: a second forward in one loss (two views, consistency losses, R-Drop) crashed the default GPT config,
    # and under torch.compile so did an eval forward or a save between the forward and the backward.
    model, _ = wrap("vit", temperature_range=(0.5, 2.0))
    model.train()
    if mode == "checkpointing":
        model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with torch.no_grad():
        adapter_params(model, "temperatures")[1].fill_(3.0)
    view_a, view_b = pixel_values(seed=1), pixel_values(seed=2)
    parts = copy.deepcopy(model)
    main_output(parts(view_a)).square().mean().backward()
    main_output(parts(view_b)).square().mean().backward()
    run = torch.compile(model, fullgraph=True) if mode == "compile" else model
    loss = main_output(run(view_a)).square().mean() + main_output(run(view_b)).square().mean()
    for kind in ("no_grad_forward", "save_pretrained", "gate_report"):
        _between_forward_and_backward(kind, run, tmp_path)
    loss.backward()
    expected, actual = _temperature_grads(parts), _temperature_grads(model)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
