# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Configuration of Gated Prompt Tuning (Yoo et al., ICML 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..prompting.prompt_config import PromptConfigBase, check_bool, check_finite, check_temperature_range
from ..prompting.registration import peft_type

GATED_PROMPT = peft_type("GATED_PROMPT")


@dataclass
class GatedPromptConfig(PromptConfigBase):
    """Gated Prompt Tuning: VPT-shallow prompts, a learnable gate per block on the prompt update, and a learnable
    attention temperature per block.

    With `use_gates=False, learn_temperature=False` this is exactly VPT-shallow. Prompts are inserted at the first
    block of `layers_to_transform` (default: block 0), which reproduces the "insert from block k" sweep of the paper.

    Args:
        gate_init: The gate prior. Gate logits start at `-gate_init`, so the gates start at sigmoid(-gate_init)
            (paper's common value 5 gives 0.0067: prompts start almost untouched by the blocks).
        use_gates: Learn one gate per prompted block except the last. Off: every block updates the prompts fully.
        learn_temperature: Learn one attention temperature per prompted block (softmax(QK^T / (sqrt(d) * tau))).
        temperature_range: Temperatures are projected onto this range: the forward uses the clamped value, and each
            optimizer step that updates one clamps it in place (projected gradient descent).
        (and the fields of `PromptConfigBase`: num_prompts, prompt_dropout, prompt_init, layers_to_transform,
        modules_to_save.)
    """

    gate_init: float = field(default=5.0, metadata={"help": "Gate prior: gate logits start at -gate_init."})
    use_gates: bool = field(default=True, metadata={"help": "Learn a gate per block on the prompt update."})
    learn_temperature: bool = field(default=True, metadata={"help": "Learn an attention temperature per block."})
    temperature_range: tuple[float, float] = field(
        default=(0.01, 10.0),
        metadata={"help": "Projection range of the temperatures (clamped after each optimizer step)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = GATED_PROMPT
        self.gate_init = check_finite(self.gate_init, "gate_init")
        self.temperature_range = check_temperature_range(self.temperature_range)
        self.use_gates = check_bool(self.use_gates, "use_gates")
        self.learn_temperature = check_bool(self.learn_temperature, "learn_temperature")

    def value_bound(self, parameter: str) -> float:
        if parameter == "gpt_temperatures":
            return self.temperature_range[1]
        return super().value_bound(parameter)

    def saved_values_problem(self, bounds: Mapping[str, tuple[float, float]]) -> Optional[str]:
        # Saves project the temperatures into their range first, so a value outside it (or <= 0) means the file was
        # not written by save_pretrained; in float32, where the stored range ends are rounded.
        low, high = (float(torch.tensor(v, dtype=torch.float32)) for v in self.temperature_range)
        for name, (smallest, largest) in bounds.items():
            if name.rsplit(".", 1)[-1] == "gpt_temperatures" and not (low <= smallest and largest <= high):
                value = smallest if smallest < low else largest
                return (
                    f"`{name}` is {value:g}, outside `temperature_range` {tuple(self.temperature_range)} of "
                    "adapter_config.json (an attention temperature must lie in it, and be positive)"
                )
        return super().saved_values_problem(bounds)

    def mixed_batch_layout(self, depth: int) -> tuple:
        return (*super().mixed_batch_layout(depth), self.use_gates, self.learn_temperature)
