# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT tuner of CDC prompt tuning (our reconstruction of iVPT)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..vit.backbones import PromptSite, UnsupportedModelError
from ..vpt.model import VisualPromptModel
from .config import CDCPromptConfig
from .layer import CDCPromptBlock


class CDCPromptModel(VisualPromptModel):
    """Injects CDC prompt tuning into a Hugging Face ViT. Use through `peft.get_peft_model` with a `CDCPromptConfig`;
    see that class for the method."""

    prefix: str = "cdc_"
    tuner_layer_cls = CDCPromptBlock

    def _check_config_for_site(self, peft_config: CDCPromptConfig, site: PromptSite) -> None:
        if peft_config.reinforce_final_block is None:
            # on a copy of the user's config (see `PromptTuner.inject_adapter`); saved with the adapter
            peft_config.reinforce_final_block = not site.head_reads_only_prefix_tokens(self.model)
        if not peft_config.attentive_reinforcement:
            return
        if site.cls_token_index is None:
            raise UnsupportedModelError(
                "`attentive_reinforcement=True` ranks patch tokens by the CLS token's attention, and this "
                f"{site.family.name} backbone (model_type {site.model_type!r}) has no CLS token. Set "
                "`attentive_reinforcement=False` for this model (cross-layer connection and dynamic aggregation "
                "still work)."
            )
        first, last = peft_config.prompted_range(site.depth)
        for name in site.block_names[first : last + 1]:
            block = self.model.get_submodule(name)
            inner = block.base_layer if isinstance(block, CDCPromptBlock) else block
            layout = site.family.attention
            if layout.parts(inner) is None:
                raise UnsupportedModelError(
                    "`attentive_reinforcement=True` reads each block's attention query / key projections (named "
                    f"{layout.query_names} / {layout.key_names}, children of one attention module, or one fused "
                    f"{layout.fused_qkv_names}, untransformed after the projection) and its head size "
                    f"(attributes {layout.head_size_attributes} or a head count in {layout.head_count_attributes}), "
                    f"and {type(block).__name__} ({name}) does not expose them. Set `attentive_reinforcement=False` "
                    "for this model, or give its family an `AttentionLayout` with the right names."
                )

    def _block_options(self, block: nn.Module, site: PromptSite) -> dict[str, Any]:
        return {
            "cls_index": site.cls_token_index,
            # Called before the block is replaced: the stack still holds it.
            "final_block": self.model.get_submodule(site.stack_name)[site.depth - 1] is block,
            "attention": site.family.attention,
        }
