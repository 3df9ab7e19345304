# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The file names of a saved adapter."""

from __future__ import annotations

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# Pickle-based weight files that PEFT / transformers fall back to; loading them runs arbitrary code from the file.
PICKLE_WEIGHTS_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.pkl")
