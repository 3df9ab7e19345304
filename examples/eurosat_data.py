# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Load the bundled VTAB-1k-style EuroSAT subset (``data/eurosat_vtab1k.npz``) as decoded uint8 arrays.

Only NumPy and Pillow are needed, so examples run anywhere without a dataset download. See ``data/README.md`` for
what the subset holds and how it was sampled.
"""

from __future__ import annotations

import io
import itertools
import os
import pathlib
from typing import NamedTuple

import numpy as np
from PIL import Image

DEFAULT_PATH = pathlib.Path(__file__).resolve().parent / "data" / "eurosat_vtab1k.npz"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


class Split(NamedTuple):
    """One split: ``images`` uint8 ``[N, 64, 64, 3]`` RGB, ``labels`` int64 ``[N]``, and the class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


def load_eurosat_vtab1k(path: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """The ``train`` (800), ``val`` (200), ``trainval`` (all 1,000) and ``test`` (1,000) splits, decoded.

    VTAB-1k picks hyper-parameters on train/val, then retrains on ``trainval`` and reports on ``test``.
    """
    with np.load(DEFAULT_PATH if path is None else path, allow_pickle=False) as data:
        jpeg, offsets, labels, split = data["jpeg"], data["offsets"], data["labels"], data["split"]
        class_names = tuple(data["class_names"].tolist())
    images = np.stack(
        [
            np.asarray(Image.open(io.BytesIO(jpeg[start:end].tobytes())).convert("RGB"))
            for start, end in itertools.pairwise(offsets)
        ]
    )
    splits = {
        name: Split(images[split == code], labels[split == code], class_names) for name, code in SPLIT_CODES.items()
    }
    trainval = split != SPLIT_CODES["test"]
    splits["trainval"] = Split(images[trainval], labels[trainval], class_names)
    return splits
