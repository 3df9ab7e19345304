# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Configuration of Visual Prompt Tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..prompting.prompt_config import PromptConfigBase, check_bool
from ..prompting.registration import peft_type

VISUAL_PROMPT = peft_type("VISUAL_PROMPT")


@dataclass
class VisualPromptConfig(PromptConfigBase):
    """Visual Prompt Tuning: learned prompt tokens after the prefix tokens (CLS, distillation, registers).

    VPT-shallow (`deep=False`) inserts one set of prompts P at the first prompted block and lets the blocks update
    them like any other token. VPT-deep (`deep=True`, the default) gives every prompted block l its own prompts P_l:
    block l's input prompt slots are replaced by ``Dropout(P_l)``, discarding what the previous block wrote there.
    Prompts are removed after the last prompted block, so heads, pooling and recorded hidden states see the
    prompt-free sequence.

    This is the base every other prompt method builds on: GPT is VPT-shallow with gates and temperatures
    (`GatedPromptConfig(use_gates=False, learn_temperature=False)` equals `VisualPromptConfig(deep=False)` output for
    output under the same seed), CDC is VPT-deep with cross-layer connections and attentive reinforcement.

    Args:
        deep: Every prompted block owns its prompts (VPT-deep); False inserts prompts once (VPT-shallow).
        (and the fields of `PromptConfigBase`: num_prompts, prompt_dropout, prompt_init, layers_to_transform (the
        insertion block is its first entry), modules_to_save.)
    """

    deep: bool = field(default=True, metadata={"help": "VPT-deep: every prompted block owns its prompts."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = VISUAL_PROMPT
        self.deep = check_bool(self.deep, "deep")

    def mixed_batch_layout(self, depth: int) -> tuple:
        return (*super().mixed_batch_layout(depth), self.deep)
