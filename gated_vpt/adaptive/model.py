# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT tuner of Visual Adaptive Prompt Tuning."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..vit.backbones import PromptSite, UnsupportedModelError
from ..vpt.model import VisualPromptModel
from .config import AdaptivePromptConfig
from .layer import AdaptivePromptBlock


class AdaptivePromptModel(VisualPromptModel):
    """Injects VAPT into a ViT. Use through `peft.get_peft_model` with an `AdaptivePromptConfig`; see that class."""

    prefix: str = "vapt_"
    tuner_layer_cls = AdaptivePromptBlock

    def _check_config_for_site(self, peft_config: AdaptivePromptConfig, site: PromptSite) -> None:
        grid = peft_config.patch_grid or site.patch_grid
        if site.patch_grid is None:
            raise UnsupportedModelError(
                f"VAPT generates prompts with a convolution over the patch grid, and this {site.family.name} backbone "
                "has no known grid (its patches are not an H x W raster of one image, or its config has no "
                "`image_size`). Use another prompt method for this model."
            )
        if peft_config.kernel_size > min(grid):
            raise UnsupportedModelError(
                f"`kernel_size` {peft_config.kernel_size} is larger than the {grid[0]} x {grid[1]} patch grid; "
                f"choose a kernel_size of at most {min(grid)}."
            )

    def _block_options(self, block: nn.Module, site: PromptSite) -> dict[str, Any]:
        return {"patch_grid": site.patch_grid}

    def _create_and_replace(
        self,
        peft_config: AdaptivePromptConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        super()._create_and_replace(peft_config, adapter_name, target, target_name, parent, current_key, **kwargs)
        # Blocks are wrapped in order, so the adapter's first prompted block (which holds the shared projector) exists
        # by the time a later block is: point every block of the adapter at it.
        first, _ = peft_config.prompted_range(self.prompt_site.depth)
        owner = self.model.get_submodule(self.prompt_site.block_names[first])
        self.model.get_submodule(current_key).projector_owner[adapter_name] = owner
