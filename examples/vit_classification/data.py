# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""``--dataset``: the training and evaluation `datasets.Dataset`s, their preprocessing and their batches.

The bundled VTAB-1k-style EuroSAT subset (``examples/data``, read through ``examples/eurosat_data.py``) needs no
download; otherwise ``--dataset`` is a ``save_to_disk`` folder, a folder of images or a ``datasets.load_dataset``
name. Every dataset comes out with the columns ``image`` and ``label``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

BUNDLED = "eurosat-vtab1k"
DATASET_FORMS = (
    f"'{BUNDLED}' (the bundled EuroSAT subset, no download); a folder written by datasets' save_to_disk (a Dataset, "
    "used as the training split, or a DatasetDict); a folder of images (class_name/*.jpg, with train/ and test/ "
    "sub-folders if it has them); or a name for datasets.load_dataset (a Hub dataset id)"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_data(args: argparse.Namespace):
    """(train, eval) `datasets.Dataset`s with columns `image` and `label`, the class names, and the split names."""
    if args.dataset == BUNDLED:
        train, evaluation, class_names, train_name, eval_name = _bundled_dataset(args.eval_split or "test")
    else:
        from datasets import ClassLabel

        dsd = open_dataset(args.dataset, args.dataset_config, args.train_split)
        if args.train_split not in dsd:
            raise SystemExit(f"Split {args.train_split!r} not in {list(dsd)}: pass --train-split.")
        train = dsd[args.train_split]
        image_col, label_col = _find_columns(train, args.image_column, args.label_column)
        eval_split = args.eval_split or next((s for s in ("test", "validation", "val", "valid") if s in dsd), None)
        if eval_split is None:
            if not isinstance(train.features[label_col], ClassLabel):
                train = train.class_encode_column(label_col)
            held = train.train_test_split(test_size=0.2, seed=args.seed, stratify_by_column=label_col)
            train, evaluation = held["train"], held["test"]
            train_name, eval_name = f"{args.dataset}/{args.train_split}[80%]", f"{args.dataset}/{args.train_split}[20%]"
        else:
            if eval_split not in dsd:
                raise SystemExit(f"Split {eval_split!r} not in {list(dsd)}: pass --eval-split.")
            evaluation = dsd[eval_split]
            train_name, eval_name = f"{args.dataset}/{args.train_split}", f"{args.dataset}/{eval_split}"
        label_feature = train.features[label_col]
        if isinstance(label_feature, ClassLabel):
            class_names = list(label_feature.names)
        else:  # plain integer labels
            class_names = [str(i) for i in sorted(set(train[label_col]) | set(evaluation[label_col]))]
        keep = {image_col: "image", label_col: "label"}
        train = train.select_columns(list(keep)).rename_columns({k: v for k, v in keep.items() if k != v})
        evaluation = evaluation.select_columns(list(keep)).rename_columns({k: v for k, v in keep.items() if k != v})
    # The bundled splits are stored class by class: shuffle before taking a subset.
    if args.max_train_samples is not None:
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        evaluation = evaluation.shuffle(seed=args.seed).select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation, class_names, train_name, eval_name


def _bundled_dataset(eval_split: str):
    """The bundled EuroSAT subset as two in-memory `datasets.Dataset`s (train, eval) and the class names.

    The images stay the original JPEG bytes (decoded lazily by `datasets`), so nothing is re-encoded."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from eurosat_data import DEFAULT_PATH, SPLIT_CODES  # examples/eurosat_data.py, beside this package

    if eval_split not in ("test", "val"):
        raise SystemExit(f"--eval-split for {BUNDLED} must be 'test' or 'val', not {eval_split!r}.")
    with np.load(DEFAULT_PATH, allow_pickle=False) as data:
        jpeg, offsets, labels, split = data["jpeg"], data["offsets"], data["labels"], data["split"]
        class_names = [str(name) for name in data["class_names"]]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=class_names)})
    # VTAB-1k: choose hyper-parameters training on train (800) / evaluating on val (200), then train on
    # train + val (1,000) and report on test.
    codes = {
        "test": ((SPLIT_CODES["train"], SPLIT_CODES["val"]), SPLIT_CODES["test"]),
        "val": ((SPLIT_CODES["train"],), SPLIT_CODES["val"]),
    }[eval_split]

    def to_dataset(split_codes):
        index = np.flatnonzero(np.isin(split, split_codes))
        images = [{"bytes": jpeg[offsets[i] : offsets[i + 1]].tobytes(), "path": None} for i in index]
        return Dataset.from_dict({"image": images, "label": labels[index].tolist()}, features=features)

    train_name = "trainval" if eval_split == "test" else "train"
    return (
        to_dataset(codes[0]),
        to_dataset((codes[1],)),
        class_names,
        f"{BUNDLED}/{train_name}",
        f"{BUNDLED}/{eval_split}",
    )


def open_dataset(value: str, config_name: Optional[str], train_split: str):
    """`--dataset` (anything but the bundled subset) as a `datasets.DatasetDict`."""
    from datasets import DatasetDict, load_dataset, load_from_disk
    from datasets.exceptions import DatasetNotFoundError

    path = pathlib.Path(value).expanduser()
    if path.is_dir():
        if _is_saved_dataset(path):
            loaded = load_from_disk(str(path))
            # A lone Dataset has no split names: it is the training split (20% is held out for evaluation).
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({train_split: loaded})
        try:
            return load_dataset("imagefolder", data_dir=str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise _unusable_dataset(
                value, f"a folder, but neither a save_to_disk dataset nor a folder of images ({exc})."
            ) from None
    if path.exists():
        raise _unusable_dataset(value, "a file, not a folder or a dataset name.")
    if value.startswith((".", "~", os.sep)) or value.count("/") > 1:  # meant as a path; a Hub id is "owner/name"
        raise _unusable_dataset(value, "no such folder.")
    try:
        return load_dataset(value, config_name)
    except (DatasetNotFoundError, FileNotFoundError, ConnectionError) as exc:
        raise _unusable_dataset(
            value, f"datasets.load_dataset could not load it ({type(exc).__name__}: {exc})."
        ) from None


def _is_saved_dataset(path: pathlib.Path) -> bool:
    """Whether `path` was written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    from datasets import config

    if (path / config.DATASETDICT_JSON_FILENAME).is_file():
        return True
    return (path / config.DATASET_STATE_JSON_FILENAME).is_file() and (path / config.DATASET_INFO_FILENAME).is_file()


def _unusable_dataset(value: str, why: str) -> SystemExit:
    return SystemExit(f"--dataset {value!r}: {why}\n--dataset accepts {DATASET_FORMS}.")


def _find_columns(dataset, image_column: Optional[str], label_column: Optional[str]) -> tuple[str, str]:
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    feats = dataset.features
    if image_column is None:
        image_column = next((k for k, v in feats.items() if isinstance(v, ImageFeature)), None)
        image_column = image_column or next((k for k in ("image", "img", "pixel_values") if k in feats), None)
    if label_column is None:
        label_column = next((k for k, v in feats.items() if isinstance(v, ClassLabel)), None)
        label_column = label_column or next((k for k in ("label", "labels", "fine_label") if k in feats), None)
    if image_column not in feats or label_column not in feats:
        raise SystemExit(
            f"Could not find the image / label columns among {list(feats)}: pass --image-column / --label-column."
        )
    return image_column, label_column


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing and batches
# ---------------------------------------------------------------------------------------------------------------


def normalization(model_path: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """The model's image-processor mean/std if it has one, else ImageNet's (DINOv2, ViT/DeiT-in1k, MAE...)."""
    local = os.path.isdir(model_path)
    if not local or os.path.isfile(os.path.join(model_path, "preprocessor_config.json")):
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(model_path)
            mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
            if mean is not None and std is not None:
                return tuple(mean), tuple(std), "image processor"
        except Exception:  # no processor config (or unreachable Hub): fall back
            pass
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet"


def make_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """`with_transform` function: PIL resize (bicubic, no crop) -> [0, 1] tensor -> normalised CHW float32."""
    from PIL import Image

    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def to_tensor(image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        image = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - mean_a) / std_a)

    def transform(batch: dict[str, list]) -> dict[str, Any]:
        return {"pixel_values": [to_tensor(im) for im in batch["image"]], "labels": batch["label"]}

    return transform


def make_collate(extra: dict[str, Any]):
    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
            **extra,
        }

    return collate
