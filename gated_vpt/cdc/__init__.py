# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""CDC prompt tuning: our reconstruction of iVPT's cross-layer dynamic connection, dynamic aggregation and attentive
reinforcement (Zhou, Chen, Huang, arXiv 2404.05207) on deep visual prompts: config, block wrapper and tuner."""

from .config import CDCPromptConfig
from .layer import CDCPromptBlock
from .model import CDCPromptModel

__all__ = ["CDCPromptBlock", "CDCPromptConfig", "CDCPromptModel"]
