"""INT8 for both runtimes on a tiny CNN: integer kernels, closeness to FP32, clean failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeopt.calibrate import (
    CalibrationDataError,
    integer_kernel_counts,
    quantize_for_openvino,
    quantize_onnx_for_ort,
)
from edgeopt.convert import export_onnx, to_openvino_ir


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory) -> Path:
    from tiny_models import tiny_cnn

    path = tmp_path_factory.mktemp("q") / "cnn.onnx"
    export_onnx(tiny_cnn(), (torch.randn(1, 3, 16, 16),), path)
    return path


@pytest.fixture(scope="module")
def calib() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(16)]


def _cosine(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ort(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]


def test_ort_int8_runs_integer_kernels_and_stays_close(cnn_onnx, calib, tmp_path):
    out = tmp_path / "cnn.int8.onnx"
    seen = []
    result = quantize_onnx_for_ort(cnn_onnx, out, calib, progress=lambda d, t: seen.append((d, t)))
    assert result.path == out and out.is_file()
    counts = integer_kernel_counts(out)
    # every conv, the first included, runs as an integer kernel by default for ONNX Runtime
    import onnx

    convs = sum(n.op_type == "Conv" for n in onnx.load(str(cnn_onnx)).graph.node)
    assert counts.get("QLinearConv", 0) == convs and "Conv" not in counts, counts
    assert seen and seen[-1] == (16, 16)
    x = calib[3]
    assert _cosine(_ort(cnn_onnx, x), _ort(out, x)) > 0.99
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_ov_int8_has_fake_quantize_and_stays_close(cnn_onnx, calib, tmp_path):
    import openvino as ov

    fp32_xml = to_openvino_ir(cnn_onnx, tmp_path / "cnn.xml")
    out = tmp_path / "cnn.int8.xml"
    result = quantize_for_openvino(fp32_xml, out, calib)
    assert out.is_file() and out.with_suffix(".bin").is_file()
    model = ov.Core().read_model(str(out))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    assert any("NNCF" in note for note in result.notes)
    compiled = ov.Core().compile_model(model, "CPU")
    x = calib[5]
    assert _cosine(_ort(cnn_onnx, x), compiled(x)[0]) > 0.99
    # per-layer SQNR of the FakeQuantize outputs against the FP32 IR, worst first
    sqnr = [r["sqnr_db"] for r in result.layer_sqnr]
    fq = sum(op.get_type_name() == "FakeQuantize"
             and op.input_value(0).get_node().get_type_name() != "Constant"
             for op in model.get_ops())
    assert len(sqnr) == fq and sqnr == sorted(sqnr) and all(5 < v < 80 for v in sqnr)


def test_nan_calibration_names_sample_and_input(cnn_onnx, calib, tmp_path):
    bad = [dict(s) for s in calib]
    bad[7] = {"input": np.full((1, 3, 16, 16), np.nan, dtype=np.float32)}
    out = tmp_path / "x.onnx"
    with pytest.raises(CalibrationDataError, match=r"sample 7 input 'input' contains NaN"):
        quantize_onnx_for_ort(cnn_onnx, out, bad)
    assert not out.exists()


def test_mismatched_inputs_are_named(cnn_onnx, calib, tmp_path):
    with pytest.raises(CalibrationDataError, match=r"has inputs pixels, the model takes input"):
        quantize_onnx_for_ort(cnn_onnx, tmp_path / "x.onnx", [{"pixels": calib[0]["input"]}])
    wrong = [{"input": np.zeros((1, 3, 8, 8), dtype=np.float32)}]
    with pytest.raises(CalibrationDataError, match=r"has shape 1x3x8x8, the model takes 1x3x16x16"):
        quantize_onnx_for_ort(cnn_onnx, tmp_path / "x.onnx", wrong)
    as_int = [{"input": np.zeros((1, 3, 16, 16), dtype=np.int64)}]
    with pytest.raises(CalibrationDataError, match=r"is int64, the model takes float32"):
        quantize_onnx_for_ort(cnn_onnx, tmp_path / "x.onnx", as_int)
    assert not list(tmp_path.iterdir())


def test_calibration_files_loading(tmp_path):
    from edgeopt.calibrate import load_calibration

    specs = [("input", "float32", (1, 3, 4, 4))]
    np.save(tmp_path / "stack.npy", np.ones((5, 3, 4, 4), dtype=np.float32))
    np.savez(tmp_path / "one.npz", input=np.zeros((1, 3, 4, 4), dtype=np.float32))
    samples = load_calibration(tmp_path, specs)
    assert len(samples) == 6 and all(s["input"].shape == (1, 3, 4, 4) for s in samples)
    assert len(load_calibration(tmp_path, specs, limit=2)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationDataError, match="holds no .npy or .npz files"):
        load_calibration(empty, specs)
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(CalibrationDataError, match=r"broken.npy: cannot read it"):
        load_calibration(tmp_path / "broken.npy", specs)


def test_statistics_are_exact_min_max_in_bounded_memory(tiny_onnx):
    import onnx
    import onnxruntime as ort

    from edgeopt.calibrate.stats import collect_stats

    rng = np.random.default_rng(3)
    samples = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(40)]
    stats = collect_stats(tiny_onnx, samples, reservoir=256)
    assert {"input", "c", "r", "logits"} <= set(stats)
    assert all(s.reservoir.size <= 256 for s in stats.values())
    model = onnx.load(str(tiny_onnx))
    model.graph.output.append(onnx.ValueInfoProto(name="r"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    relu = np.stack([session.run(["r"], s)[0] for s in samples])
    assert stats["r"].min == pytest.approx(float(relu.min()))
    assert stats["r"].max == pytest.approx(float(relu.max()), rel=1e-6)
    assert stats["r"].count == relu.size


def test_bias_correction_removes_the_weight_rounding_mean_shift(cnn_onnx, calib, tmp_path):
    """Each corrected conv's mean output matches its FP32-weight output on the same inputs."""
    import onnx

    from edgeopt.calibrate import QuantConfig
    from edgeopt.calibrate.bias_correction import _channel_means

    plain = quantize_onnx_for_ort(cnn_onnx, tmp_path / "plain.onnx", calib,
                                  QuantConfig(keep_first_fp32=False, weight_rounding=False,
                                              bias_correction=False))
    fixed = quantize_onnx_for_ort(cnn_onnx, tmp_path / "fixed.onnx", calib,
                                  QuantConfig(keep_first_fp32=False, weight_rounding=False))
    assert any("bias correction" in n and "2 convolutions" in n for n in fixed.notes), fixed.notes
    fp32 = onnx.load(str(cnn_onnx))
    fp_convs = [n.output[0] for n in fp32.graph.node if n.op_type == "Conv"]
    q_convs = [n.output[0] for n in onnx.load(str(plain.path)).graph.node if n.op_type == "Conv"]
    ref = _channel_means(fp32, fp_convs, calib)
    before = _channel_means(onnx.load(str(plain.path)), q_convs, calib)
    after = _channel_means(onnx.load(str(fixed.path)), q_convs, calib)
    # the second conv: its shift is the one bias correction targets (input already quantized)
    err_before = np.abs(before[q_convs[1]] - ref[fp_convs[1]]).mean()
    err_after = np.abs(after[q_convs[1]] - ref[fp_convs[1]]).mean()
    assert err_after < err_before


