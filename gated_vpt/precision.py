# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Which compute precision and attention kernel run fast on a device.

The example's ``--precision auto`` and ``--attn-implementation auto`` are these two functions, and the benchmarks time
with them, so a speed claim and a user's run make the same choice. Nothing here changes a setting: they only answer.
"""

from __future__ import annotations

import pathlib

import torch

__all__ = ["has_native_bf16", "fast_attention_implementation"]


def has_native_bf16(device_type: str = "cpu") -> bool:
    """Whether `device_type` ("cpu" or "cuda") computes bf16 natively, i.e. faster than fp32.

    A CUDA GPU with bf16 units (Ampere and later; torch would also count the emulation of older ones); a CPU where torch
    runs its AVX512 kernels and the CPU has AVX512-BF16 or AMX. Elsewhere bf16 is emulated through fp32 and slower
    than fp32 itself (measured on an AVX2-only AMD EPYC: docs/benchmarks_cost_epyc_avx2.md).
    """
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch without the keyword
            return torch.cuda.is_bf16_supported()
    if device_type != "cpu" or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def fast_attention_implementation(device_type: str, precision: str) -> str:
    """transformers' `attn_implementation` that trains fastest: "eager" for bf16 on a CPU, else "sdpa".

    torch's CPU flash-attention kernel (what SDPA picks on a CPU) is slow in bf16 *backward*: on a 2-core AVX512-BF16
    machine it took 5x longer than in fp32 and ate the whole bf16 gain of the matmuls, whereas the eager path (two
    bf16 matmuls and a softmax) runs at matmul speed; its attention maps are small at ViT sequence lengths.
    benchmarks/cost.py measures both.
    """
    return "eager" if device_type == "cpu" and precision == "bf16" else "sdpa"


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is no such file."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
