# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""gated_vpt.has_native_bf16 and gated_vpt.fast_attention_implementation: the choices behind the example's
`--precision auto` / `--attn-implementation auto` and the cost benchmark's."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

import gated_vpt
import gated_vpt.precision


@pytest.mark.parametrize(
    ("capability", "flags", "native"),
    [
        ("AVX512", {"avx512f", "avx512_bf16"}, True),  # Cooper Lake, Zen 4
        ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, True),  # Sapphire Rapids
        ("AVX512", {"avx512f"}, False),  # Skylake-X: AVX512 without bf16
        ("AVX2", {"avx2", "avx512_bf16"}, False),  # torch not running its AVX512 kernels
        ("DEFAULT", set(), False),
    ],
)
def test_a_cpu_has_native_bf16_only_with_avx512_kernels_and_bf16_units(capability, flags, native, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(gated_vpt.precision, "_cpu_flags", lambda: flags)
    assert gated_vpt.has_native_bf16("cpu") is native
    assert gated_vpt.has_native_bf16() is native  # the CPU is the default device


@pytest.mark.parametrize("native", [True, False])
def test_a_gpu_has_native_bf16_as_torch_says_without_emulation(native, monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kwargs: asked.append(kwargs) or native)
    assert gated_vpt.has_native_bf16("cuda") is native
    assert asked == [{"including_emulation": False}]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gated_vpt.has_native_bf16("cuda") is False and gated_vpt.has_native_bf16("mps") is False


@pytest.mark.parametrize(
    ("device", "precision", "expected"),
    [("cpu", "bf16", "eager"), ("cpu", "fp32", "sdpa"), ("cuda", "bf16", "sdpa"), ("cuda", "fp16", "sdpa")],
)
def test_eager_attention_only_for_bf16_on_a_cpu(device, precision, expected):
    assert gated_vpt.fast_attention_implementation(device, precision) == expected


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = gated_vpt.precision._cpu_flags()
    assert isinstance(flags, set)
    if pathlib.Path("/proc/cpuinfo").is_file() and os.uname().machine in ("x86_64", "AMD64"):
        assert "sse2" in flags
