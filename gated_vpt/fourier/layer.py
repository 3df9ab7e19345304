# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The VFPT block: VPT-deep's block whose first m prompts go through a fixed 2-D Fourier transform.

For block l with prompts P_l in R^{N_p x D} (after prompt dropout), the prompts it inserts are
``[Re(FFT2(P_l[:m])) ; P_l[m:]]``. The transform is a fixed linear map, so the gradient reaches P_l through it; the
parameters stay in the spatial domain. It runs in float32 with autocast off: a bf16 / fp16 FFT is not available for
every length (CUDA's half-precision FFT needs powers of two), and the values it produces are sums over m * D entries.
"""

from __future__ import annotations

import torch

from ..prompting.prompt_layer import BlockRole
from ..vpt.layer import VisualPromptBlock
from .config import FourierPromptConfig


def fourier_prompts(prompts: torch.Tensor, count: int) -> torch.Tensor:
    """`prompts` (`[..., N_p, D]`) with its first `count` rows replaced by the real part of their unnormalised 2-D
    DFT over the last two axes, computed in float32 at least; returned in `prompts`' dtype."""
    if count == 0:
        return prompts
    head, tail = prompts[..., :count, :], prompts[..., count:, :]
    precise = head if head.dtype in (torch.float32, torch.float64) else head.float()
    with torch.autocast(device_type=prompts.device.type, enabled=False):
        transformed = torch.fft.fft2(precise, dim=(-2, -1)).real.to(prompts.dtype)
    return torch.cat((transformed, tail), dim=-2)


class FourierPromptBlock(VisualPromptBlock):
    """One prompted block of VFPT (deep prompts, a Fourier part in front)."""

    prompt_parameter_name = "vfpt_prompts"
    adapter_layer_names = ("vfpt_prompts",)

    def deep_prompts(self, config: FourierPromptConfig) -> bool:
        return True

    def own_prompts(self, adapter: str, role: BlockRole, hidden_states: torch.Tensor) -> torch.Tensor:
        # dropout first (inside `prompt_tokens`), then the transform, as the method defines it
        prompts = super().own_prompts(adapter, role, hidden_states)
        return fourier_prompts(prompts, role.config.num_fourier_prompts)
