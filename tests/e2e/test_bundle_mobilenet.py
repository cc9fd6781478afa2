"""The issue's bar on MobileNetV2: optimize --package android, the .ort against the INT8 ONNX
on the evaluation crops, and verify (slow)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import sha256

CHEAP = ("--runtime", "onnxruntime", "--bench-repeats", "1", "--bench-seconds", "0",
         "--bench-iterations", "3", "--quiet")
FAST_BENCH = ("--bench-seconds", "0", "--bench-iterations", "3", "--bench-repeats", "1",
              "--warmup", "1")


def top1(session, crops) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.array([int(np.argmax(session.run(None, {name: x})[0])) for x in crops])


@pytest.mark.slow
def test_mobilenet_v2_android_bundle(run_cli, tmp_path):
    import onnxruntime as ort

    from edgeopt.reference_models import get_reference

    out = tmp_path / "out"
    result = run_cli("optimize", "ref:mobilenet-v2", "--device", "host-cpu", "--package",
                     "android", "--out", out, *CHEAP)
    assert result.code == 0, result.err
    bundle = out / "mobilenet-v2-android.zip"
    with zipfile.ZipFile(bundle) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    manifest = json.loads(members["manifest.json"])
    assert manifest["model"]["format"] == "ort" and manifest["model"]["precision"] == "int8"
    assert manifest["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert manifest["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert manifest["labels"] is None and "ImageNet" in manifest["labels_note"]
    latency = json.loads((out / "mobilenet-v2-android.latency.json").read_text())
    assert [r["label"] for r in latency["latency"]] == ["measured"]
    # 52 integer convolutions, or 49 when the run kept the stem's three FP32 (weighed:
    # edgeopt.tradeoffs)
    report = json.loads((out / "report.json").read_text())
    (weighed,) = [t for t in report["tradeoffs"] if t["choice"] == "fp32-stem"
                  and t["runtime"] == "onnxruntime"]
    stem = 3 if weighed["kept"] else 0
    assert manifest["quantization"]["integer_kernels"]["QLinearConv"] == 52 - stem
    assert "QLinearConv" in members["required_operators.config"].decode()

    # the .ort gives the INT8 ONNX artifact's top-1 on every evaluation crop, both at the
    # optimization level the .ort was built with (extended, for ARM). At x86's full level
    # an FP32 stem runs other float kernels (NCHWc), whose last-bit differences the int8
    # layers after it carry as far as 9 of 300 close-call crops.
    model = tmp_path / "model.ort"
    model.write_bytes(members["model.ort"])
    crops = [s["input"] for s in get_reference("mobilenet-v2").evaluation_set().inputs]
    providers = ["CPUExecutionProvider"]
    extended = ort.SessionOptions()
    extended.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort_top1 = top1(ort.InferenceSession(str(model), providers=providers), crops)
    onnx_top1 = top1(ort.InferenceSession(str(out / "mobilenet-v2.int8-ort.onnx"), extended,
                                          providers=providers), crops)
    assert len(crops) == get_reference("mobilenet-v2").eval_samples
    assert float(np.mean(ort_top1 == onnx_top1)) == 1.0, np.flatnonzero(ort_top1 != onnx_top1)

    result = run_cli("verify", bundle, "--json", *FAST_BENCH)
    assert result.code == 0, result.err
    verdict = json.loads(result.out)
    assert verdict["ok"] and verdict["devices"][0]["bench"]["label"] == "measured"

    # packaging the run folder again gives the same bytes
    again = tmp_path / "again.zip"
    result = run_cli("package", out, "--target", "android", "--out", again, "--quiet")
    assert result.code == 0, result.err
    assert sha256(again) == sha256(bundle)
