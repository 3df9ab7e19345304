# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Mixed-adapter batches: ``model(pixel_values=x, adapter_names=["eurosat", "cifar", "__base__", ...])``.

Every sample runs with its own adapter's prompts, gates, temperatures, aggregation and reinforcement parameters and
head (``"__base__"``: the untouched base model), as if that adapter had run alone. PEFT's mixed LoRA batches work the
same way from the user's side: the argument is `adapter_names`, it is for inference only, `"__base__"` means none.

How one forward serves several adapters: samples are grouped by *layout* (`PromptConfigBase.mixed_batch_layout`:
number of prompts, prompted blocks, and the switches that decide which parameters a block has). Adapters of one
layout put their prompts into the same slots of the same blocks, so their samples share one forward of the backbone:
each block gathers every sample's own parameters along the batch dimension (`BatchRoute`), and PEFT's
`ModulesToSaveWrapper` gives each sample its own head. Samples of different layouts, and `"__base__"` samples (no
prompt slots at all), cannot share a sequence without attention masks, which several supported families do not
accept; each such group runs its own forward and the outputs are put back in the batch's order.

Per call, not per model: the call's routing lives in a `ContextVar` (`gated_vpt.prompting.routing.MixedCall`), and the
hooks that act on it are installed once, when the adapter is injected, and removed by `unload()`. The model's forward is
never replaced, so concurrent calls from several threads each get their own samples' outputs, and a call that fails
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from torch.utils.hooks import RemovableHandle

from .routing import (
    BASE_ADAPTER,
    MixedCall,
    active_call,
    batch_size_of,
    check_adapter_names,
    merge_outputs,
    plan_groups,
    running,
    select_samples,
)


def _call_of(tuner: BaseTuner) -> Optional[MixedCall]:
    call = active_call()
    return call if call is not None and call.tuner_id == id(tuner) else None


# The text side of a contrastive dual encoder (CLIPModel, SiglipModel, ...): its batch is the texts, not the images,
# even when there are as many texts as images, so it is never split with the images' layout groups.
TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "position_ids", "token_type_ids", "inputs_embeds"})


def is_dual_encoder(model: nn.Module) -> bool:
    """A contrastive image-text model whose text batch is independent of its image batch."""
    return callable(getattr(model, "get_text_features", None)) and callable(getattr(model, "get_image_features", None))


@functools.cache
def _positional_names(forward_type: type, name: str) -> tuple[str, ...]:
    try:
        parameters = inspect.signature(getattr(forward_type, name)).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))[1:]


def _group_inputs(call: MixedCall, index: torch.Tensor) -> tuple[tuple, dict]:
    args, kwargs = call.inputs
    batch_size = len(call.names)
    shared = call.shared_inputs
    names = _positional_names(call.model_type, "forward") if shared else ()

    def select(name: Optional[str], value: Any) -> Any:
        return value if name in shared else select_samples(value, index, batch_size)

    return (
        tuple(select(names[i] if i < len(names) else None, a) for i, a in enumerate(args)),
        {k: select(k, v) for k, v in kwargs.items()},
    )


def _merge_dual_encoder_outputs(parts: list[Any], indices: list[torch.Tensor], batch_size: int) -> Any:
    """The groups' outputs of a contrastive dual encoder: image-side values per image; the text side (`text_embeds`,
    `text_model_output`), computed from the same texts by the unprompted text tower, taken once; `logits_per_text`
    rebuilt as the transpose of the merged `logits_per_image`, which is how these models define it."""
    first = parts[0]
    text_keys = [k for k in first if k.startswith("text")]
    for key in text_keys:
        if not all(_same(first[key], part[key]) for part in parts[1:]):
            raise ValueError(
                f"`output.{key}` differs between the layout groups of this mixed batch, though the text tower is not "
                "prompted; it cannot be returned as one batch. Run the groups separately."
            )
    image_side = [
        type(p)(**{k: v for k, v in p.items() if k not in text_keys and k != "logits_per_text"}) for p in parts
    ]
    merged = merge_outputs(image_side, indices, batch_size)
    values = {}
    for key in first:
        if key in text_keys:
            values[key] = first[key]
        elif key == "logits_per_text":
            values[key] = merged["logits_per_image"].t()
        else:
            values[key] = merged[key]
    return type(first)(**values)


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list, dict)):
        items_a = a.values() if isinstance(a, dict) else a
        items_b = b.values() if isinstance(b, dict) else b
        return len(items_a) == len(items_b) and all(_same(x, y) for x, y in zip(items_a, items_b, strict=True))
    return a is b or a == b


