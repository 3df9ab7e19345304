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
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers.utils import ModelOutput

if TYPE_CHECKING:
    from .prompt_tuner import PromptTuner

BASE_ADAPTER = "__base__"


@dataclasses.dataclass(frozen=True)
class BatchRoute:
    """Which adapter each sample of one forward uses. Set on every prompt block for the duration of the forward.

    `adapters`: the distinct adapters of the group, in order of first appearance; empty for the base model.
    `slots`: ``[batch]`` index into `adapters` per sample, on the model's device; None when there is one adapter
    (the blocks then run exactly their single-adapter code path).
    """

    adapters: tuple[str, ...]
    slots: Optional[torch.Tensor] = None


@dataclasses.dataclass(frozen=True)
class LayoutGroup:
    """Samples of one mixed batch that can share a forward."""

    positions: list[int]  # their positions in the batch
    names: list[str]  # their adapter names, in the same order
    adapters: tuple[str, ...]  # distinct adapters, in order of first appearance; empty for the base model


def check_adapter_names(adapter_names: Any, known: Sequence[str]) -> list[str]:
    """The names as a list, or a clear error naming the problem and the fix."""
    if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)):
        raise TypeError(
            f"`adapter_names` must be a list with one adapter name per sample (or {BASE_ADAPTER!r} for the base "
            f"model); got {type(adapter_names).__name__}. For one adapter for the whole batch use `set_adapter(name)`."
        )
    names = list(adapter_names)
    bad_types = sorted({type(n).__name__ for n in names if not isinstance(n, str)})
    if bad_types:
        raise TypeError(f"`adapter_names` must hold strings; got element(s) of type {', '.join(bad_types)}.")
    unknown = sorted(set(names) - set(known) - {BASE_ADAPTER})
    if unknown:
        raise ValueError(
            f"Unknown adapter(s) in `adapter_names`: {', '.join(map(repr, unknown))}. This model has "
            f"{', '.join(map(repr, sorted(known)))}; use {BASE_ADAPTER!r} for the base model without an adapter."
        )
    return names


def plan_groups(names: Sequence[str], layouts: dict[str, tuple]) -> list[LayoutGroup]:
    """Group the samples by adapter layout (base-model samples form their own group), in order of first appearance."""
    grouped: dict[Any, tuple[list[int], list[str]]] = {}
    for position, name in enumerate(names):
        key = None if name == BASE_ADAPTER else layouts[name]
        positions, group_names = grouped.setdefault(key, ([], []))
        positions.append(position)
        group_names.append(name)
    return [
        LayoutGroup(positions, group_names, () if key is None else tuple(dict.fromkeys(group_names)))
        for key, (positions, group_names) in grouped.items()
    ]


def batch_size_of(args: tuple, kwargs: dict) -> int:
    """The batch size of a vision model call: the leading dimension of `pixel_values` (or the first tensor)."""
    candidates = [kwargs.get("pixel_values"), *args, *kwargs.values()]
    tensor = next((t for t in candidates if torch.is_tensor(t) and t.dim() > 0), None)
    if tensor is None:
        raise ValueError("A mixed-adapter batch needs a batched tensor input (`pixel_values`) to route samples.")
    return tensor.shape[0]


def select_samples(value: Any, index: torch.Tensor, batch_size: int) -> Any:
    """`value` restricted to the samples `index` if it is a batched tensor (leading dimension = batch), else as is."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch_size:
        return value.index_select(0, index.to(value.device))
    return value


def merge_outputs(parts: list[Any], indices: list[torch.Tensor], batch_size: int, name: str = "output") -> Any:
    """Put the outputs of the groups' forwards back together in the batch's order.

    Batched tensors are scattered back to their samples' positions; a 0-d tensor (a loss the model reduced over its
    group) becomes the sample-weighted mean of the groups' values, which is the batch's loss for per-sample-mean
    losses such as cross-entropy. A tensor that is not per sample (e.g. CLIPModel's image-text logits, whose other
    side is the text batch) cannot be merged: that raises rather than return one group's values."""
    first = parts[0]
    if torch.is_tensor(first):
        if first.dim() == 0:
            return sum(part * len(index) for part, index in zip(parts, indices, strict=True)) / batch_size
        sizes = [len(index) for index in indices]
        if not all(torch.is_tensor(p) and p.dim() > 0 and p.shape[0] == n for p, n in zip(parts, sizes, strict=True)):
            raise ValueError(
                f"`{name}` of this model is not one row per image ({[tuple(p.shape) for p in parts]} for layout groups "
                f"of {sizes} images), so a batch mixing adapters of different layouts cannot be put back together. "
                "Use adapters of one layout in a batch (one forward, nothing to merge) or run the groups separately."
            )
        if any(p.shape[1:] != first.shape[1:] for p in parts):
            shapes = ", ".join(str(tuple(p.shape[1:])) for p in parts)
            raise ValueError(
                f"The adapters of this mixed batch give `{name}` different shapes per sample ({shapes}), e.g. heads "
                "with different numbers of labels; they cannot be returned as one batch. Run them separately."
            )
        merged = first.new_empty((batch_size, *first.shape[1:]))
        return merged.index_copy_(0, torch.cat(indices).to(first.device), torch.cat(parts))
    if isinstance(first, ModelOutput):
        return type(first)(
            **{key: merge_outputs([p[key] for p in parts], indices, batch_size, f"{name}.{key}") for key in first}
        )
    if isinstance(first, (tuple, list)) and not hasattr(first, "_fields"):
        return type(first)(
            merge_outputs([p[i] for p in parts], indices, batch_size, f"{name}[{i}]") for i in range(len(first))
        )
    if isinstance(first, dict):
        return {key: merge_outputs([p[key] for p in parts], indices, batch_size, f"{name}.{key}") for key in first}
    return first


