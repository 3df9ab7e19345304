# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Data-driven prompt initialisation: SPT (Wang et al., "Revisiting the Power of Prompt for Visual Tuning", ICML 2024)
and VIPAMIN (Park & Chung, NeurIPS 2025; its maths in `vipamin.py`).

`initialize_prompts(model, batches)` runs the *prompt-free* model (the adapter disabled, eval mode, no gradient) over
the batches, and sets every prompt parameter of the adapter from the patch tokens entering the block that owns it:
the first prompted block for shallow methods (VPT-shallow, GPT, VAPT's static prompts), every prompted block for deep
ones (VPT-deep, CDC, VFPT). CLS, distillation and register tokens are never used.

- `spt-sample`: each prompt is one patch token, drawn uniformly without replacement from every patch token seen;
- `spt-mean` / `spt-max`: each image's patch tokens, in raster order, are split into N_p - 1 windows of
  w = floor(N / (N_p - 1)) consecutive tokens plus a tail window of the rest (the whole sequence when there is no
  rest, as the official code does); each window is mean / max pooled, and N_p of the pooled tokens of all images are
  drawn uniformly without replacement.

- `vipamin`: matching and orthogonalising from batch means of the block's inputs, keys and attention output (see
  `gated_vpt.vpt.vipamin`); settings in the config's `vipamin_config`.

Streaming: SPT's draw is a reservoir (every candidate gets a random key, the N_p smallest keys are kept), so memory is
N_p tokens per block plus one batch, whatever the number of batches; VIPAMIN keeps sums of `[T, D]` per block.
Deterministic given `seed` and the batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import torch
from torch import nn

from ..prompting.prompt_config import DATA_DRIVEN_PROMPT_INITS
from .layer import VisualPromptBlock
from .vipamin import vipamin_statistics


class _Reservoir:
    """The `size` candidates with the smallest random keys seen so far: a uniform draw without replacement."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size, self.generator = size, generator
        self.keys: Optional[torch.Tensor] = None
        self.rows: Optional[torch.Tensor] = None
        self.seen = 0

    def offer(self, rows: torch.Tensor) -> None:
        rows = rows.detach().float().cpu()
        keys = torch.rand(rows.shape[0], generator=self.generator)
        if self.rows is not None:
            rows, keys = torch.cat((self.rows, rows)), torch.cat((self.keys, keys))
        keep = keys.topk(min(self.size, keys.numel()), largest=False).indices
        self.rows, self.keys = rows[keep], keys[keep]
        self.seen += rows.shape[0]


def window_pool(patches: torch.Tensor, num_prompts: int, mode: str) -> torch.Tensor:
    """SPT's pooled tokens: `[B, N, D]` patch tokens -> `[B, num_prompts, D]`, each a `mode` ("mean" / "max") over a
    window of consecutive tokens (see the module docstring)."""
    count = patches.shape[1]
    if num_prompts == 1:
        windows = [patches]
    else:
        width = count // (num_prompts - 1)
        if width == 0:
            raise ValueError(
                f"`spt-{mode}` splits each image's {count} patch tokens into num_prompts - 1 = {num_prompts - 1} "
                "windows, which needs at least one token per window: use fewer prompts or `spt-sample`."
            )
        tail = count - width * (num_prompts - 1)
        windows = list(patches[:, : width * (num_prompts - 1)].split(width, dim=1))
        windows.append(patches[:, count - tail :] if tail else patches)
    pool = (lambda w: w.mean(dim=1)) if mode == "mean" else (lambda w: w.amax(dim=1))
    return torch.stack([pool(w) for w in windows], dim=1)


def _adapter_blocks(model: nn.Module, adapter: str) -> list[VisualPromptBlock]:
    return [m for m in model.modules() if isinstance(m, VisualPromptBlock) and adapter in m.prompt_roles]


def _active_adapter(model: nn.Module) -> str:
    name = getattr(model, "active_adapter", None)
    if callable(name):  # transformers' PeftAdapterMixin: a method
        name = name()
    if isinstance(name, (list, tuple)):
        name = name[0] if len(name) == 1 else None
    if not isinstance(name, str):
        raise ValueError("Pass `adapter_name=`: the model has no single active adapter.")
    return name


@contextlib.contextmanager
def _prompt_free(model: nn.Module) -> Iterator[None]:
    """The model with its adapters disabled, in eval mode, without gradients; restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        if hasattr(model, "disable_adapter") and callable(model.disable_adapter):  # a PeftModel
            with model.disable_adapter(), torch.no_grad():
                yield
        else:  # a transformers model with an adapter added through its own API
            model.disable_adapters()
            try:
                with torch.no_grad():
                    yield
            finally:
                model.enable_adapters()
    finally:
        for module, training in modes.items():
            module.training = training


