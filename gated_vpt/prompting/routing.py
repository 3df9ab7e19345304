# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Per-sample routing of a mixed-adapter batch: which adapter each sample uses, how samples are grouped into
forwards, and how the groups' outputs are put back in the batch's order; the hooks that use them are
`gated_vpt.prompting.mixed_batch`.

The state of one call (`MixedCall`) lives in a `ContextVar`, so it belongs to the thread (or asyncio task) that made
the call: two threads running mixed batches on one model, or a plain call next to a mixed one, never see each
other's routing, and nothing is left on the modules when a call ends. `active_call` reads it only while some mixed
call is in flight anywhere, so an ordinary forward (and `torch.compile`) sees a plain module-level counter.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from transformers.utils import ModelOutput

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
    if not names:
        raise ValueError(
            "`adapter_names` is empty: give one adapter name per sample of the batch "
            f"({BASE_ADAPTER!r} for the base model)."
        )
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


@dataclasses.dataclass
class MixedCall:
    """One `model(..., adapter_names=[...])` call in flight, in the context that made it."""

    tuner_id: int  # `id()` of the tuner whose model runs the call (a nested model never picks it up)
    block_ids: frozenset[int]  # `id()` of that tuner's prompt blocks
    names: list[str]  # one adapter name per sample
    groups: list[LayoutGroup]
    num_prompts_of: dict[str, int]  # adapter -> prompt count
    device: torch.device
    # The group running now: its route through the blocks, prompt count (None: base model) and head names.
    route: Optional[BatchRoute] = None
    num_prompts: Optional[int] = None
    head_names: Optional[list[str]] = None
    # Inputs of the model's call that are not per image (a dual encoder's texts), and the model's class (for the
    # names of its positional arguments): set by the model's pre-hook when the batch has several layout groups.
    shared_inputs: frozenset = frozenset()
    model_type: Optional[type] = None
    started: bool = False  # the model's pre-hook has taken the call
    dispatching: bool = False  # the model's forward hook is running the other groups
    inputs: tuple[tuple, dict] = ((), {})  # the full batch, while other groups remain to run
    scratch: dict[int, Any] = dataclasses.field(default_factory=dict)  # per-block captures of this call (CDC's AR)

    def select(self, group: LayoutGroup) -> None:
        slots = None
        if len(group.adapters) > 1:
            slot_of = {name: i for i, name in enumerate(group.adapters)}
            slots = torch.tensor([slot_of[name] for name in group.names], device=self.device)
        self.route = BatchRoute(group.adapters, slots)
        self.num_prompts = self.num_prompts_of[group.adapters[0]] if group.adapters else None
        self.head_names = list(group.names)


_CALL: contextvars.ContextVar[Optional[MixedCall]] = contextvars.ContextVar("gated_vpt_mixed_call", default=None)
_IN_FLIGHT = 0  # mixed calls running in any thread
_IN_FLIGHT_LOCK = threading.Lock()


def active_call() -> Optional[MixedCall]:
    """The mixed call this context is running, if any."""
    if _IN_FLIGHT == 0:  # the common case: one global read, no ContextVar access
        return None
    return _CALL.get()


@contextlib.contextmanager
def running(call: MixedCall) -> Iterator[MixedCall]:
    """Make `call` this context's mixed call for the duration of the block."""
    global _IN_FLIGHT
    if _CALL.get() is not None and _IN_FLIGHT:
        raise RuntimeError(
            "A mixed-adapter batch is already running in this thread (a model called inside another model's "
            "mixed-batch forward); nested mixed batches are not supported."
        )
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT += 1
    token = _CALL.set(call)
    try:
        yield call
    finally:
        _CALL.reset(token)
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT -= 1