def test_gptq_rounding_lowers_the_layer_output_error():
    """On correlated inputs, data-aware rounding beats round-to-nearest in output error."""
    from edgeopt.calibrate.rounding import gptq_rows

    rng = np.random.default_rng(0)
    mix = rng.standard_normal((16, 16))
    x = rng.standard_normal((4000, 16)) @ mix            # correlated input channels
    h = x.T @ x / len(x)
    w = rng.standard_normal((32, 16))
    scale = np.abs(w).max(axis=1) / 127 * 8               # coarse grid: rounding matters
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    gptq = gptq_rows(w, scale, h, -127, 127)
    assert np.all(np.abs(gptq) <= 127) and np.array_equal(gptq, np.round(gptq))

    def output_error(q):
        d = w - q * scale[:, None]
        return float(np.einsum("ck,kl,cl->", d, h, d))

    assert output_error(gptq) < 0.8 * output_error(nearest)


def _activation_scales(path) -> dict[str, float]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]].ravel()[0]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_the_calibrator_sets_the_scales_in_both_runtimes(cnn_onnx, tmp_path):
    """Switching calibrator changes the INT8 graph's activation scales to that calibrator's."""
    import openvino as ov

    rng = np.random.default_rng(7)      # heavy tails, so k-means has a clip worth taking
    calib = [{"input": rng.standard_t(2, (1, 3, 16, 16)).astype(np.float32)} for _ in range(16)]

    from edgeopt.calibrate import QuantConfig
    from edgeopt.calibrate.calibrators import compute_ranges
    from edgeopt.calibrate.quantize import activation_stats

    stats = activation_stats(cnn_onnx, calib)
    xml = tmp_path / "cnn.xml"
    to_openvino_ir(cnn_onnx, xml)
    scales, fq_highs = {}, {}
    for name in ("minmax", "kmeans", "mean-minmax"):
        config = QuantConfig(calibrator=name)
        quantize_onnx_for_ort(cnn_onnx, tmp_path / f"{name}.onnx", calib, config, stats=stats)
        scales[name] = _activation_scales(tmp_path / f"{name}.onnx")
        # the graph input keeps its full range in ONNX Runtime, whatever the calibrator
        ranges = compute_ranges(stats, name, inputs=["input"])
        assert ranges["input"] == compute_ranges(stats, "minmax")["input"]
        assert "input" in scales[name]
        for tensor, scale in scales[name].items():        # ORT: scale = range / 255
            r = ranges[tensor]
            assert scale == pytest.approx((max(r.rmax, 0) - min(r.rmin, 0)) / 255, rel=1e-5)
        result = quantize_for_openvino(xml, tmp_path / f"{name}-ov.xml", calib, config,
                                       stats=stats)
        assert result.ranges_applied >= 1
        model = ov.Core().read_model(str(tmp_path / f"{name}-ov.xml"))
        fq_highs[name] = sorted(float(fq.input_value(2).get_node().get_data().ravel()[0])
                                for fq in model.get_ops() if fq.get_type_name() == "FakeQuantize"
                                and fq.input_value(0).get_node().get_type_name() != "Constant")
    for other in ("kmeans", "mean-minmax"):
        assert scales["minmax"] != scales[other]
        assert fq_highs["minmax"] != fq_highs[other]


