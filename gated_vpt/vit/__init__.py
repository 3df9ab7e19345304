# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""What a ViT looks like: the registry of backbone families and everything read off a model's structure.

Owns: `family` (the `BackboneFamily` record), `families` (the built-in Hugging Face records), `timm_families` (the
timm records, matched by class name so timm is never imported here), `backbones` (`find_prompt_site`: the block
stack of a model, custom families), `attention` (`AttentionLayout`: where the query / key live, separate or fused),
`tokens` (where prompts sit in the sequence) and `backbone_record` (the record of the backbone an adapter was
trained for).

May import: `gated_vpt.messages` and this folder. Nothing here knows about prompt methods, PEFT or files.
"""
