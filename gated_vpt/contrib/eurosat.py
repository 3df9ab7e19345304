# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The VTAB-1k-style EuroSAT subset that ships with gated-vpt (``eurosat_vtab1k.npz`` beside this module, 7.3 MB).

Real images for machines that cannot download a dataset: the default data of ``examples/image_classification.py``,
of the tests and of the benchmarks. 10 classes, 64x64 RGB JPEGs byte for byte from EuroSAT (MIT licence): 800 train
and 200 val images (from EuroSAT's train split), 1,000 test images (from its test split), class-balanced. VTAB-1k
chooses hyper-parameters training on ``train`` and evaluating on ``val``, then trains on ``trainval`` (all 1,000) and
reports on ``test``. How it was sampled and its checksum: ``examples/data/README.md``.
"""

from __future__ import annotations

import io
import itertools
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np

DATA_FILE = pathlib.Path(__file__).resolve().with_name("eurosat_vtab1k.npz")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # the npz's `split` array
SPLITS = {"train": (0,), "val": (1,), "trainval": (0, 1), "test": (2,)}

__all__ = ["DATA_FILE", "Split", "eurosat_vtab1k", "load_eurosat_vtab1k"]


class Split(NamedTuple):
    """One split: ``images`` uint8 ``[N, 64, 64, 3]`` RGB, ``labels`` int64 ``[N]``, and the class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


def _read(path: str | os.PathLike[str] | None) -> dict[str, np.ndarray]:
    with np.load(DATA_FILE if path is None else path, allow_pickle=False) as data:
        return {key: data[key] for key in ("jpeg", "offsets", "labels", "split", "class_names")}


def load_eurosat_vtab1k(path: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """The ``train`` (800), ``val`` (200), ``trainval`` (1,000) and ``test`` (1,000) splits, decoded to arrays
    (needs Pillow)."""
    from PIL import Image

    data = _read(path)
    images = np.stack(
        [
            np.asarray(Image.open(io.BytesIO(data["jpeg"][start:end].tobytes())).convert("RGB"))
            for start, end in itertools.pairwise(data["offsets"])
        ]
    )
    names = tuple(str(name) for name in data["class_names"])
    return {
        split: Split(images[np.isin(data["split"], codes)], data["labels"][np.isin(data["split"], codes)], names)
        for split, codes in SPLITS.items()
    }


def eurosat_vtab1k(path: str | os.PathLike[str] | None = None) -> Any:
    """The same four splits as a ``datasets.DatasetDict`` with columns ``image`` (the original JPEG bytes, decoded by
    ``datasets`` when read) and ``label`` (a ``ClassLabel``); needs ``datasets`` (the ``examples`` extra)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    data = _read(path)
    jpeg, offsets = data["jpeg"], data["offsets"]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(n) for n in data["class_names"]])})

    def split(codes: tuple[int, ...]) -> Dataset:
        index = np.flatnonzero(np.isin(data["split"], codes))
        images = [{"bytes": jpeg[offsets[i] : offsets[i + 1]].tobytes(), "path": None} for i in index]
        return Dataset.from_dict({"image": images, "label": data["labels"][index].tolist()}, features=features)

    return DatasetDict({name: split(codes) for name, codes in SPLITS.items()})
