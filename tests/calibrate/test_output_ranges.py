"""Calibration keeps model outputs whole: a detector's Sigmoid scores and its pixel-scale
boxes keep their range with every calibrator on both runtimes, and a clipped output is
flagged, never passed as ok."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeopt.calibrate.calibrators import CALIBRATORS
from edgeopt.calibrate.output_ranges import bounded_tensors, output_tensors

from tiny_models import detector_samples, save_tiny_detector

FAST = ("--no-bench", "--quiet")       # accuracy is the point here, not latency


@pytest.fixture
def detector(tmp_path):
    model = save_tiny_detector(tmp_path / "det.onnx")
    calib, held_out = tmp_path / "calib.npy", tmp_path / "eval.npy"
    np.save(calib, detector_samples(64, seed=0)[:, 0])
    np.save(held_out, detector_samples(32, seed=1)[:, 0])
    return model, calib, held_out


def test_outputs_and_what_reaches_them_through_elementwise_ops(detector):
    model = onnx.load(str(detector[0]))
    reached = output_tensors(model)
    # scores <- Transpose <- Reshape <- Sigmoid <- its logits; boxes <- ... <- Relu <- Conv
    assert {"scores", "fs", "ss", "cs", "boxes", "fb", "mb", "rb", "cb"} <= reached
    assert "feat" not in reached and "input" not in reached    # behind a Conv
    assert bounded_tensors(model) == {"ss": (0.0, 1.0)}


def _int8_outputs(report: dict) -> dict[str, dict]:
    return {a["runtime"]: {o["output"]: o for o in a["accuracy"]["outputs"]} | {
        "status": a["status"]} for a in report["artifacts"] if a["precision"] == "int8"}


@pytest.mark.parametrize("calibrator", sorted(CALIBRATORS))
def test_every_calibrator_keeps_the_score_range_on_both_runtimes(run_cli, tmp_path, detector,
                                                                 calibrator):
    model, calib, held_out = detector
    out = tmp_path / "out"
    result = run_cli("optimize", model, "--calib", calib, "--eval", held_out,
                     "--calibrator", calibrator, "--out", out, *FAST)
    assert result.code == 0, result.err
    int8 = _int8_outputs(json.loads((out / "report.json").read_text()))
    assert set(int8) == {"onnxruntime", "openvino"}
    for runtime, figures in int8.items():
        assert figures["scores"]["range_coverage"] >= 0.99, (runtime, figures["scores"])
        assert figures["status"] != "clipped-output", (runtime, figures)


def test_a_clipped_output_is_flagged(run_cli, tmp_path, detector, monkeypatch):
    """Without the protection, the default calibrator clips the ONNX Runtime score head:
    the artifact is marked clipped-output and named in a warning."""
    import edgeopt.calibrate.output_ranges as output_ranges

    monkeypatch.setattr(output_ranges, "output_tensors", lambda model: set())
    monkeypatch.setattr(output_ranges, "bounded_tensors", lambda model: {})
    model, calib, held_out = detector
    out = tmp_path / "out"
    result = run_cli("optimize", model, "--calib", calib, "--eval", held_out,
                     "--runtime", "onnxruntime", "--out", out, *FAST)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    figures = _int8_outputs(report)["onnxruntime"]
    assert figures["status"] == "clipped-output"
    assert figures["scores"]["clipped"] and figures["scores"]["range_coverage"] < 0.99
    assert any("clipped-output: scores" in w for w in report["warnings"])
