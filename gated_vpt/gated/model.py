# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT tuner of Gated Prompt Tuning."""

from __future__ import annotations

from torch import nn

from ..backbones import PromptSite, UnsupportedModelError
from ..prompt_tuner import PromptTuner
from .config import GatedPromptConfig
from .layer import GatedPromptBlock


class GatedPromptModel(PromptTuner):
    """Injects Gated Prompt Tuning into a Hugging Face ViT. Use through `peft.get_peft_model` with a
    `GatedPromptConfig`; see that class for the method."""

    prefix: str = "gpt_"
    tuner_layer_cls = GatedPromptBlock

    def _check_config_for_site(self, peft_config: GatedPromptConfig, site: PromptSite) -> None:
        if peft_config.learn_temperature:
            block = self.model.get_submodule(site.block_names[0])
            if site.family.attention.query_projection(block) is None:
                raise UnsupportedModelError(
                    f"`learn_temperature=True` needs the attention query projection (`q_proj`) of each block, and "
                    f"{type(block).__name__} has none. Set `learn_temperature=False` for this model."
                )

    def _new_block(self, block: nn.Module, site: PromptSite) -> GatedPromptBlock:
        return GatedPromptBlock(
            block,
            num_prefix_tokens=site.num_prefix_tokens,
            hidden_size=site.hidden_size,
            patch_size=site.patch_size,
            query_projection=site.family.attention.query_projection(block),
        )
