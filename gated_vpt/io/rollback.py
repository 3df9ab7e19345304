# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Putting a model back exactly as it was when a load fails: structure, parameters, buffers, hooks, attributes,
`requires_grad` and train / eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


def _is_container(value: Any) -> bool:
    return isinstance(value, (dict, list, set)) and not isinstance(value, nn.Module)


class ModelSnapshot:
    """The structure of a module tree, cheap to take (no tensor is copied unless asked) and exact to restore.

    Records, for every module: its attribute dict (children, parameters, buffers, hook dicts, flags, other
    attributes) and the contents of every dict / list / set in it, restored *in place* so that objects shared
    between modules (PEFT aliases `peft_config` dicts) stay shared; `requires_grad` of every parameter; the attribute
    dict of each transformers config; and the values of `clone` tensors (adapter tensors that a load would overwrite
    in place)."""

    def __init__(self, root: nn.Module, clone: Iterable[torch.Tensor] = ()) -> None:
        self.modules = []
        seen_configs: set[int] = set()
        self.configs = []
        for module in root.modules():
            attributes = dict(module.__dict__)
            containers = [(v, _copy_container(v)) for v in attributes.values() if _is_container(v)]
            self.modules.append((module, attributes, containers))
            config = attributes.get("config")
            if config is not None and hasattr(config, "to_dict") and id(config) not in seen_configs:
                seen_configs.add(id(config))
                self.configs.append((config, dict(config.__dict__)))
        self.requires_grad = [(p, p.requires_grad) for p in root.parameters()]
        self.values = [(t, t.detach().clone()) for t in clone if t.device.type != "meta"]

    def restore(self) -> None:
        # Only what changed is put back, entry by entry, never by emptying and refilling a dict: another thread may be
        # running the model (serving other adapters) while a load fails, and must never see a module without its
        # children or parameters.
        for module, attributes, containers in self.modules:
            _restore_container(module.__dict__, attributes)
            for container, contents in containers:
                _restore_container(container, contents)
        for config, attributes in self.configs:
            _restore_container(config.__dict__, attributes)
        for param, flag in self.requires_grad:
            param.requires_grad_(flag)
        with torch.no_grad():
            for tensor, value in self.values:
                if tensor.shape == value.shape:
                    tensor.copy_(value)


def _copy_container(value: Any) -> Any:
    return list(value) if isinstance(value, list) else (set(value) if isinstance(value, set) else dict(value))


def _restore_container(container: Any, contents: Any) -> None:
    """Make `container` hold `contents` again, changing only the entries that differ (each change is one atomic
    operation under the GIL)."""
    if isinstance(container, list):
        if len(container) != len(contents) or any(a is not b for a, b in zip(container, contents, strict=True)):
            container[:] = contents
    elif isinstance(container, set):
        container.difference_update(container - contents)
        container.update(contents)
    else:
        for key in [k for k in list(container) if k not in contents]:
            del container[key]
        for key, value in contents.items():
            if key not in container or container[key] is not value:
                container[key] = value


@contextlib.contextmanager
def preserved_on_error(root: nn.Module, clone: Iterable[torch.Tensor] = ()) -> Iterator[ModelSnapshot]:
    """Run the body; if it raises (anything, KeyboardInterrupt included), put `root` back exactly as it was."""
    snapshot = ModelSnapshot(root, clone)
    try:
        yield snapshot
    except BaseException:
        snapshot.restore()
        raise