def test_outputs_stay_float_and_layer_sqnr_is_reported(cnn_onnx, calib, tmp_path):
    import onnx

    result = quantize_onnx_for_ort(cnn_onnx, tmp_path / "q.onnx", calib)
    model = onnx.load(str(tmp_path / "q.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    assert all(producer[o.name].op_type != "DequantizeLinear" for o in model.graph.output)
    sqnr = [r["sqnr_db"] for r in result.layer_sqnr]
    assert sqnr and sqnr == sorted(sqnr) and all(5 < v < 80 for v in sqnr)


def test_full_conv_patches_are_in_weight_row_order():
    """rows(W) @ patches reproduces the convolution, so GPTQ's H = E[p p^T] is the right one."""
    from edgeopt.calibrate.input_moments import _patches_full

    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2,
                                      padding=1).numpy()
    flat = _patches_full(x.astype(np.float64), 3, 3, [2, 2], [1, 1, 1, 1])
    got = (w.reshape(5, -1) @ flat.T).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _three_convs(path: Path) -> Path:
    """input -> conv a -> relu -> conv b (1x1, linear) -> conv c -> output."""
    from onnx import helper, numpy_helper

    from tiny_models import _save

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
             for name, shape in (("wa", (8, 3, 3, 3)), ("wb", (8, 8, 1, 1)), ("wc", (4, 8, 3, 3)))]
    inits += [numpy_helper.from_array(rng.standard_normal(n).astype(np.float32) * 0.1, f"b{c}")
              for c, n in (("a", 8), ("b", 8), ("c", 4))]
    nodes = [helper.make_node("Conv", ["input", "wa", "ba"], ["ya"], name="a", pads=[1] * 4),
             helper.make_node("Relu", ["ya"], ["ra"], name="relu"),
             helper.make_node("Conv", ["ra", "wb", "bb"], ["yb"], name="b"),
             helper.make_node("Conv", ["yb", "wc", "bc"], ["output"], name="c", pads=[1] * 4)]
    return _save(path, "three_convs", nodes, inits, ("output", [1, 4, 8, 8]))


def test_an_fp32_node_stays_float_when_onnx_runtime_loads_it(tmp_path):
    """ONNX Runtime's WeightBiasQuantization would give the excluded conv, read through a
    DequantizeLinear and read by a QuantizeLinear, per-tensor int8 weights at load time."""
    import onnxruntime as ort

    from edgeopt.calibrate import QuantConfig

    model = _three_convs(tmp_path / "three.onnx")
    rng = np.random.default_rng(2)
    calib = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    result = quantize_onnx_for_ort(model, tmp_path / "q.onnx", calib,
                                   QuantConfig(exclude_nodes=("b",)))
    assert result.excluded_nodes == ("b",)
    assert any("per-channel DequantizeLinear" in n for n in result.notes), result.notes
    # a is integer; b stays float; c, whose output is the graph's, dequantizes its weights
    counts = integer_kernel_counts(result.path)
    assert counts.get("QLinearConv") == 1 and counts.get("Conv", 0) + counts.get("FusedConv", 0) == 2

    def run(disabled):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=disabled)
        return session.run(None, calib[0])[0]

    np.testing.assert_array_equal(run([]), run(["WeightBiasQuantization"]))
