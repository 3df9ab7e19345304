# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""``--precision``: autocast only; the trained parameters and the optimizer state stay fp32.

``auto`` is bf16 where the device computes it natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX, where
torch runs its AVX512 kernels), else fp32.
"""

from __future__ import annotations

import contextlib
import pathlib

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "eager")


def resolve_precision(requested: str, device: str) -> str:
    """`--precision` for `device` ("cuda" or "cpu"): auto becomes bf16 where it is native, else fp32."""
    if requested == "auto":
        native = _cuda_has_native_bf16() if device == "cuda" else device == "cpu" and cpu_has_native_bf16()
        return "bf16" if native else "fp32"
    if requested == "fp16" and device != "cuda":
        # the Trainer (accelerate) only autocasts fp16 with loss scaling on an accelerator; on CPU it would run fp32
        raise SystemExit("--precision fp16 needs a CUDA GPU; on this machine use bf16 or fp32.")
    return requested


def resolve_attention(requested: str, device: str, precision: str) -> str:
    """`--attn-implementation` for this run: auto is eager for bf16 on a CPU, else sdpa.

    torch's CPU flash-attention kernel (what SDPA picks on a CPU) is slow in bf16 *backward*: on this project's 2-core
    AVX512-BF16 machine it took 5x longer than in fp32 and ate the whole bf16 gain of the matmuls, whereas the eager
    path (two bf16 matmuls and a softmax) runs at matmul speed. The attention maps it materialises are small at ViT
    sequence lengths (tokens x tokens per head). benchmarks/cost.py measures both.
    """
    if requested != "auto":
        return requested
    return "eager" if device == "cpu" and precision == "bf16" else "sdpa"


def cpu_has_native_bf16() -> bool:
    """Whether torch runs its AVX512 kernels on a CPU with bf16 arithmetic (AVX512-BF16 or AMX). Elsewhere bf16 is
    emulated through fp32 and slower than fp32 itself."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is no such file."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


def _cuda_has_native_bf16() -> bool:
    try:  # by default torch also counts bf16 emulated on pre-Ampere GPUs
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