def install_mixed_batch_hooks(tuner: BaseTuner) -> list[RemovableHandle]:
    """The two hooks on the tuner's model that run a mixed call: the pre-hook takes the call and narrows the input to
    its first layout group; the forward hook runs the other groups and merges the outputs. Inert for any call that is
    not a mixed call of this tuner (one global read)."""
    model = tuner.model

    def take_call(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        call = _call_of(tuner)
        if call is None or call.dispatching or call.started:
            return None
        call.started = True
        # `pixel_values` may come by position (CLIPModel's first positional argument is `input_ids`)
        named = dict(zip(_positional_names(type(module), "forward"), args, strict=False))
        batch_size = batch_size_of(args, {**named, **kwargs})
        if batch_size != len(call.names):
            raise ValueError(
                f"`adapter_names` has {len(call.names)} entries but the batch has {batch_size} samples: give one "
                f"adapter name per sample ({BASE_ADAPTER!r} for the base model)."
            )
        call.select(call.groups[0])
        if len(call.groups) == 1:
            return None
        call.inputs = (args, kwargs)
        call.model_type = type(module)
        call.shared_inputs = TEXT_INPUTS if is_dual_encoder(module) else frozenset()
        return _group_inputs(call, torch.tensor(call.groups[0].positions, device=call.device))

    def run_other_groups(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        call = _call_of(tuner)
        if call is None or call.dispatching or len(call.groups) == 1:
            return None
        parts, indices = [output], [torch.tensor(call.groups[0].positions, device=call.device)]
        call.dispatching = True
        try:
            for group in call.groups[1:]:
                index = torch.tensor(group.positions, device=call.device)
                call.select(group)
                group_args, group_kwargs = _group_inputs(call, index)
                parts.append(module(*group_args, **group_kwargs))
                indices.append(index)
        finally:
            call.dispatching = False
            call.inputs = ((), {})
        if call.shared_inputs and "logits_per_image" in getattr(output, "keys", lambda: ())():
            return _merge_dual_encoder_outputs(parts, indices, len(call.names))
        return merge_outputs(parts, indices, len(call.names))

    return [
        model.register_forward_pre_hook(take_call, with_kwargs=True, prepend=True),
        model.register_forward_hook(run_other_groups, with_kwargs=True),
    ]


def _install_head_hooks(tuner: BaseTuner) -> None:
    """Give every `modules_to_save` wrapper the current group's per-sample adapter names. PEFT creates the wrappers
    after the tuner injected its blocks, so they are hooked at the first mixed call, once, and unhooked by
    `unload()` with the tuner's other hooks."""

    def give_head_names(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        call = _call_of(tuner)
        if call is None or call.head_names is None:
            return None
        return args, {**kwargs, "adapter_names": call.head_names}

    for head in tuner.model.modules():
        if isinstance(head, AuxiliaryTrainingWrapper) and id(head) not in tuner.hooked_heads:
            tuner.hooked_heads.add(id(head))
            tuner.keep_hook(head.register_forward_pre_hook(give_head_names, with_kwargs=True))


@contextlib.contextmanager
def mixed_batch_forward(tuner: BaseTuner, adapter_names: Any) -> Iterator[None]:
    """While active, the next call of the tuner's model in this context runs each sample with the adapter
    `adapter_names` gives it."""
    names = check_adapter_names(adapter_names, list(tuner.peft_config))
    if tuner.model.training:
        raise ValueError(
            "Mixed-adapter batches (`adapter_names=...`) are for inference: call `model.eval()` first. To train "
            "several adapters, train each one with `set_adapter(name)` (PEFT's LoRA has the same rule)."
        )
    depth = tuner.prompt_site.depth
    layouts = {name: config.mixed_batch_layout(depth) for name, config in tuner.peft_config.items()}
    param = next(tuner.model.parameters(), None)
    _install_head_hooks(tuner)
    call = MixedCall(
        tuner_id=id(tuner),
        block_ids=frozenset(id(m) for m in tuner.model.modules() if isinstance(m, tuner.tuner_layer_cls)),
        names=names,
        groups=plan_groups(names, layouts),
        num_prompts_of={name: config.num_prompts for name, config in tuner.peft_config.items()},
        device=param.device if param is not None else torch.device("cpu"),
    )
    with running(call):
        try:
            yield
        except KeyError as error:
            gone = sorted({name for name in names if name != BASE_ADAPTER and name not in tuner.peft_config})
            if not gone:
                raise
            raise RuntimeError(
                f"Adapter(s) {gone} were deleted while this mixed-adapter batch was running on them (`delete_adapter` "
                "from another thread); the batch has no result. Delete adapters only when no batch uses them, or "
                "run the batch again."
            ) from error
