# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""What an adapter learned, per block: gates, selection ratios, temperatures (and each method's own scalars).

GPT's prompts entering the last block are a convex mix of every gated block's prompt output (docs/methods.md §2
item 6): Z = sum_l g~_l * Block_l(X)_P + prod_j (1 - g_j) * P, with g~_l = g_l * prod_{j > l} (1 - g_j). The *selection
ratio* of block l is g~_l normalised over the gated blocks: it says which blocks the task used.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torch import nn

from .prompt_layer import PromptBlock


def _prompt_blocks(model: nn.Module) -> list[PromptBlock]:
    return [m for m in model.modules() if isinstance(m, PromptBlock)]


def gate_report(model: nn.Module, adapter_name: Optional[str] = None) -> list[dict[str, Any]]:
    """One dict per prompted block of `adapter_name` (default: the active adapter), in block order, with `block`
    (index in the stack), the method's scalars (GPT: `gate`, `temperature`) and, where there are gates,
    `selection_ratio`. Works on a `PeftModel` or on the tuned base model."""
    blocks = _prompt_blocks(model)
    if not blocks:
        raise ValueError("No gated-vpt prompt blocks found: pass a model returned by `get_peft_model` with our config.")
    if adapter_name is None:
        active = blocks[0].active_adapters
        if not active:
            raise ValueError("The model has no active adapter; pass `adapter_name`.")
        adapter_name = active[0]
    rows = []
    for block in blocks:
        role = block.prompt_roles.get(adapter_name)
        if role is not None:
            rows.append({"block": role.index, **block.block_report(adapter_name)})
    if not rows:
        raise ValueError(f"Adapter {adapter_name!r} prompts no block of this model.")
    rows.sort(key=lambda row: row["block"])

    gated = [row for row in rows if "gate" in row]
    if gated:
        # g~_l = g_l * prod_{j > l} (1 - g_j), accumulated from the last gated block backwards
        keep_after = 1.0
        for row in reversed(gated):
            row["contribution"] = row["gate"] * keep_after
            keep_after *= 1.0 - row["gate"]
        total = sum(row["contribution"] for row in gated)
        for row in gated:
            row["selection_ratio"] = row["contribution"] / total if total > 0 else 0.0
        for row in rows:
            row.pop("contribution", None)
    return rows


# Gates whose logit moved less than this from the prior's have not learned anything yet: their selection ratios
# only reflect the prior (equal gates favour the later blocks slightly), so no block is named.
UNMOVED_LOGIT_TOLERANCE = 1e-2


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return math.log(p / (1.0 - p))


def summarize_gate_report(report: list[dict[str, Any]], mass: float = 0.6) -> str:
    """A one-line reading, e.g. "this task mostly used blocks 9-11 (62% of the selection)", or that the gates are
    still at their prior (an untrained adapter, or too short a training) and name no block."""
    gated = [row for row in report if "selection_ratio" in row]
    if not gated:
        return "no gates to read (VPT-style adapter)"
    priors = [row.get("gate_prior") for row in gated]
    if all(p is not None for p in priors) and all(
        abs(_logit(row["gate"]) - _logit(p)) < UNMOVED_LOGIT_TOLERANCE for row, p in zip(gated, priors, strict=True)
    ):
        prior = priors[0] if len(set(priors)) == 1 else None
        at = f" ({prior:.4g})" if prior is not None else ""
        return f"the gates have not moved from their prior{at}: they say nothing yet about which blocks this task uses"
    # the smallest contiguous window of blocks holding at least `mass` of the selection
    best = None
    for i in range(len(gated)):
        total = 0.0
        for j in range(i, len(gated)):
            total += gated[j]["selection_ratio"]
            if total >= mass:
                if best is None or (j - i) < (best[1] - best[0]):
                    best = (i, j, total)
                break
    first, last, share = gated[best[0]]["block"], gated[best[1]]["block"], best[2]
    where = f"block {first}" if first == last else f"blocks {first}-{last}"
    return f"this task mostly used {where} ({share:.0%} of the selection)"


def plot_gate_report(report: list[dict[str, Any]], path: str, title: str = "Learned gates") -> str:
    """Write a PNG with the per-block gate and selection ratio (and temperature when present). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_gate_report needs matplotlib: pip install matplotlib (or gated-vpt[examples])."
        ) from error

    blocks = [row["block"] for row in report]
    has_temp = any("temperature" in row for row in report)
    fig, axes = plt.subplots(1, 2 if has_temp else 1, figsize=(10 if has_temp else 6, 3.5), squeeze=False)
    ax = axes[0][0]
    gated = [row for row in report if "gate" in row]
    ax.bar([r["block"] - 0.2 for r in gated], [r["gate"] for r in gated], width=0.4, label="gate g_l")
    ax.bar(
        [r["block"] + 0.2 for r in gated],
        [r.get("selection_ratio", 0.0) for r in gated],
        width=0.4,
        label="selection ratio",
    )
    ax.set_xlabel("block")
    ax.set_xticks(blocks)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    if has_temp:
        ax = axes[0][1]
        ax.plot(blocks, [row.get("temperature", float("nan")) for row in report], marker="o")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("block")
        ax.set_xticks(blocks)
        ax.set_title("attention temperature tau_l")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
