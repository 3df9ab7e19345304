"""Mixed-adapter batches: `model(pixel_values=x, adapter_names=[...])` gives every sample its own adapter's output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import blocks_of, main_output
from methods import method_config
from peft import PeftModel, get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

from gated_vpt import find_prompt_site
from gated_vpt.prompting.routing import active_call

# Two adapters of one layout (A, B: one shared forward), one of another layout (C: fewer prompts, fewer blocks) and
# the base model, interleaved. (Adapter names must not be substrings of the methods' parameter prefixes: `gpt_`,
# `cdc_`, `vpt_`, ...)
NAMES = ["sat", "cifar", "__base__", "flowers", "cifar", "sat"]
A, B, C = "sat", "cifar", "flowers"


def make_config(method: str, backbone: str, head: bool, **overrides):
    common = {"num_prompts": 4, "prompt_dropout": 0.0, **({"modules_to_save": ["classifier"]} if head else {})}
    common.update(overrides)
    return method_config(method, TINY_BACKBONES[backbone](head=head), **common)


def perturb_active(model, seed: int) -> None:
    """Move the active adapter's parameters (prompts, gates, temperatures, alpha, lambda, head) off their init, so
    that adapters differ and every per-sample parameter matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))


def three_adapters(backbone: str, method: str, head: bool = True, dtype: torch.dtype = torch.float32):
    model = get_peft_model(TINY_BACKBONES[backbone](head=head), make_config(method, backbone, head), adapter_name=A)
    depth = find_prompt_site(model).depth
    model.add_adapter(B, make_config(method, backbone, head))
    model.add_adapter(C, make_config(method, backbone, head, num_prompts=2, layers_to_transform=[1, depth - 2]))
    for seed, name in enumerate((A, B, C)):
        model.set_adapter(name)
        perturb_active(model, seed)
    model.set_adapter(A)
    return model.to(dtype).eval()


def solo_outputs(model, x: torch.Tensor, **kwargs) -> dict:
    """Each adapter run alone on the whole batch, and the base model."""
    active = model.active_adapter
    outputs = {}
    for name in (A, B, C):
        model.set_adapter(name)
        outputs[name] = model(pixel_values=x, **kwargs)
    with model.disable_adapter():
        outputs["__base__"] = model(pixel_values=x, **kwargs)
    model.set_adapter(active)
    return outputs


def per_sample(solo: dict, get, names=NAMES) -> torch.Tensor:
    return torch.stack([get(solo[name])[i] for i, name in enumerate(names)])


def test_every_sample_equals_its_adapter_alone(backbone_name, method):
    model = three_adapters(backbone_name, method)
    x = pixel_values(len(NAMES))
    with torch.no_grad():
        mixed = model(pixel_values=x, adapter_names=NAMES, output_hidden_states=True)
        solo = solo_outputs(model, x, output_hidden_states=True)
    expected = per_sample(solo, main_output)
    assert main_output(mixed).dtype == expected.dtype
    torch.testing.assert_close(main_output(mixed), expected, rtol=1e-5, atol=1e-5)
    # The adapters really differ, so the comparison above is not between equal outputs.
    assert not torch.allclose(main_output(solo[A]), main_output(solo[B]), atol=1e-3)
    # Hidden states are prompt-free and per sample those of the sample's own adapter.
    for layer, state in enumerate(mixed.hidden_states):
        expected_state = torch.stack([solo[name].hidden_states[layer][i] for i, name in enumerate(NAMES)])
        torch.testing.assert_close(state, expected_state, rtol=1e-5, atol=1e-5)


def test_bare_encoder_without_heads(method):
    model = three_adapters("dinov2", method, head=False)
    x = pixel_values(len(NAMES))
    with torch.no_grad():
        mixed = model(pixel_values=x, adapter_names=NAMES)
        solo = solo_outputs(model, x)
    for field in ("last_hidden_state", "pooler_output"):
        expected = torch.stack([solo[name][field][i] for i, name in enumerate(NAMES)])
        torch.testing.assert_close(mixed[field], expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_matches_bfloat16_alone():
    model = three_adapters("vit", "gpt", dtype=torch.bfloat16)
    x = pixel_values(len(NAMES)).to(torch.bfloat16)
    with torch.no_grad():
        mixed = model(pixel_values=x, adapter_names=NAMES).logits
        solo = solo_outputs(model, x)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed, per_sample(solo, lambda o: o.logits))  # bf16 tolerances


def count_block_calls(model):
    calls = []
    first_block = blocks_of(model)[0]
    handle = first_block.base_layer.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls, handle


