"""Int8 weight pairs that ONNX Runtime's AVX2 kernels cannot saturate (saturation.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeopt.calibrate import quantize_onnx_for_ort
from edgeopt.calibrate.rounding import gptq_rows
from edgeopt.calibrate.saturation import (
    bound_pairs,
    fit_scales,
    hwio_order,
    needed_scale,
    over_limit,
    pair_bounds,
    reduction_rows,
)
from edgeopt.convert import export_onnx


def _saturating_cpu() -> str | None:
    """Why this CPU's int8 kernels would not saturate, or None if they do (x86 AVX2, no VNNI)."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return f"{platform.machine()}: ONNX Runtime's int8 kernels do not use vpmaddubsw"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no /proc/cpuinfo to read the CPU's flags"
    if "vnni" in flags:
        return "this CPU has VNNI: its int8 dot products do not saturate"
    return None if " avx2" in flags else "no AVX2 on this CPU"


def _qlinear_conv(x: np.ndarray, w: np.ndarray, zero: int = 0) -> np.ndarray:
    """One QLinearConv (input scale 1, weight scale 1, output scale 256 with zero point
    ``zero``) run by ONNX Runtime with its optimizations (integer kernels)."""
    inits = [numpy_helper.from_array(np.float32(1.0), "sx"),
             numpy_helper.from_array(np.uint8(0), "zx"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.ones(w.shape[0], np.float32), "sw"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), "zw"),
             numpy_helper.from_array(np.float32(256.0), "sy"),
             numpy_helper.from_array(np.uint8(zero), "zy")]
    node = helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                          list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _exact(x: np.ndarray, w: np.ndarray, zero: int = 0) -> np.ndarray:
    acc = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64),
                                     torch.tensor(w, dtype=torch.float64)).numpy()
    return np.clip(np.round(acc / 256.0) + zero, 0, 255)


def test_same_sign_neighbours_saturate_onnx_runtime_on_avx2():
    """What the guard is for: on AVX2 without VNNI, two same-sign int8 weights that are
    neighbours in the reduction (channels 2j, 2j+1) saturate; the same weights apart do not."""
    reason = _saturating_cpu()
    if reason:
        pytest.skip(reason)
    x = np.full((1, 4, 2, 2), 255, np.uint8)
    for pattern, saturates in (([127, 127, 0, 0], True), ([127, 0, 127, 0], False),
                               ([0, 127, 127, 0], False), ([-127, -127, 0, 0], True),
                               ([127, -127, 127, -127], False), ([64, 64, 64, 64], False)):
        w = np.array(pattern, np.int8).reshape(1, 4, 1, 1)
        zero = 255 if min(pattern) < 0 else 0
        got, exact = _qlinear_conv(x, w, zero)[0, 0, 0, 0], _exact(x, w, zero)[0, 0, 0, 0]
        assert (got != exact) == saturates, (pattern, got, exact)


def test_a_convolution_reduces_channels_innermost():
    """The 3x3, 3-channel stem's saturating pairs are neighbours in HWIO order."""
    reason = _saturating_cpu()
    if reason:
        pytest.skip(reason)
    x = np.full((1, 3, 5, 5), 255, np.uint8)
    order = hwio_order(3, 3, 3)                    # reduction position -> OIHW flat index
    rng = np.random.default_rng(0)
    for _ in range(12):
        i, j = sorted(rng.choice(27, 2, replace=False))
        w = np.zeros(27, np.int8)
        w[[i, j]] = 127
        w = w.reshape(1, 3, 3, 3)
        saturated = _qlinear_conv(x, w)[0, 0, 1, 1] != _exact(x, w)[0, 0, 1, 1]
        pi, pj = np.flatnonzero(order == i)[0], np.flatnonzero(order == j)[0]
        assert saturated == (pi // 2 == pj // 2), (i, j)


def test_pair_maths_keeps_every_same_sign_pair_within_the_limit():
    rng = np.random.default_rng(1)
    rows = rng.standard_t(3, (64, 50))
    scale = needed_scale(rows)
    assert np.all(scale >= np.abs(rows).max(axis=1) / 127 - 1e-12)
    q = np.clip(np.round(rows / scale[:, None]), -127, 127)
    bound_pairs(q)
    assert not over_limit(q).any()
    # nearest rounding at the channel's own 8-bit scale breaks the limit somewhere
    q8 = np.round(rows / (np.abs(rows).max(axis=1, keepdims=True) / 127))
    assert over_limit(q8).any()
    # the rounding's bound for the second of a pair, given the first
    first = np.array([127, 64, 0, -100, -128 + 5])
    lo, hi = pair_bounds(first, -127, 127)
    assert list(hi) == [1, 64, 127, 127, 127] and list(lo) == [-127, -127, -127, -28, -5]


def test_constrained_gptq_rounding_has_no_saturating_pair():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 32))
    w = rng.standard_normal((16, 32))
    h = x.T @ x / len(x)
    scale = needed_scale(w)
    q = gptq_rows(w, scale, h, -127, 127, pairs=True)
    assert not over_limit(q).any()
    free = gptq_rows(w, np.abs(w).max(axis=1) / 127, h, -127, 127)
    assert over_limit(free).any()          # the case is one the constraint has to act on


