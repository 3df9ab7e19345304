# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Configuration of E²VPT's key-value prompts (Han et al., "E²VPT: An Effective and Efficient Approach for Visual
Prompt Tuning", ICCV 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..prompting.prompt_config import MAX_NUM_PROMPTS, ConfigError, PromptConfigBase, check_bool
from ..prompting.registration import peft_type
from ..values import is_int

KEY_VALUE_PROMPT = peft_type("KEY_VALUE_PROMPT")


@dataclass
class KeyValuePromptConfig(PromptConfigBase):
    """E²VPT's effective prompting: VPT-deep visual prompts in the sequence, plus `num_key_value_prompts` learned rows
    appended to the keys and values of every prompted block's attention (docs/methods.md §7).

    The key-value prompts live in the projected space (they do not pass through the block's LayerNorm or its key /
    value projections); each head attends to its own slice of them. They add keys and values but no output rows, and
    attention stays the backbone's own (SDPA, flash or eager). ``num_key_value_prompts=0`` is exactly VPT-deep.

    Args:
        num_key_value_prompts: m, the key-value rows per block (the paper's default 5; 0: none).
        share_key_value: One tensor serves as both the key and the value prompts (the official code's default, in
            every documented run); False learns separate key and value prompts (the paper's notation, UNVERIFIED
            which is intended).
        (and the fields of `PromptConfigBase`: num_prompts (the visual prompts p), prompt_dropout (on the visual
        prompts only), prompt_init, layers_to_transform, modules_to_save.)

    Not built: the optional pruning and rewinding of the visual prompts (every documented reproduction run of the
    official code switches it off).
    """

    num_key_value_prompts: int = field(default=5, metadata={"help": "Key-value prompt rows m per block (0: none)."})
    share_key_value: bool = field(
        default=True, metadata={"help": "One tensor for the key and the value prompts (the code's default)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = KEY_VALUE_PROMPT
        if not (is_int(self.num_key_value_prompts) and 0 <= self.num_key_value_prompts <= MAX_NUM_PROMPTS):
            raise ConfigError(
                f"`num_key_value_prompts` must be an integer in [0, {MAX_NUM_PROMPTS}]; "
                f"got {self.num_key_value_prompts!r}."
            )
        self.share_key_value = check_bool(self.share_key_value, "share_key_value")

    def mixed_batch_layout(self, depth: int) -> tuple:
        return (*super().mixed_batch_layout(depth), self.num_key_value_prompts, self.share_key_value)
