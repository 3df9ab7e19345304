# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT tuner of Visual Prompt Tuning, the base of the other methods' tuners."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..prompting.prompt_tuner import PromptTuner
from ..vit.backbones import PromptSite
from .layer import VisualPromptBlock


class VisualPromptModel(PromptTuner):
    """Injects VPT (shallow or deep) into a ViT. Use through `peft.get_peft_model` with a `VisualPromptConfig`; see
    that class for the method."""

    prefix: str = "vpt_"
    tuner_layer_cls = VisualPromptBlock

    def _new_block(self, block: nn.Module, site: PromptSite) -> VisualPromptBlock:
        return self.tuner_layer_cls(
            block,
            num_prefix_tokens=site.num_prefix_tokens,
            hidden_size=site.hidden_size,
            patch_size=site.patch_size,
            **self._block_options(block, site),
        )

    def _block_options(self, block: nn.Module, site: PromptSite) -> dict[str, Any]:
        """What a method's block wrapper needs of the backbone beyond the site's facts (its `__init__` keywords)."""
        return {}