@pytest.mark.parametrize(
    ("names", "forwards"),
    [([A, B, B, A], [4]), ([A, "__base__", A], [2, 1]), ([C, A, B], [1, 2])],
)
def test_one_layout_shares_one_forward(names, forwards):
    model = three_adapters("vit", "gpt")
    calls, handle = count_block_calls(model)
    with torch.no_grad():
        model(pixel_values=pixel_values(len(names)), adapter_names=names)
    handle.remove()
    # Block 0 runs once per layout group (in order of first appearance), on that group's samples only.
    assert calls == forwards


def test_loss_is_the_mean_over_samples(method):
    model = three_adapters("vit", method)
    x, labels = pixel_values(len(NAMES)), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        mixed = model(pixel_values=x, labels=labels, adapter_names=NAMES)
        expected_logits = per_sample(solo_outputs(model, x), lambda o: o.logits)
    torch.testing.assert_close(mixed.loss, F.cross_entropy(expected_logits, labels), rtol=1e-5, atol=1e-6)


def test_input_gradients_and_temperature_gradients_per_sample():
    """Eval-mode gradients (saliency maps, attacks) through a mixed batch equal those of each adapter alone; each
    adapter's temperatures receive the gradient of its own samples only."""
    model = three_adapters("vit", "gpt")
    names = [A, B, A, B]
    x = pixel_values(len(names))

    def grads(adapter_names):
        for param in model.parameters():
            param.grad = None
        inputs = x.clone().requires_grad_(True)
        model(pixel_values=inputs, adapter_names=adapter_names).logits.square().sum().backward()
        temperatures = {
            n: p.grad.clone() for n, p in model.named_parameters() if "temperatures" in n and p.grad is not None
        }
        return inputs.grad, temperatures

    # Make the other adapter's parameters trainable too, so that the mixed batch gives them gradients.
    for name, param in model.named_parameters():
        param.requires_grad_("gpt_" in name)
    mixed_input_grad, mixed_temperature_grads = grads(names)
    solo_input_grad = torch.empty_like(x)
    solo_temperature_grads = {}
    for adapter in (A, B):
        rows = [i for i, n in enumerate(names) if n == adapter]
        for param in model.parameters():
            param.requires_grad_(False)
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith(f"gpt_temperatures.{adapter}"))
        model.set_adapter(adapter)
        for param in model.parameters():
            param.grad = None
        inputs = x[rows].clone().requires_grad_(True)
        model(pixel_values=inputs).logits.square().sum().backward()
        solo_input_grad[rows] = inputs.grad
        solo_temperature_grads.update(
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and "temperatures" in n}
        )
    torch.testing.assert_close(mixed_input_grad, solo_input_grad, rtol=1e-4, atol=1e-6)
    assert set(mixed_temperature_grads) == set(solo_temperature_grads) and len(solo_temperature_grads) == 2 * 4
    for name, grad in solo_temperature_grads.items():
        torch.testing.assert_close(mixed_temperature_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_adapters_loaded_from_disk(tmp_path):
    """The serving flow: one frozen backbone, task adapters loaded from their folders, one mixed batch."""
    model = three_adapters("vit", "cdc")
    model.save_pretrained(tmp_path)  # one sub-folder per adapter (none is named "default")
    x = pixel_values(len(NAMES))
    with torch.no_grad():
        expected = per_sample(solo_outputs(model, x), lambda o: o.logits)
    served = PeftModel.from_pretrained(TINY_BACKBONES["vit"](), tmp_path / A, adapter_name=A)
    served.load_adapter(tmp_path / B, adapter_name=B)
    served.load_adapter(tmp_path / C, adapter_name=C)
    with torch.no_grad():
        mixed = served.eval()(pixel_values=x, adapter_names=NAMES).logits
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)


def test_model_is_unchanged_after_a_mixed_batch():
    model = three_adapters("vit", "cdc")
    x = pixel_values(3)
    with torch.no_grad():
        before = model(pixel_values=x).logits
        model(pixel_values=pixel_values(len(NAMES)), adapter_names=NAMES)
        after = model(pixel_values=x).logits
    assert torch.equal(before, after)
    assert model.active_adapter == A
    assert "forward" not in model.base_model.model.__dict__
    assert active_call() is None and all(block._batch_route() is None for block in blocks_of(model))


