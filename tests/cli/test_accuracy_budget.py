"""--max-accuracy-drop: sensitive layers go back to FP32 until the budget holds, else exit 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FAST = ("--calib", "random", "--quiet", "--warmup", "1", "--bench-iterations", "3",
        "--bench-seconds", "0", "--bench-repeats", "1")


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory) -> Path:
    from tiny_models import save_outlier_onnx

    return save_outlier_onnx(tmp_path_factory.mktemp("budget") / "outlier.onnx")


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_plain_int8_breaks_the_output_of_the_outlier_model(run_cli, outlier_onnx, tmp_path):
    r = run_cli("optimize", outlier_onnx, "--out", tmp_path / "o", *FAST)
    assert r.code == 0, r.err
    int8 = [a for a in _report(tmp_path / "o")["artifacts"] if a["precision"] == "int8"]
    assert len(int8) == 2 and all(a["accuracy"]["value"] < 0.5 for a in int8)


def test_budget_reverts_the_sensitive_layers_and_holds(run_cli, outlier_onnx, tmp_path):
    r = run_cli("optimize", outlier_onnx, "--out", tmp_path / "o", *FAST,
                "--max-accuracy-drop", "0.01")
    assert r.code == 0, r.err
    report = _report(tmp_path / "o")
    budget = report["accuracy_budget"]
    assert budget["met"] and budget["allowed_drop"] == 0.01
    for runtime in ("onnxruntime", "openvino"):
        b = budget["runtimes"][runtime]
        assert b["met"] and b["drop"] <= 0.01
        assert "conv_outlier" in b["reverted_to_fp32"]
    int8 = {a["runtime"]: a for a in report["artifacts"] if a["precision"] == "int8"}
    assert all(a["accuracy"]["value"] >= 0.99 for a in int8.values())
    assert "conv_outlier" in int8["onnxruntime"]["quantization"]["reverted_to_fp32"]


def test_budget_that_cannot_be_met_exits_3_with_one_line(run_cli, outlier_onnx, tmp_path):
    r = run_cli("optimize", outlier_onnx, "--out", tmp_path / "o", *FAST,
                "--max-accuracy-drop", "1%", "--max-fp32-nodes", "1")
    assert r.code == 3
    last = r.err.strip().splitlines()[-1]
    assert last.startswith("edgeopt: error: accuracy budget") and "--max-fp32-nodes 1" in last
    assert _report(tmp_path / "o")["accuracy_budget"]["met"] is False
