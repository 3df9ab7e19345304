# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The bundled EuroSAT VTAB-1k subset: loadable without pickle, class-balanced, decodable, and reproducible."""

from __future__ import annotations

import hashlib
import io
import itertools
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SUBSET = REPO / "gated_vpt" / "contrib" / "eurosat_vtab1k.npz"  # shipped in the package (package_data)
BUILD_SCRIPT = REPO / "examples" / "data" / "build_eurosat_subset.py"
SHARED_SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "eurosat_rgb_jpeg.npz"
EXPECTED = {0: 80, 1: 20, 2: 100}  # per class, for split codes train / val / test


@pytest.fixture(scope="module")
def subset() -> dict[str, np.ndarray]:
    with np.load(SUBSET, allow_pickle=False) as data:  # raises if any array needed pickle
        return {key: data[key] for key in data.files}


def test_layout_and_class_balance(subset: dict[str, np.ndarray]) -> None:
    assert sorted(subset) == ["class_names", "filenames", "jpeg", "labels", "offsets", "split"]
    assert subset["filenames"].dtype.kind == "U" and subset["class_names"].dtype.kind == "U"
    assert subset["jpeg"].dtype == np.uint8 and subset["split"].dtype == np.int8
    assert len(subset["class_names"]) == 10
    n = len(subset["labels"])
    assert n == 2000 and len(subset["offsets"]) == n + 1 and subset["offsets"][-1] == len(subset["jpeg"])
    for code, per_class in EXPECTED.items():
        counts = np.bincount(subset["labels"][subset["split"] == code], minlength=10)
        assert counts.tolist() == [per_class] * 10, code
    assert len(set(subset["filenames"].tolist())) == n  # no image in two splits
    for label, filename in zip(subset["labels"], subset["filenames"], strict=True):
        assert filename.startswith(subset["class_names"][label] + "/")


def test_every_image_decodes_to_64x64_rgb(subset: dict[str, np.ndarray]) -> None:
    from PIL import Image

    offsets = subset["offsets"]
    for start, end in itertools.pairwise(offsets):
        image = Image.open(io.BytesIO(subset["jpeg"][start:end].tobytes()))
        assert image.format == "JPEG" and image.size == (64, 64) and image.mode == "RGB"


def test_the_loaders_give_the_four_vtab1k_splits() -> None:
    from gated_vpt.contrib import eurosat

    assert eurosat.DATA_FILE == SUBSET
    splits = eurosat.load_eurosat_vtab1k()
    sizes = {name: (split.images.shape, split.labels.shape) for name, split in splits.items()}
    assert sizes == {
        "train": ((800, 64, 64, 3), (800,)),
        "val": ((200, 64, 64, 3), (200,)),
        "trainval": ((1000, 64, 64, 3), (1000,)),
        "test": ((1000, 64, 64, 3), (1000,)),
    }
    assert splits["train"].images.dtype == np.uint8 and splits["test"].class_names[0] == "AnnualCrop"
    pytest.importorskip("datasets")
    as_datasets = eurosat.eurosat_vtab1k()  # the same splits as `datasets`, the JPEG bytes decoded when read
    assert {name: len(split) for name, split in as_datasets.items()} == {
        name: len(s.labels) for name, s in splits.items()
    }
    assert as_datasets["train"].features["label"].names == list(splits["train"].class_names)
    for name in ("val", "test"):
        row = as_datasets[name][7]
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), splits[name].images[7])
        assert row["label"] == splits[name].labels[7]


def test_rebuild_is_bit_identical(tmp_path: pathlib.Path) -> None:
    if not SHARED_SOURCE.is_file():
        pytest.skip(f"{SHARED_SOURCE} absent (developers' shared data); cannot rebuild the subset")
    rebuilt = tmp_path / "eurosat_vtab1k.npz"
    subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--source", str(SHARED_SOURCE), "--output", str(rebuilt)], check=True
    )
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == hashlib.sha256(SUBSET.read_bytes()).hexdigest()
