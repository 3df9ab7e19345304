# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The cost targets of the prompt methods (issue #17) and how a measured ratio is read against them.

benchmarks/cost.py writes, per method, the median of the per-round ratios to the floor and their quartiles;
benchmarks/report.py and the cost page read them here, so both pages give the same verdict.
"""

from __future__ import annotations

from typing import Any, Optional

# training step / floor: GPT and CDC from issue #17, the methods built on VPT since 2023 from issue #34
TRAIN_TARGETS = {"gpt": 1.10, "cdc": 1.20, "vfpt": 1.15, "vapt": 1.15, "e2vpt": 1.15}
INFERENCE_TARGET = 1.05  # inference / floor, for GPT and CDC
INFERENCE_TARGETS = {"vfpt": 1.10, "vapt": 1.10, "e2vpt": 1.10}  # the newer methods' own inference targets
NAMES = {"vfpt": "VFPT", "vapt": "VAPT", "e2vpt": "E²VPT"}


def target(method: str, key: str) -> Optional[float]:
    """The target of `method`'s "train" or "infer" ratio, None for the references (LoRA, full fine-tuning, ...)."""
    if method not in TRAIN_TARGETS:
        return None
    return INFERENCE_TARGETS.get(method, INFERENCE_TARGET) if key == "infer" else TRAIN_TARGETS[method]


def targets_text(sign: str = "×") -> str:
    """The targets, as a sentence for the pages."""
    newer = list(INFERENCE_TARGETS)
    return (
        f"Targets: GPT training step ≤ {TRAIN_TARGETS['gpt']:.2f}{sign}, CDC ≤ {TRAIN_TARGETS['cdc']:.2f}{sign}, "
        f"inference ≤ {INFERENCE_TARGET:.2f}{sign}; {', '.join(NAMES[m] for m in newer)}: training step ≤ "
        f"{TRAIN_TARGETS[newer[0]]:.2f}{sign}, inference ≤ {INFERENCE_TARGETS[newer[0]]:.2f}{sign}."
    )


def verdict(result: dict[str, Any], key: str, limit: float) -> str:
    """How a ratio reads against `limit`. "met": the median ratio is within it; "noise": the median is above, but the
    lower quartile of the rounds is within (round-to-round spread can explain the miss); "missed": three quarters of
    the rounds are above. A record written before the quartiles were kept knows only met / missed."""
    if result[f"{key}_ratio_to_floor"] <= limit:
        return "met"
    quartiles = result.get(f"{key}_ratio_quartiles")
    return "noise" if quartiles is not None and quartiles[0] <= limit else "missed"


def ratio_text(result: dict[str, Any], key: str, unit: str = "") -> str:
    """'1.041 [1.02–1.06]': the median per-round ratio and its quartiles (the median alone in older records)."""
    quartiles = result.get(f"{key}_ratio_quartiles")
    spread = "" if quartiles is None else f" [{quartiles[0]:.2f}–{quartiles[1]:.2f}]"
    return f"{result[f'{key}_ratio_to_floor']:.3f}{unit}{spread}"
