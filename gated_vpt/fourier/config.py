# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Configuration of Visual Fourier Prompt Tuning (Zeng, Han et al., NeurIPS 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..prompting.prompt_config import ConfigError, PromptConfigBase
from ..prompting.registration import peft_type
from ..values import is_real

FOURIER_PROMPT = peft_type("FOURIER_PROMPT")


@dataclass
class FourierPromptConfig(PromptConfigBase):
    """VFPT: VPT-deep in which, at every prompted block, the first ``m = floor(fourier_fraction * num_prompts)``
    prompts are replaced by the real part of their 2-D discrete Fourier transform (over the prompt and the hidden
    axis, unnormalised), computed on the fly from the learned prompts (docs/methods.md §5).

    No parameters beyond VPT-deep's; ``fourier_fraction=0`` is exactly VPT-deep. Prompt dropout acts before the
    transform; the transform runs in float32 whatever the autocast or backbone dtype (bf16 / fp16 FFTs are not
    available for every length). The Fourier prompts come first, right after the prefix tokens.

    Args:
        fourier_fraction: alpha in [0, 1], the fraction of each block's prompts that are Fourier prompts (the paper's
            grid: 0, 0.3, 0.5, 0.7, 1.0; default 0.5 as in its code).
        (and the fields of `PromptConfigBase`: num_prompts, prompt_dropout, prompt_init, layers_to_transform,
        modules_to_save.)
    """

    fourier_fraction: float = field(
        default=0.5, metadata={"help": "Fraction alpha of each block's prompts replaced by Re(FFT2) of themselves."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = FOURIER_PROMPT
        if not (is_real(self.fourier_fraction) and 0.0 <= self.fourier_fraction <= 1.0):
            raise ConfigError(f"`fourier_fraction` must be a number in [0, 1]; got {self.fourier_fraction!r}.")
        self.fourier_fraction = float(self.fourier_fraction)

    @property
    def num_fourier_prompts(self) -> int:
        """m = floor(alpha * num_prompts), robust to float round-off (0.3 * 10 is 3)."""
        return int(self.fourier_fraction * self.num_prompts + 1e-9)

    def mixed_batch_layout(self, depth: int) -> tuple:
        return (*super().mixed_batch_layout(depth), self.num_fourier_prompts)
