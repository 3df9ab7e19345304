# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT tuner of Gated Prompt Tuning."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..vit.backbones import PromptSite, UnsupportedModelError
from ..vpt.model import VisualPromptModel
from .config import GatedPromptConfig
from .layer import GatedPromptBlock


class GatedPromptModel(VisualPromptModel):
    """Injects Gated Prompt Tuning into a Hugging Face ViT. Use through `peft.get_peft_model` with a
    `GatedPromptConfig`; see that class for the method."""

    prefix: str = "gpt_"
    tuner_layer_cls = GatedPromptBlock

    def _check_config_for_site(self, peft_config: GatedPromptConfig, site: PromptSite) -> None:
        if peft_config.learn_temperature:
            block = self.model.get_submodule(site.block_names[0])
            if site.family.attention.query_projection(block) is None:
                layout = site.family.attention
                transformed = layout.transformed_qk(block)
                why = (
                    f"its queries are transformed by `{transformed}` after the projection (a temperature on the "
                    "projection would be normalised away)"
                    if transformed
                    else f"it has none (looked for {layout.query_names + layout.fused_qkv_names})"
                )
                raise UnsupportedModelError(
                    "`learn_temperature=True` scales the attention query projection of each block, and "
                    f"{type(block).__name__} cannot take it: {why}. Set `learn_temperature=False` for this model."
                )

    def _block_options(self, block: nn.Module, site: PromptSite) -> dict[str, Any]:
        return {"query_projection": site.family.attention.query_projection(block)}
