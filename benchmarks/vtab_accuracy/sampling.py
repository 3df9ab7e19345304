# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The VTAB-1k subsets, sampled with the rule of examples/data/build_eurosat_subset.py.

Within each class the images are ranked by sha256(f"{seed}/{filename}") (seed ``SAMPLE_SEED``): the first 80 train,
the next 20 val, and the same rank picks a class-balanced test subset. ``image_folder`` writes a subset once as
folders of the original JPEG bytes (``val/{train,test}`` and ``test/{train,test}``), which the example's
``--dataset DIR`` loads. EuroSAT's bundled subset (``BUNDLED``) was sampled with the same rule and seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from typing import Optional

import numpy as np

from .protocol import BUNDLED, BUNDLED_TEST, SAMPLE_SEED, SOURCES, TRAIN_PER_CLASS, VAL_PER_CLASS, Settings


def data_name(dataset: str, test_images: Optional[int]) -> str:
    return f"{dataset}-vtab1k-seed{SAMPLE_SEED}-test{test_images or 'all'}"


def _source(dataset: str, test_images: Optional[int], shared: pathlib.Path) -> tuple[pathlib.Path, tuple, int]:
    # The bundled subset was sampled with the same rule and seed, so it gives the same images while it suffices.
    if dataset == "eurosat" and test_images is not None and test_images <= BUNDLED_TEST:
        return BUNDLED, (0, 1), 2
    name, train_codes, test_code = SOURCES[dataset]
    return shared / name, train_codes, test_code


def uses_shared(dataset: str, settings: Settings) -> bool:
    return _source(dataset, settings.test_images[dataset], pathlib.Path())[0] != BUNDLED


def image_folder(dataset: str, test_images: Optional[int], data_dir: pathlib.Path, shared: pathlib.Path):
    """`<folder>/val/{train,test}` (800 / the 200 val) and `<folder>/test/{train,test}` (1,000 / test), each
    `class_name/*.jpg` of the original JPEG bytes: what the example's `--dataset DIR` loads. Built once."""
    root = data_dir / data_name(dataset, test_images)
    if root.is_dir():
        return root
    source, train_codes, test_code = _source(dataset, test_images, shared)
    with np.load(source, allow_pickle=False) as data:
        jpeg, offsets, labels, filenames = data["jpeg"], data["offsets"], data["labels"], data["filenames"]
        picked = vtab1k_indices(labels, data["split"], filenames, train_codes, test_code, test_images)
        class_names = [str(c) for c in data["class_names"]]
    layout = {"val/train": picked["train"], "val/test": picked["val"],
              "test/train": np.sort(np.concatenate([picked["train"], picked["val"]])), "test/test": picked["test"]}
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub, indices in layout.items():
        for i in indices:
            path = tmp / sub / class_names[labels[i]] / pathlib.PurePosixPath(str(filenames[i])).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg[offsets[i] : offsets[i + 1]].tobytes())
    sampled = {k: [str(filenames[i]) for i in v] for k, v in picked.items()}
    record = {"source": str(source), "seed": SAMPLE_SEED, "rule": "examples/data/build_eurosat_subset.py", **sampled}
    (tmp / "sampled.json").write_text(json.dumps(record, indent=1) + "\n")
    try:
        tmp.rename(root)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[accuracy] wrote {root} ({', '.join(f'{k} {len(v)}' for k, v in layout.items())})", flush=True)
    return root


def vtab1k_indices(labels, split, filenames, train_codes: tuple, test_code: int, test_images) -> dict[str, np.ndarray]:
    """Source indices of the train (80 per class), val (20 per class) and test subsets, each in source order."""
    def rank(pool):
        return sorted(pool, key=lambda i: hashlib.sha256(f"{SAMPLE_SEED}/{filenames[i]}".encode()).hexdigest())

    classes = np.unique(labels)
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for c in classes:
        pool = rank(np.flatnonzero(np.isin(split, train_codes) & (labels == c)))
        test = np.flatnonzero((split == test_code) & (labels == c))
        parts["train"].append(pool[:TRAIN_PER_CLASS])
        parts["val"].append(pool[TRAIN_PER_CLASS : TRAIN_PER_CLASS + VAL_PER_CLASS])
        parts["test"].append(test if test_images is None else rank(test)[: test_images // len(classes)])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
