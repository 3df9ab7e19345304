# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The prompt machinery every method shares.

Owns: `prompt_config` (`PromptConfigBase` and its value checks), `prompt_layer` (`PromptBlock`, the fixed steps of a
prompted block), `prompt_tuner` (`PromptTuner`, the PEFT `BaseTuner` that resolves, wraps and keeps outputs
prompt-free), `routing` and `mixed_batch` (batches mixing adapters), `registration` (PEFT types), `presets` (method
names -> configs) and `diagnostics` (per-block reports of whatever scalars a method learns).

May import: `gated_vpt.vit`, `gated_vpt.messages`, this folder, and from `gated_vpt.io` only the two checks the tuner
runs where tensors land (`io.compare`, `io.landing`). Never a method folder: methods build on this, not the reverse.
"""