@pytest.mark.parametrize(
    ("adapter_names", "error", "match"),
    [
        ([A, "typo", B, A, A, A], ValueError, r"Unknown adapter\(s\) in `adapter_names`: 'typo'.*'__base__'"),
        ([A, B], ValueError, "has 2 entries but the batch has 6 samples"),
        (A, TypeError, "one adapter name per sample.*set_adapter"),
        ([A, 1, B, A, A, A], TypeError, "must hold strings"),
        ([], ValueError, r"`adapter_names` is empty: give one adapter name per sample"),
    ],
)
def test_bad_adapter_names(adapter_names, error, match):
    model = three_adapters("vit", "gpt")
    x = pixel_values(len(NAMES))
    with torch.no_grad():
        before = model(pixel_values=x).logits
        with pytest.raises(error, match=match):
            model(pixel_values=x, adapter_names=adapter_names)
        after = model(pixel_values=x).logits
    assert torch.equal(before, after)
    assert "forward" not in model.base_model.model.__dict__
    assert active_call() is None and all(block._batch_route() is None for block in blocks_of(model))


def test_training_mode_is_refused():
    model = three_adapters("vit", "gpt").train()
    with pytest.raises(ValueError, match=r"for inference: call `model.eval\(\)`"):
        model(pixel_values=pixel_values(len(NAMES)), adapter_names=NAMES)
    assert "forward" not in model.base_model.model.__dict__


def test_error_inside_a_group_forward_leaves_no_routing():
    model = three_adapters("vit", "gpt")
    wrong = torch.randn(len(NAMES), 5, 32, 32)  # 5 channels: the patch embedding raises inside the routed forward
    with torch.no_grad(), pytest.raises(ValueError, match="channel"):
        model(pixel_values=wrong, adapter_names=NAMES)
    assert active_call() is None and all(block._batch_route() is None for block in blocks_of(model))
    assert "forward" not in model.base_model.model.__dict__


def test_disabled_adapters_run_every_sample_through_the_base_model():
    """PEFT's rule: inside `disable_adapter()`, `adapter_names` is dropped and the whole batch runs the base model."""
    model = three_adapters("vit", "gpt")
    x = pixel_values(len(NAMES))
    with torch.no_grad(), model.disable_adapter():
        expected = model(pixel_values=x).logits
        mixed = model(pixel_values=x, adapter_names=NAMES).logits
    assert torch.equal(mixed, expected)


@pytest.mark.parametrize("num_texts", [3, 4, 2])
def test_clip_model_mixed_batches_route_images_and_keep_the_texts_whole(num_texts):
    """Full CLIPModel (only the vision tower is prompted): every image's row of `logits_per_image` is that of its
    adapter alone, with one layout or several. The texts are the other side of the logits, never split with the
    images, even when there are as many texts as images (before: 4 images and 4 texts with two layouts silently gave
    a [4, 2] `logits_per_image`); `logits_per_text` is its transpose and the text side is returned once."""
    from tiny_models import tiny_clip_model

    model = get_peft_model(tiny_clip_model(), make_config("gpt", "clip", head=False), adapter_name=A)
    model.add_adapter(B, make_config("gpt", "clip", head=False))
    model.add_adapter(C, make_config("gpt", "clip", head=False, num_prompts=2))
    for seed, name in enumerate((A, B, C)):
        model.set_adapter(name)
        perturb_active(model, seed)
    model.eval()
    x, input_ids = pixel_values(4), torch.randint(0, 50, (num_texts, 5))
    with torch.no_grad():
        solo = {}
        for name in (A, B, C):
            model.set_adapter(name)
            solo[name] = model(pixel_values=x, input_ids=input_ids)
        with model.disable_adapter():
            solo["__base__"] = model(pixel_values=x, input_ids=input_ids)
        for names in ([A, B, B, A], [A, C, C, "__base__"]):  # one layout; three groups
            mixed = model(pixel_values=x, input_ids=input_ids, adapter_names=names)
            expected = per_sample({k: v.logits_per_image for k, v in solo.items()}, lambda o: o, names)
            assert mixed.logits_per_image.shape == (4, num_texts)
            torch.testing.assert_close(mixed.logits_per_image, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(mixed.logits_per_text, expected.t(), rtol=1e-5, atol=1e-5)
            assert torch.equal(mixed.text_embeds, solo[A].text_embeds)
            assert list(mixed.keys()) == list(solo[A].keys())
        positional = model(input_ids, x, adapter_names=[A, C, C, "__base__"])  # CLIPModel(input_ids, pixel_values)
        torch.testing.assert_close(positional.logits_per_image, mixed.logits_per_image, rtol=0, atol=0)


def test_concurrent_mixed_batches_from_several_threads_each_get_their_own_outputs(method):
    # Each thread's call is routed through its own context: outputs are exactly the single-threaded ones, and no
    # call leaves anything on the model (before: threads got each other's outputs and a stale `forward` stayed).
    import threading

    model = three_adapters("vit", method)
    batches = {
        "mixed-1": (pixel_values(len(NAMES), seed=1), NAMES),
        "mixed-2": (pixel_values(len(NAMES), seed=2), list(reversed(NAMES))),
        "mixed-3": (pixel_values(len(NAMES), seed=3), [B] * len(NAMES)),
        "plain": (pixel_values(len(NAMES), seed=4), None),  # a plain call next to the mixed ones
    }

    def call(name):
        x, names = batches[name]
        with torch.no_grad():
            return model(pixel_values=x).logits if names is None else model(pixel_values=x, adapter_names=names).logits

    expected = {name: call(name) for name in batches}
    results, errors = {}, []
    barrier = threading.Barrier(len(batches))

    def worker(name):
        try:
            barrier.wait()
            for _ in range(5):
                got = call(name)
                if not torch.equal(got, expected[name]):
                    results[name] = "wrong"
                    return
            results[name] = "ok"
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in batches]
    torch.set_num_threads(1)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == dict.fromkeys(batches, "ok")
    assert "forward" not in model.base_model.model.__dict__
    model.set_adapter(B)  # single-threaded use afterwards sees the adapter it asks for
    with torch.no_grad():
        x = pixel_values(2)
        alone = model(pixel_values=x).logits
        torch.testing.assert_close(model(pixel_values=x, adapter_names=[B, B]).logits, alone, rtol=1e-5, atol=1e-6)


