"""The FP32 stem (qdq_graph.stem_block): which convolutions it takes, and that ONNX Runtime's
artifact keeps exactly those float while the rest runs integer kernels."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.calibrate import QuantConfig, integer_kernel_counts, quantize_onnx_for_ort
from edgeopt.calibrate.qdq_graph import stem_block

from conftest import int8_quantization
from tiny_models import save_inverted_residual_onnx as _inverted_residual_net


def test_the_stem_runs_to_the_first_narrowing_convolution(tmp_path):
    import onnx

    model = onnx.load(str(_inverted_residual_net(tmp_path / "net.onnx")))
    assert stem_block(model) == ["stem", "dw", "project"]


@pytest.mark.parametrize(("body", "branch"), [(27, True), (5, False)],
                         ids=["branching chain", "stem over a tenth of the convolutions"])
def test_no_stem_when_the_chain_branches_or_is_most_of_the_model(tmp_path, body, branch):
    import onnx

    model = onnx.load(str(_inverted_residual_net(tmp_path / "net.onnx", body, branch)))
    assert stem_block(model) == []


def test_onnx_runtime_keeps_the_stem_float_and_int8_stem_quantizes_it(tmp_path):
    path = _inverted_residual_net(tmp_path / "net.onnx")
    rng = np.random.default_rng(1)
    calib = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    kept = quantize_onnx_for_ort(path, tmp_path / "kept.onnx", calib,
                                 QuantConfig(weight_rounding=False, bias_correction=False))
    full = quantize_onnx_for_ort(path, tmp_path / "full.onnx", calib,
                                 QuantConfig(fp32_stem=False, weight_rounding=False,
                                             bias_correction=False))
    assert kept.excluded_nodes == ("stem", "dw", "project")
    assert any(n.startswith("kept FP32 (the stem") for n in kept.notes), kept.notes
    assert full.excluded_nodes == ()
    counts, all_int8 = integer_kernel_counts(kept.path), integer_kernel_counts(full.path)
    floats = lambda c: c.get("Conv", 0) + c.get("FusedConv", 0)  # noqa: E731
    # the last conv, whose output is the graph's, stays float in both (qdq_graph.float_outputs)
    assert all_int8.get("QLinearConv") == 29 and floats(all_int8) == 1, all_int8
    assert counts.get("QLinearConv") == 26 and floats(counts) == 4, counts


def test_the_stem_is_weighed_and_int8_stem_quantizes_it(run_cli, tmp_path):
    """By default the FP32 stem is built, then weighed against the same build without it
    (edgeopt.tradeoffs): the artifact keeps it exactly when the report says it bought at
    least the minimum gain. --int8-stem quantizes it and weighs nothing."""
    import json

    path = _inverted_residual_net(tmp_path / "net.onnx")
    fast = ("--bench-seconds", "0", "--bench-iterations", "2", "--bench-repeats", "1",
            "--warmup", "0")
    excluded, tradeoffs = {}, {}
    for flag in ((), ("--int8-stem",)):
        out = tmp_path / f"out{len(flag)}"
        quantization = int8_quantization(run_cli, path, out, "--runtime", "onnxruntime",
                                         *fast, *flag)
        assert list(quantization) == ["onnxruntime"], quantization
        excluded[flag] = quantization["onnxruntime"]["excluded_nodes"]
        tradeoffs[flag] = [t for t in json.loads((out / "report.json").read_text())["tradeoffs"]
                           if t["choice"] == "fp32-stem"]
        assert not [f for f in out.iterdir() if "without" in f.name]
    assert excluded[("--int8-stem",)] == [] and tradeoffs[("--int8-stem",)] == []
    (record,) = tradeoffs[()]
    assert record["choice"] == "fp32-stem" and record["nodes"] == ["stem", "dw", "project"]
    assert record["gain"] == pytest.approx(record["with"] - record["without"], abs=1e-5)
    assert record["kept"] == (record["gain"] >= record["min_gain"])
    assert excluded[()] == (["stem", "dw", "project"] if record["kept"] else [])
    assert isinstance(record["p50_ms_with"], float) and record["p50_cost"] > 0
