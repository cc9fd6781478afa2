"""The FP32 stem (qdq_graph.stem_block): which convolutions it takes, and that ONNX Runtime's
artifact keeps exactly those float while the rest runs integer kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.calibrate import QuantConfig, integer_kernel_counts, quantize_onnx_for_ort
from edgeopt.calibrate.qdq_graph import stem_block

from conftest import int8_quantization


def _inverted_residual_net(path: Path, body: int = 27, branch: bool = False) -> Path:
    """A MobileNet-like stem (3->8 conv, Clip, 8-channel depthwise, Relu, 8->4 projection)
    and ``body`` more 4->4 convolutions; with ``branch`` the depthwise output is also read
    by an Add."""
    from onnx import helper, numpy_helper

    from tiny_models import _save

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(name, x, shape, group=1, pads=0):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.3).astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape[0]) * 0.1).astype(np.float32), f"{name}_b"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name,
                                      group=group, pads=[pads] * 4))
        return name

    inits += [numpy_helper.from_array(np.float32(0.0), "lo"),
              numpy_helper.from_array(np.float32(6.0), "hi")]
    x = conv("stem", "input", (8, 3, 3, 3), pads=1)
    nodes.append(helper.make_node("Clip", [x, "lo", "hi"], ["stem_act"], name="stem_clip"))
    x = conv("dw", "stem_act", (8, 1, 3, 3), group=8, pads=1)
    nodes.append(helper.make_node("Relu", [x], ["dw_act"], name="dw_relu"))
    x = "dw_act"
    if branch:
        nodes.append(helper.make_node("Add", [x, x], ["twice"], name="branch"))
        x = "twice"
    x = conv("project", x, (4, 8, 1, 1))
    for i in range(body):
        x = conv(f"body{i}", x, (4, 4, 1, 1))
        nodes.append(helper.make_node("Relu", [x], [f"body{i}_act"], name=f"body{i}_relu"))
        x = f"body{i}_act"
    nodes.append(helper.make_node("Identity", [x], ["output"], name="out"))
    return _save(path, "inverted_residual", nodes, inits, ("output", [1, 4, 8, 8]))


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


def test_int8_stem_flag_reaches_the_onnx_runtime_artifact(run_cli, tmp_path):
    path = _inverted_residual_net(tmp_path / "net.onnx")
    fast = ("--bench-seconds", "0", "--bench-iterations", "2", "--bench-repeats", "1",
            "--warmup", "0")
    excluded = {}
    for flag in ((), ("--int8-stem",)):
        quantization = int8_quantization(run_cli, path, tmp_path / f"out{len(flag)}",
                                         "--runtime", "onnxruntime", *fast, *flag)
        assert list(quantization) == ["onnxruntime"], quantization
        excluded[flag] = quantization["onnxruntime"]["excluded_nodes"]
    assert excluded == {(): ["stem", "dw", "project"], ("--int8-stem",): []}