def test_a_failed_load_does_not_disturb_a_thread_serving_mixed_batches(tmp_path):
    # Before: the rollback of a failed load emptied and refilled module dicts in place; a thread serving mixed batches
    # meanwhile got wrong outputs or crashed (54 of 180 calls when looped). A thread may be switched out between any
    # two lines of the rollback, so the serving call is run at the lines of its loop over modules (a trace function):
    # each must succeed with the right outputs.
    import shutil
    import sys

    from safetensors.torch import load_file, save_file

    import gated_vpt
    from gated_vpt.io import rollback

    model = three_adapters("vit", "gpt")
    # a bad adapter that prompts other blocks: its load injects it, fails the weights check and rolls back
    donor = get_peft_model(TINY_BACKBONES["vit"](), make_config("gpt", "vit", True, layers_to_transform=[2, 3]))
    donor.save_pretrained(tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "good", bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("gpt_prompts"))
    tensors[key] = torch.zeros(7, tensors[key].shape[1])
    save_file(tensors, bad / "adapter_model.safetensors")

    x = pixel_values(len(NAMES), seed=3)
    with torch.no_grad():
        expected = model(pixel_values=x, adapter_names=NAMES).logits
    outcomes: list = []

    lines = iter(range(10**9))

    def serve_here(frame, event, arg):
        if event == "line" and next(lines) % 2 == 0:  # every 2nd line of the loop over modules keeps it fast
            try:
                with torch.no_grad():
                    outcomes.append(torch.equal(model(pixel_values=x, adapter_names=NAMES).logits, expected))
            except Exception as error:  # noqa: BLE001 - reported below
                outcomes.append(error)
        return serve_here

    def trace(frame, event, arg):
        code = frame.f_code
        restoring = code.co_filename == rollback.__file__ and code.co_name == "restore"
        return serve_here if restoring else None

    sys.settrace(trace)
    try:
        with pytest.raises(gated_vpt.AdapterWeightsError):
            model.load_adapter(bad, adapter_name="intruder")
    finally:
        sys.settrace(None)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(outcomes) > 20 and not errors, errors[:3]
    assert all(outcomes), f"{outcomes.count(False)} wrong of {len(outcomes)}"


def test_deleting_an_adapter_during_a_mixed_batch_gives_a_clear_error():
    # Before: a `delete_adapter` from another thread while a mixed batch ran raised a bare KeyError inside the blocks.
    model = three_adapters("vit", "gpt")
    blocks = blocks_of(model.base_model.model)
    x = pixel_values(len(NAMES))

    def delete_midway(module, args):
        if C in model.peft_config:
            model.delete_adapter(C)  # what another thread does at this moment

    handle = blocks[1].base_layer.register_forward_pre_hook(delete_midway)
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match=r"\['flowers'\] were deleted while this mixed-adapter"):
            model(pixel_values=x, adapter_names=NAMES)
    finally:
        handle.remove()