@contextlib.contextmanager
def _routed_group(
    tuner: PromptTuner, group: LayoutGroup, blocks: list[nn.Module], heads: list[nn.Module], device: torch.device
) -> Iterator[None]:
    """Route one group's forward: every prompt block gathers per-sample parameters, every head wrapper (PEFT's
    `modules_to_save`) picks per-sample heads, the hidden-state hooks strip the group's prompt count."""
    slots = None
    if len(group.adapters) > 1:
        slot_of = {name: i for i, name in enumerate(group.adapters)}
        slots = torch.tensor([slot_of[name] for name in group.names], device=device)
    route = BatchRoute(group.adapters, slots)

    def give_head_names(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "adapter_names": group.names}

    handles = [head.register_forward_pre_hook(give_head_names, with_kwargs=True) for head in heads]
    for block in blocks:
        block._batch_route = route
    tuner._routed_num_prompts = tuner.peft_config[group.adapters[0]].num_prompts if group.adapters else None
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks:
            block._batch_route = None
        tuner._routed_num_prompts = None


@contextlib.contextmanager
def mixed_batch_forward(tuner: PromptTuner, adapter_names: Any) -> Iterator[None]:
    """While active, calls of the tuner's model run each sample with the adapter `adapter_names` gives it."""
    names = check_adapter_names(adapter_names, list(tuner.peft_config))
    if tuner.model.training:
        raise ValueError(
            "Mixed-adapter batches (`adapter_names=...`) are for inference: call `model.eval()` first. To train "
            "several adapters, train each one with `set_adapter(name)` (PEFT's LoRA has the same rule)."
        )
    depth = tuner._prompt_site.depth
    layouts = {name: config.mixed_batch_layout(depth) for name, config in tuner.peft_config.items()}
    groups = plan_groups(names, layouts)
    model = tuner.model
    blocks = [m for m in model.modules() if isinstance(m, tuner.tuner_layer_cls)]
    heads = [m for m in model.modules() if isinstance(m, AuxiliaryTrainingWrapper)]
    had_own_forward = "forward" in model.__dict__  # e.g. accelerate's hooks install one on the instance
    original_forward = model.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        batch_size = batch_size_of(args, kwargs)
        if batch_size != len(names):
            raise ValueError(
                f"`adapter_names` has {len(names)} entries but the batch has {batch_size} samples: give one adapter "
                f"name per sample ({BASE_ADAPTER!r} for the base model)."
            )
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if len(groups) == 1:
            with _routed_group(tuner, groups[0], blocks, heads, device):
                return original_forward(*args, **kwargs)
        parts, indices = [], []
        for group in groups:
            index = torch.tensor(group.positions, device=device)
            group_args = tuple(select_samples(a, index, batch_size) for a in args)
            group_kwargs = {k: select_samples(v, index, batch_size) for k, v in kwargs.items()}
            with _routed_group(tuner, group, blocks, heads, device):
                parts.append(original_forward(*group_args, **group_kwargs))
            indices.append(index)
        return merge_outputs(parts, indices, batch_size)

    model.forward = forward
    tuner._mixed_batch_active = True
    try:
        yield
    finally:
        tuner._mixed_batch_active = False
        if had_own_forward:
            model.forward = original_forward
        else:
            del model.forward
