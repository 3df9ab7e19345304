# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Rebuild ``eurosat_vtab1k.npz``: a VTAB-1k-style, class-balanced EuroSAT subset small enough to ship in the repo.

The examples must run on a machine with no dataset download, so the subset is committed; this script is how it was
made and proves it is an unmodified sample of EuroSAT. It reads the developers' full EuroSAT npz (original JPEG
bytes, see ``shared/data/README.md``) and writes, byte for byte reproducibly:

* train 800 + val 200 from the source *train* split (80 + 20 per class),
* test 1,000 from the source *test* split (100 per class),

with the original JPEG bytes (no re-encoding) in the same no-pickle layout: ``jpeg``, ``offsets``, ``labels``,
``split`` (0 train / 1 val / 2 test), ``filenames``, ``class_names``.

Sampling is by ranking, not by a pseudo-random generator, so it is identical under any NumPy version: within each
class of a source split, images are sorted by ``sha256(f"{SEED}/{filename}")`` and the lowest ranks are taken (the
first 80 of the train ranking go to train, the next 20 to val). Each split is stored in source order.

Usage (from the repository root)::

    python examples/data/build_eurosat_subset.py --source ../shared/data/eurosat_rgb_jpeg.npz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import sys
import zipfile
from collections.abc import Sequence

import numpy as np

SEED = 0
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 80, 20, 100
SOURCE_TRAIN, SOURCE_TEST = 0, 2  # split codes in the source file
TRAIN, VAL, TEST = 0, 1, 2  # split codes in the subset
SOURCE_SHA256 = "afb756cb7e2797935bb226792bfc64522f689de1a4c77e964b7055daa8bc8af2"
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "eurosat_rgb_jpeg.npz"
DEFAULT_OUTPUT = HERE.parents[1] / "gated_vpt" / "contrib" / "eurosat_vtab1k.npz"  # shipped in the package
#: A fixed zip timestamp: ``np.savez`` stamps the current time, which would make every rebuild differ.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _rank(filenames: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``pool`` (source indices) sorted by the seeded hash of each image's filename."""
    return np.array(sorted(pool, key=lambda i: hashlib.sha256(f"{SEED}/{filenames[i]}".encode()).hexdigest()))


def select(labels: np.ndarray, split: np.ndarray, filenames: np.ndarray) -> dict[int, np.ndarray]:
    """Source indices of each subset split (codes ``TRAIN``/``VAL``/``TEST``), each in source order."""
    chosen: dict[int, list[np.ndarray]] = {TRAIN: [], VAL: [], TEST: []}
    for label in np.unique(labels):
        train_pool = _rank(filenames, np.flatnonzero((split == SOURCE_TRAIN) & (labels == label)))
        test_pool = _rank(filenames, np.flatnonzero((split == SOURCE_TEST) & (labels == label)))
        if len(train_pool) < TRAIN_PER_CLASS + VAL_PER_CLASS or len(test_pool) < TEST_PER_CLASS:
            raise ValueError(f"class {label} has too few images in the source splits")
        chosen[TRAIN].append(train_pool[:TRAIN_PER_CLASS])
        chosen[VAL].append(train_pool[TRAIN_PER_CLASS : TRAIN_PER_CLASS + VAL_PER_CLASS])
        chosen[TEST].append(test_pool[:TEST_PER_CLASS])
    return {code: np.sort(np.concatenate(parts)) for code, parts in chosen.items()}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``np.load``-compatible npz whose bytes depend only on ``arrays`` (stored, fixed metadata).

    Stored rather than deflated: JPEG bytes do not compress, and it keeps zlib versions out of the output.
    """
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.create_system = 3  # otherwise it depends on the OS that builds it
            info.external_attr = 0o100644 << 16
            archive.writestr(info, _npy_bytes(array))
    tmp.replace(path)


def build(source: pathlib.Path, output: pathlib.Path) -> str:
    """Write the subset of ``source`` to ``output``; returns its sha256."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{source} has sha256 {digest}, expected {SOURCE_SHA256}: not the documented EuroSAT npz")
    with np.load(source, allow_pickle=False) as data:
        jpeg, offsets, labels = data["jpeg"], data["offsets"], data["labels"]
        split, filenames, class_names = data["split"], data["filenames"], data["class_names"]
    order, codes = [], []
    for code, indices in select(labels, split, filenames).items():
        order.extend(indices.tolist())
        codes.extend([code] * len(indices))
    order_array = np.asarray(order)
    images = [jpeg[offsets[i] : offsets[i + 1]] for i in order]
    arrays = {
        "jpeg": np.concatenate(images).astype(np.uint8),
        "offsets": np.concatenate([[0], np.cumsum([len(image) for image in images])]).astype(np.int64),
        "labels": labels[order_array].astype(np.int64),
        "split": np.asarray(codes, dtype=np.int8),
        "filenames": np.asarray(filenames[order_array].tolist(), dtype=str),
        "class_names": np.asarray(class_names.tolist(), dtype=str),
    }
    write_npz(output, arrays)
    return hashlib.sha256(output.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=pathlib.Path, default=DEFAULT_SOURCE, help="full EuroSAT RGB JPEG npz")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT, help="subset npz to write")
    args = parser.parse_args(argv)
    digest = build(args.source, args.output)
    print(f"{args.output}: {args.output.stat().st_size} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