def _big_weight_model(path: Path) -> Path:
    """conv 3->8 (3x3) -> relu -> conv 8->16 (1x1) -> relu -> flatten -> linear."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10))
    with torch.no_grad():   # equal-sized same-sign weights: 8-bit pairs would saturate
        for layer in (model[0], model[2]):
            layer.weight.copy_(layer.weight.abs() + 0.5 * layer.weight.abs().max())
    export_onnx(model.eval(), (torch.randn(1, 3, 8, 8),), path)
    return path


def _run(path: Path, x: dict, fused: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), options,
                                providers=["CPUExecutionProvider"]).run(None, x)[0]


def test_the_int8_artifact_runs_the_same_fused_and_unfused(tmp_path):
    """Whatever the CPU: no weight pair of the artifact is over the limit, so ONNX Runtime's
    integer kernels compute what the QDQ graph says (its unfused run)."""
    fp32 = _big_weight_model(tmp_path / "big.onnx")
    rng = np.random.default_rng(3)
    calib = [{"input": rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(16)]
    result = quantize_onnx_for_ort(fp32, tmp_path / "big.int8.onnx", calib)
    assert any("saturation" in n for n in result.notes), result.notes
    model = onnx.load(str(result.path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    checked = 0
    for node in model.graph.node:
        if node.op_type in {"Conv", "Gemm"}:
            weight = inits[producer[node.input[1]].input[0]]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            rows, _ = reduction_rows(weight, node.op_type, attrs)
            assert not over_limit(rows).any(), node.name
            checked += 1
    assert checked == 3
    for sample in calib[:4]:
        fused, unfused = _run(result.path, sample, True), _run(result.path, sample, False)
        reference = _run(fp32, sample, True)
        spread = np.abs(reference).max()
        assert np.abs(fused - unfused).max() < 0.02 * spread
        assert np.abs(fused - reference).max() < 0.1 * spread


def _dequantized_init(inits: dict, dq) -> np.ndarray:
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    return q * (scale.reshape(-1, *[1] * (q.ndim - 1)) if scale.size > 1 else scale)


def test_fit_scales_coarsens_saturating_channels_and_the_bias_follows(tmp_path):
    """On ONNX Runtime's own 8-bit QDQ graph: the channels with a large same-sign pair get
    a coarser scale, their int32 bias is requantized to input x weight scale with the same
    float value, and the graph computes nearly what it did."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgeopt.calibrate.quantize import CalibrationReader

    fp32 = _big_weight_model(tmp_path / "big.onnx")
    rng = np.random.default_rng(4)
    calib = [{"input": rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]

    path = tmp_path / "ort.onnx"
    quantize_static(str(fp32), str(path), CalibrationReader(calib, None), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    w_dq, b_dq, x_dq = (producer[conv.input[i]] for i in (1, 2, 0))
    bias_before = _dequantized_init(inits, b_dq)
    weight_before = _dequantized_init(inits, w_dq)
    scale_before = numpy_helper.to_array(inits[w_dq.input[1]]).copy()
    before = _run(path, calib[0], False)

    changed, seen = fit_scales(model)
    assert 0 < changed <= seen
    onnx.save(model, str(tmp_path / "fitted.onnx"))
    w_scale = numpy_helper.to_array(inits[w_dq.input[1]])
    assert np.all(w_scale >= scale_before) and np.any(w_scale > scale_before * 1.01)
    x_scale = numpy_helper.to_array(inits[x_dq.input[1]])
    np.testing.assert_allclose(numpy_helper.to_array(inits[b_dq.input[1]]),
                               x_scale * w_scale, rtol=1e-6)
    bias_after = _dequantized_init(inits, b_dq)
    assert np.abs(bias_after - bias_before).max() <= x_scale * w_scale.max()
    assert np.abs(_dequantized_init(inits, w_dq) - weight_before).max() <= w_scale.max()
    rows, _ = reduction_rows(numpy_helper.to_array(inits[w_dq.input[0]]), "Conv", {})
    assert not over_limit(rows).any()
    after = _run(tmp_path / "fitted.onnx", calib[0], False)
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()


def _ov_conv(x: np.ndarray, w: np.ndarray) -> float:
    """One int8 convolution in OpenVINO's CPU plugin (FakeQuantize on both inputs)."""
    import openvino as ov
    import openvino.opset13 as ops

    param = ops.parameter(list(x.shape), np.float32, name="x")
    zero, top = np.float32(0), np.float32(255)
    fq = ops.fake_quantize(param, zero, top, zero, top, 256)
    lo, hi = np.float32(-127), np.float32(127)
    weights = ops.fake_quantize(ops.constant(w.astype(np.float32)), lo, hi, lo, hi, 255)
    conv = ops.convolution(fq, weights, [1, 1], [0, 0], [0, 0], [1, 1])
    compiled = ov.Core().compile_model(ov.Model([conv], [param]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    return float(compiled(x)[0][0, 0, 1, 1])


def test_openvino_pairs_channels_within_each_tap_on_avx2():
    """OpenVINO's oneDNN saturates the same way, but pads each tap's channels to an even
    count: with 3 channels, (c0, c1) of one tap is a pair and c2 is alone."""
    reason = _saturating_cpu()
    if reason:
        pytest.skip(reason)
    x = np.full((1, 3, 5, 5), 255, np.float32)
    order = hwio_order(3, 3, 3)
    for i, j in ((0, 1), (2, 3), (1, 2), (3, 4), (5, 6), (0, 3)):
        w = np.zeros((4, 27), np.float32)                  # positions in reduction order
        w[0, [i, j]] = 127
        w = w[:, np.argsort(order)].reshape(4, 3, 3, 3)    # back to OIHW
        saturated = _ov_conv(x, w) != 255 * 254
        rows, _ = reduction_rows(np.round(w), "Convolution", {}, even_channels=True)
        assert saturated == bool(over_limit(rows).any()), (i, j)


def test_openvino_weight_scales_are_fitted(tmp_path):
    """NNCF's int8 weights (Constant i8 -> Convert -> Multiply): after the guard no pair of
    any convolution or MatMul is over the limit, in OpenVINO's pairing."""
    import openvino as ov

    from edgeopt.calibrate import quantize_for_openvino
    from edgeopt.convert import to_openvino_ir

    fp32 = _big_weight_model(tmp_path / "big.onnx")
    xml = to_openvino_ir(fp32, tmp_path / "big.xml")
    rng = np.random.default_rng(5)
    calib = [{"input": rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    result = quantize_for_openvino(xml, tmp_path / "big.int8.xml", calib)
    assert any("saturation guard" in n for n in result.notes), result.notes
    checked = 0
    for op in ov.Core().read_model(str(result.path)).get_ops():
        if op.get_type_name() not in {"Convolution", "MatMul"}:
            continue
        const = op.input_value(1).get_node().input_value(0).get_node().input_value(0).get_node()
        attrs = {"transpose_b": bool(op.get_attributes().get("transpose_b"))}
        rows, _ = reduction_rows(const.get_data(), op.get_type_name(), attrs, True)
        assert not over_limit(rows).any(), op.get_friendly_name()
        checked += 1
    assert checked == 3


def test_openvino_bias_takes_the_requantized_weights_mean_shift(tmp_path):
    """A coarser weight scale moves each output channel's mean; with the inputs' means the
    guard folds that shift into NNCF's bias, so the convolution's mean error to FP32
    shrinks against the same guard without it."""
    import nncf
    import openvino as ov

    from edgeopt.calibrate.quantize_ov import fit_weight_scales, input_means
    from edgeopt.convert import to_openvino_ir

    torch.manual_seed(1)
    # NNCF gives the first layer 7-bit weights itself (OverflowFix.FIRST_LAYER): the
    # convolution under test is the second
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 1))
    with torch.no_grad():
        model[2].weight.copy_(model[2].weight.abs() + 0.5 * model[2].weight.abs().max())
    export_onnx(model.eval(), (torch.randn(1, 16, 8, 8),), tmp_path / "conv.onnx")
    xml = to_openvino_ir(tmp_path / "conv.onnx", tmp_path / "conv.xml")
    rng = np.random.default_rng(6)
    calib = [{"input": rng.uniform(0, 1, (1, 16, 8, 8)).astype(np.float32)} for _ in range(16)]
    fp32 = ov.Core().read_model(str(xml))
    quantized = nncf.quantize(fp32, nncf.Dataset(calib), subset_size=len(calib))
    core = ov.Core()

    def mean_error(model) -> float:
        compiled, reference = core.compile_model(model, "CPU"), core.compile_model(fp32, "CPU")
        diff = np.mean([compiled(s)[0] - reference(s)[0] for s in calib], axis=0)
        return float(np.abs(diff.mean(axis=(0, 2, 3))).mean())

    plain, corrected = quantized.clone(), quantized.clone()
    assert fit_weight_scales(plain)[0] > 0
    assert fit_weight_scales(corrected, input_means(fp32, calib))[0] > 0
    assert mean_error(corrected) < 0.5 * mean_error(plain)
