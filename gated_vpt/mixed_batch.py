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
from collections.abc import Iterator
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from .routing import (
    BASE_ADAPTER,
    BatchRoute,
    LayoutGroup,
    RoutedGroup,
    batch_size_of,
    check_adapter_names,
    merge_outputs,
    plan_groups,
    select_samples,
)


@contextlib.contextmanager
def _routed_group(
    tuner: BaseTuner, group: LayoutGroup, blocks: list[nn.Module], heads: list[nn.Module], device: torch.device
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
        block.batch_route = route
    tuner.routed_group = RoutedGroup(tuner.peft_config[group.adapters[0]].num_prompts if group.adapters else None)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks:
            block.batch_route = None
        tuner.routed_group = None


@contextlib.contextmanager
def mixed_batch_forward(tuner: BaseTuner, adapter_names: Any) -> Iterator[None]:
    """While active, calls of the tuner's model run each sample with the adapter `adapter_names` gives it."""
    names = check_adapter_names(adapter_names, list(tuner.peft_config))
    if tuner.model.training:
        raise ValueError(
            "Mixed-adapter batches (`adapter_names=...`) are for inference: call `model.eval()` first. To train "
            "several adapters, train each one with `set_adapter(name)` (PEFT's LoRA has the same rule)."
        )
    depth = tuner.prompt_site.depth
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
    try:
        yield
    finally:
        if had_own_forward:
            model.forward = original_forward
        else:
            del model.forward
