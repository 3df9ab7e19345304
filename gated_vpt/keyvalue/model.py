# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT tuner of E²VPT's key-value prompts."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..vit.attention import KeyValueParts
from ..vit.backbones import PromptSite, UnsupportedModelError
from ..vpt.model import VisualPromptModel
from .config import KeyValuePromptConfig
from .layer import KeyValuePromptBlock


class KeyValuePromptModel(VisualPromptModel):
    """Injects E²VPT into a ViT. Use through `peft.get_peft_model` with a `KeyValuePromptConfig`; see that class."""

    prefix: str = "e2vpt_"
    tuner_layer_cls = KeyValuePromptBlock

    def _check_config_for_site(self, peft_config: KeyValuePromptConfig, site: PromptSite) -> None:
        if peft_config.num_key_value_prompts == 0:
            return
        if site.family.block_arguments is not None:
            raise UnsupportedModelError(
                f"E²VPT's key-value prompts extend each block's attention keys and values, and {site.family.name}'s "
                "attention derives per-token positions (its rotary embedding) from the token count, which has no "
                "position for them. Set `num_key_value_prompts=0` (VPT-deep) or use another prompt method."
            )
        first, last = peft_config.prompted_range(site.depth)
        for name in site.block_names[first : last + 1]:
            block = self.model.get_submodule(name)
            inner = block.base_layer if isinstance(block, KeyValuePromptBlock) else block
            parts = site.family.attention.key_value_parts(inner)
            if not isinstance(parts, KeyValueParts):
                raise UnsupportedModelError(
                    f"E²VPT's key-value prompts extend each block's attention keys and values, and the attention of "
                    f"{site.family.name} ({name}) cannot take them: {parts}. Set `num_key_value_prompts=0` (VPT-deep) "
                    "or use another prompt method for this model."
                )

    def _block_options(self, block: nn.Module, site: PromptSite) -> dict[str, Any]:
        parts = site.family.attention.key_value_parts(block)
        return {
            "key_value_parts": parts if isinstance(parts, KeyValueParts) else None,
            "attention": site.family.attention,
        }
