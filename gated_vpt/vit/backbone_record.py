# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The record of the backbone an adapter was trained for: its one owner.

`get_peft_model` writes it into the config's `backbone` field (`record_for`), the file loader and the config check
its schema (`backbone_record_problem`), loading refuses an adapter whose record differs from the model
(`check_backbone_record`), and the model card describes it (`describe_record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Protocol

from ..messages import short_repr
from ..values import is_int

# The record `backbone` holds (written at injection, see `PromptSite.signature`): every key, and its kind.
BACKBONE_FIELDS = {
    "model_type": str,
    "hidden_size": int,
    "num_hidden_layers": int,
    "patch_size": int,
    "num_prefix_tokens": int,
    "prompted_blocks": list,
}


class IncompatibleBackboneError(ValueError):
    """An adapter was saved for a different backbone than the one it is being loaded onto."""


class BackboneFacts(Protocol):
    """What the record is made of (`gated_vpt.vit.backbones.PromptSite` provides it)."""

    model_type: str
    hidden_size: int
    depth: int
    patch_size: int
    num_prefix_tokens: int


def record_for(site: BackboneFacts, prompted_blocks: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """The record of `site`, with the first and last prompted block when given."""
    record = {
        "model_type": site.model_type,
        "hidden_size": site.hidden_size,
        "num_hidden_layers": site.depth,
        "patch_size": site.patch_size,
        "num_prefix_tokens": site.num_prefix_tokens,
    }
    if prompted_blocks is not None:
        record["prompted_blocks"] = list(prompted_blocks)
    return record


def backbone_record_problem(backbone: Any) -> Optional[str]:
    """What is wrong with a `backbone` record (None when it is complete and well typed)."""
    if not isinstance(backbone, dict):
        return f"`backbone` must be an object; got {short_repr(backbone)}"
    unknown = sorted(str(k) for k in set(backbone) - set(BACKBONE_FIELDS))
    if unknown:
        return f"`backbone` holds unknown keys {short_repr(unknown)} (it records exactly {sorted(BACKBONE_FIELDS)})"
    missing = sorted(set(BACKBONE_FIELDS) - set(backbone))
    if missing:
        return f"`backbone` lacks {missing}"
    for key, kind in BACKBONE_FIELDS.items():
        value = backbone[key]
        if kind is int:
            ok = is_int(value) and value >= 0
        elif kind is list:
            ok = (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and all(is_int(v) and v >= 0 for v in value)
                and value[0] <= value[1]
            )
        else:
            ok = isinstance(value, str)
        if not ok:
            return f"`backbone.{key}` has an invalid value {short_repr(value)}"
    return None


def check_backbone_record(
    saved: Optional[dict], site: BackboneFacts, prompted_blocks: Optional[list[int]] = None
) -> None:
    """Refuse an adapter whose recorded backbone differs from `site` (before any weight is touched). With
    `prompted_blocks`, the record's prompted blocks must be those too."""
    if not saved:
        return
    current = record_for(site, prompted_blocks)
    mismatched = {k: (saved[k], current[k]) for k in current if k in saved and saved[k] != current[k]}
    if mismatched:
        details = ", ".join(
            f"{k}: adapter {short_repr(a)} vs model {short_repr(b)}" for k, (a, b) in mismatched.items()
        )
        raise IncompatibleBackboneError(
            f"This adapter was trained for a different backbone ({details}). Saved for {saved}; this model is "
            f"{record_for(site)}. Load it onto the backbone it was trained with (see `base_model_name_or_path` in "
            "adapter_config.json)."
        )


def describe_record(record: Optional[dict]) -> str:
    """One phrase for the model card, e.g. "prompted blocks 0–11 of a `dinov2` backbone (width 384, 12 blocks)"."""
    record = record or {}
    first, last = record.get("prompted_blocks", ["?", "?"])
    return (
        f"prompted blocks {first}–{last} of a `{record.get('model_type', '?')}` backbone "
        f"(width {record.get('hidden_size', '?')}, {record.get('num_hidden_layers', '?')} blocks)"
    )
