"""Keras 3 models in, on the torch backend; TensorFlow models through the edgeopt[tf]
extra (issue 20)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

FAST = ("--calib", "random", "--quiet", "--no-bench", "--calib-samples", "16",
        "--eval-samples", "8")
needs_keras = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None,
    reason="keras is not installed: pip install 'edgeopt[keras]' (or '.[test]') to run it")


def _keras():
    from edgeopt.convert.keras_tf import _torch_backend

    with _torch_backend():
        import keras
    assert keras.backend.backend() == "torch"
    return keras


def save_keras_detector(path: Path) -> Path:
    """Two inputs (an NHWC image, a feature vector), BatchNorm, a depthwise block, and two
    outputs: Softmax class scores and a box regression."""
    keras = _keras()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3), name="image")
    meta = keras.Input((4,), name="meta")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(image)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Conv2D(16, 1, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Concatenate()([x, layers.Dense(8, activation="relu")(meta)])
    scores = layers.Dense(5, activation="softmax", name="scores")(x)
    boxes = layers.Dense(4, name="boxes")(x)
    model = keras.Model([image, meta], [scores, boxes])
    model.save(str(path))
    return path


@needs_keras
def test_keras_model_goes_through_optimize_on_both_runtimes(run_cli, tmp_path):
    model = save_keras_detector(tmp_path / "kdet.keras")
    before = model.read_bytes()
    out = tmp_path / "out"
    result = run_cli("optimize", model, "--out", out, *FAST)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["kind"] == "keras"
    assert [i["name"] for i in report["input"]["inputs"]] == ["image", "meta"]
    assert [i["shape"] for i in report["input"]["inputs"]] == [[1, 16, 16, 3], [1, 4]]
    export = next(s for s in report["steps"] if s["name"] == "torch -> ONNX")
    assert export["parity"]["ok"] and export["parity"]["cosine"] > 0.9999
    int8 = {a["runtime"]: a for a in report["artifacts"] if a["precision"] == "int8"}
    assert set(int8) == {"onnxruntime", "openvino"}
    for art in int8.values():
        # random weights, random calibration data: close to FP32, not necessarily "ok"
        assert (out / art["path"]).is_file(), art
        assert art["accuracy"]["value"] > 0.95, art["accuracy"]
        assert [o["output"] for o in art["accuracy"]["outputs"]] == ["scores", "boxes"]
    kernels = int8["onnxruntime"]["quantization"]["integer_kernels"]
    assert kernels.get("QLinearConv", 0) + kernels.get("ConvInteger", 0) >= 2, kernels
    import onnx

    graph = onnx.load(str(out / "kdet.fp32.onnx")).graph
    assert [o.name for o in graph.output] == ["scores", "boxes"]
    assert model.read_bytes() == before                    # the input is never modified
    assert "tensorflow" not in sys.modules                 # no TensorFlow anywhere


@needs_keras
def test_keras_model_without_input_shape_asks_for_one(run_cli, tmp_path):
    keras = _keras()
    model = keras.Sequential([keras.layers.Dense(3)])
    path = tmp_path / "seq.keras"
    model.save(str(path))
    result = run_cli("optimize", path, "--out", tmp_path / "out", *FAST)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "pass --input-shape" in lines[0], result.err
    result = run_cli("optimize", path, "--out", tmp_path / "out", "--input-shape", "1,6",
                     "--runtime", "onnxruntime", *FAST)
    assert result.code == 0, result.err


def test_keras_missing_names_the_extra(run_cli, tmp_path, monkeypatch):
    path = tmp_path / "m.keras"
    path.write_bytes(b"PK\x05\x06" + bytes(18))              # an empty zip
    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "keras" else real(name, *a))
    result = run_cli("optimize", path, "--out", tmp_path / "out", *FAST)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'edgeopt[keras]'" in lines[0], result.err


@pytest.mark.parametrize("kind", ["saved-model", "tflite"])
def test_tensorflow_model_without_the_extra_names_it(run_cli, tmp_path, monkeypatch, kind):
    if kind == "saved-model":
        model = tmp_path / "exported"
        (model / "variables").mkdir(parents=True)
        (model / "saved_model.pb").write_bytes(b"\x08\x01")
        what = "TensorFlow SavedModel"
    else:
        model = tmp_path / "m.tflite"
        model.write_bytes(b"\x1c\x00\x00\x00TFL3")
        what = "TFLite"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",           # as on a machine without it
                        lambda name, *a: None if name in ("tensorflow", "tf2onnx")
                        else real(name, *a))
    out = tmp_path / "out"
    result = run_cli("optimize", model, "--out", out, *FAST)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert f"{what} models are converted with tf2onnx" in lines[0]
    assert lines[0].endswith("pip install 'edgeopt[tf]'"), lines[0]
    assert not out.exists()


def test_a_folder_that_is_not_a_saved_model_is_refused(run_cli, tmp_path):
    (tmp_path / "folder").mkdir()
    result = run_cli("optimize", tmp_path / "folder", "--out", tmp_path / "out", *FAST)
    assert result.code == 2 and "no saved_model.pb" in result.err, result.err


FAKE_TF2ONNX = '''
"""A stand-in for tf2onnx's command line: records its arguments, writes a tiny ONNX model."""
import json, os, shutil, sys

args = sys.argv[1:]
with open(os.environ["FAKE_TF2ONNX_LOG"], "w") as f:
    json.dump(args, f)
if os.environ.get("FAKE_TF2ONNX_FAIL"):
    sys.stderr.write("2026 INFO loading\\nValueError: Unsupported op: TensorListReserve\\n")
    sys.exit(1)
shutil.copy(os.environ["FAKE_TF2ONNX_MODEL"], args[args.index("--output") + 1])
'''


@pytest.mark.parametrize("fail", [False, True])
def test_tensorflow_models_go_through_tf2onnx(run_cli, tmp_path, monkeypatch, tiny_onnx, fail):
    """The plumbing around tf2onnx (TensorFlow itself is too large to install here): its
    command line, the converted model run like any ONNX model, the report naming the source,
    and a conversion failure as one line with tf2onnx's reason."""
    fake = tmp_path / "fake" / "tf2onnx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "convert.py").write_text(FAKE_TF2ONNX)
    log = tmp_path / "args.json"
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    monkeypatch.setenv("FAKE_TF2ONNX_LOG", str(log))
    monkeypatch.setenv("FAKE_TF2ONNX_MODEL", str(tiny_onnx))
    if fail:
        monkeypatch.setenv("FAKE_TF2ONNX_FAIL", "1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorflow" else real(name, *a))
    monkeypatch.syspath_prepend(str(fake.parent))
    model = tmp_path / "exported"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"\x08\x01")
    out = tmp_path / "out"
    result = run_cli("optimize", model, "--out", out, "--runtime", "onnxruntime", *FAST)
    args = json.loads(log.read_text())
    assert args[:2] == ["--saved-model", str(model)] and args[-2:] == ["--opset", "17"]
    if fail:
        assert result.code == 2
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].endswith(
            "tf2onnx could not convert this TensorFlow SavedModel (ValueError: Unsupported "
            "op: TensorListReserve)"), result.err
        assert not out.exists()
        return
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["kind"] == "tensorflow-savedmodel"
    assert report["input"]["sha256"] != hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert (out / "exported.int8-ort.onnx").is_file()
