"""One-line errors keep the library's reason, never cut at the end; --debug changes the
output, not the exit code (issue 20)."""

from __future__ import annotations

import pathlib
import re

import pytest

TINY = ("--calib", "random", "--runtime", "onnxruntime", "--quiet", "--no-bench")
# ONNX Runtime's error on a DequantizeLinear with `axis` at opset 12: long, its reason last
ORT_DQ_AXIS = (
    "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from /tmp/edgeopt-1/prepped.onnx "
    "failed:This is an invalid model. In Node, (\"/features/features.0/Conv_output_0_"
    "DequantizeLinear\", DequantizeLinear, \"\", -1) : (\"/features/features.0/Conv_output_0_"
    "quantized\": tensor(uint8),\"/features/features.0/Conv_output_0_scale\": tensor(float),"
    + " ".join(f"\"/features/features.{i}/Conv_output_0_zero_point\": tensor(uint8)," for i in
               range(12))
    + ") -> (\"/features/features.0/Conv_output_0\": tensor(float),) , Error Unrecognized "
    "attribute: axis for operator DequantizeLinear")
REASON = "Error Unrecognized attribute: axis for operator DequantizeLinear"


def _fail_quantization(monkeypatch):
    import edgeopt.calibrate.quantize as quantize

    def broken(*args, **kwargs):
        raise RuntimeError(ORT_DQ_AXIS)

    monkeypatch.setattr(quantize, "_quantize_static", broken)


def test_a_long_library_error_keeps_its_start_and_its_reason(run_cli, tiny_onnx, tmp_path,
                                                              monkeypatch):
    _fail_quantization(monkeypatch)
    out = tmp_path / "out"
    result = run_cli("optimize", tiny_onnx, "--out", out, *TINY)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("edgeopt: error: ONNX Runtime quantization of tiny.fp32.onnx "
                           "failed: [ONNXRuntimeError] : 10 : INVALID_GRAPH"), line
    assert line.endswith(REASON), line                   # the end, whole: never "tensor(flo"
    assert " ... " in line and len(line) < len(ORT_DQ_AXIS)     # the middle dropped
    assert not out.exists()


@pytest.mark.parametrize("case", ["user", "library", "internal", "os"])
def test_the_same_failure_exits_the_same_with_and_without_debug(case, run_cli, tiny_onnx,
                                                                tmp_path, monkeypatch):
    if case == "library":
        _fail_quantization(monkeypatch)
    elif case in ("internal", "os"):

        error = (RuntimeError("a bug in a step") if case == "internal"
                 else PermissionError(13, "Permission denied", str(tmp_path / "x")))

        def step(state):
            raise error

        monkeypatch.setattr("edgeopt.pipeline.OPTIMIZE", (step,))
    model = tmp_path / "missing.onnx" if case == "user" else tiny_onnx
    want = {"user": 2, "library": 2, "internal": 1, "os": 2}[case]
    plain = run_cli("optimize", model, "--out", tmp_path / "a", *TINY)
    debug = run_cli("optimize", model, "--out", tmp_path / "b", "--debug", *TINY)
    assert plain.code == debug.code == want, (plain.err, debug.err)
    assert "Traceback" not in plain.err and "Traceback (most recent call last)" in debug.err
    # the same last line, but for the hint to rerun with --debug
    last = plain.err.strip().splitlines()[-1]
    assert debug.err.strip().splitlines()[-1] == last.replace(
        " (rerun with --debug for the traceback)", "")
    assert len(plain.err.strip().splitlines()) == 1


def test_library_error_text_is_never_cut_by_slicing():
    """Error texts are shortened by short_reason (head and reason kept), never by [:N],
    which cuts the reason off the end."""
    root = pathlib.Path(__file__).resolve().parents[2]
    sliced = re.compile(r"(first_line\([^()]*\)|short_reason\([^()]*\)|str\(e\)[\w.()]*)"
                        r"\[:\d+\]")
    found = [f"{p.relative_to(root)}:{i}" for d in ("edgeopt", "convert", "calibrate",
                                                      "runtimes", "reference_models")
             for p in (root / d).rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if sliced.search(line)]
    assert not found, found