def _run(model: nn.Module, batch: Any) -> None:
    """One forward of `batch`: a dict of model inputs (labels dropped), a tensor of images, or a tuple / list whose
    first item is one of those."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    parameter = next(model.parameters())
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "label")}
    elif torch.is_tensor(batch):
        inputs = {"pixel_values": batch}
    else:
        raise TypeError(
            f"initialize_prompts takes batches that are dicts of model inputs (as the HF Trainer's data loader gives), "
            f"tensors of images, or (images, labels) pairs; got a {type(batch).__name__}."
        )

    def placed(value: Any) -> Any:
        if not torch.is_tensor(value):
            return value
        value = value.to(parameter.device)
        return value.to(parameter.dtype) if value.is_floating_point() else value

    inputs = {k: placed(v) for k, v in inputs.items()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(getattr(base, "config", None), "model_type"):
        model(**inputs)
    elif "pixel_values" in inputs:
        model(inputs["pixel_values"])  # a timm or plain module: the images, positionally
    else:
        raise TypeError(f"A batch for {type(base).__name__} (not a transformers model) needs `pixel_values`.")


def initialize_prompts(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    adapter_name: Optional[str] = None,
    max_batches: Optional[int] = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Set the prompts of `adapter_name` (default: the active adapter) from data, as its `prompt_init` asks
    (`"spt-sample"`, `"spt-mean"` or `"spt-max"`); see the module docstring. Call it once after `get_peft_model` and
    before training; the saved adapter then holds the values and reloads without data.

    Args:
        model: The `PeftModel` (or a transformers model with the adapter added through its own adapter API).
        batches: Any iterable of batches (a `DataLoader`, the HF Trainer's `get_train_dataloader()`): dicts holding
            `pixel_values`, image tensors, or (images, labels) pairs.
        max_batches: Stop after this many batches (default: all of them).
        seed: Seed of the random draw.

    Returns: the record written into the adapter's config (`prompt_init_record`).
    """
    adapter = adapter_name if adapter_name is not None else _active_adapter(model)
    blocks = _adapter_blocks(model, adapter)
    if not blocks:
        raise ValueError(f"{type(model).__name__} holds no prompt adapter named {adapter!r}.")
    config = blocks[0].prompt_roles[adapter].config
    if config.prompt_init not in DATA_DRIVEN_PROMPT_INITS:
        raise ValueError(
            f"Adapter {adapter!r} has `prompt_init={config.prompt_init!r}`, which is not data-driven: create it with "
            f"one of {list(DATA_DRIVEN_PROMPT_INITS)} to initialise its prompts from data."
        )
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"`max_batches` must be a positive integer or None; got {max_batches!r}.")
    owners = [b for b in blocks if adapter in b.prompts]
    generator = torch.Generator().manual_seed(int(seed))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if config.prompt_init == "vipamin":
        statistics = vipamin_statistics(base, owners, config.num_prompts)
        handles = [h for s in statistics for h in s.handles]
    else:
        reservoirs = {id(b): _Reservoir(config.num_prompts, generator) for b in owners}
        handles = [b.register_forward_pre_hook(_spt_candidates(config, reservoirs), with_kwargs=True) for b in owners]
    images = used = 0
    try:
        with _prompt_free(model):
            for batch in batches:
                if max_batches is not None and used >= max_batches:
                    break
                _run(model, batch)
                used += 1
                first = batch[0] if isinstance(batch, (tuple, list)) else batch
                first = first.get("pixel_values") if isinstance(first, dict) else first
                images += int(first.shape[0]) if torch.is_tensor(first) else 0
    finally:
        for handle in handles:
            handle.remove()
    record = {"method": config.prompt_init, "batches": used, "images": images, "seed": int(seed)}
    if config.prompt_init == "vipamin":
        values, top_ks = [], set()
        for block_statistics in statistics:
            prompts, top_k = block_statistics.prompts(config.vipamin_config, generator)
            values.append(prompts)
            top_ks.add(top_k)
        settings = config.vipamin_config
        record.update(
            top_k=min(top_ks),
            orthogonal_weight=settings.orthogonal_weight,
            average_heads=settings.average_heads,
            code_compat=settings.code_compat,
        )
    else:
        values = []
        for block in owners:
            reservoir = reservoirs[id(block)]
            if reservoir.rows is None or reservoir.rows.shape[0] < config.num_prompts:
                index = block.prompt_roles[adapter].index
                raise ValueError(
                    f"initialize_prompts saw {reservoir.seen} candidate tokens for block {index} and needs "
                    f"{config.num_prompts} (num_prompts): pass more batches."
                )
            values.append(reservoir.rows)
    with torch.no_grad():
        for block, value in zip(owners, values, strict=True):
            parameter = block.prompts[adapter]
            parameter.copy_(value.to(device=parameter.device, dtype=parameter.dtype))
    config.prompt_init_record = record
    return dict(record)


def _spt_candidates(config: Any, reservoirs: dict) -> Any:
    """The pre-hook offering a block's SPT candidates (its input's patch tokens, or their pooled windows) to its
    reservoir."""
    mode = config.prompt_init.removeprefix("spt-")

    def capture(block: VisualPromptBlock, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        patches = hidden_states[:, block.num_prefix_tokens :]
        if mode == "sample":
            candidates = patches.reshape(-1, patches.shape[-1])
        else:
            candidates = window_pool(patches.float(), config.num_prompts, mode).reshape(-1, patches.shape[-1])
        reservoirs[id(block)].offer(candidates)

    return capture
