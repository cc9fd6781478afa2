"""K-means weight palettization on tiny hand-built graphs: maths, sizes, both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.calibrate.errors import CalibrationError
from edgeopt.calibrate.palettize import (
    PalettizeError,
    assign,
    kmeans_1d,
    palettize_onnx,
    uniform_blockwise_onnx,
    uniform_grid,
)

X = np.random.default_rng(7).standard_normal((1, 8, 8, 8)).astype(np.float32)


def _save_mixed(path: Path, seed: int = 0, opset: int = 17) -> Path:
    """Conv(8->32, 3x3) -> Relu -> Conv(32->32, 3x3) -> GlobalAveragePool -> Flatten ->
    Gemm(32->128, transB=1) -> Relu -> MatMul(128->16). Input 1x8x8x8, output 1x16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {"w0": rng.standard_normal((32, 8, 3, 3)), "b0": rng.standard_normal(32),
              "w1": rng.laplace(size=(32, 32, 3, 3)) * 0.1, "wg": rng.standard_normal((128, 32)),
              "bg": rng.standard_normal(128), "wm": rng.standard_normal((128, 16)) * 0.2}
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("GlobalAveragePool", ["c1"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], transB=1, name="fc"),
        helper.make_node("Relu", ["g"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "wm"], ["output"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mixed(tmp_path: Path, monkeypatch) -> Path:
    # The tiny layers here have 32-144 weights per output channel; the fan-in rule is
    # tested on its own below.
    monkeypatch.setattr("edgeopt.calibrate._palette_rules.MIN_FAN_IN", 16)
    return _save_mixed(tmp_path / "mixed.onnx")


def test_layers_with_few_weights_per_channel_stay_as_they_are(tmp_path):
    from edgeopt.calibrate.palettize import MIN_FAN_IN

    report = palettize_onnx(_save_mixed(tmp_path / "mixed.onnx"), tmp_path / "p.onnx", 4, 4)
    rows = {r["name"]: r for r in report["layers"]}
    small = [n for n, r in rows.items() if r["bits"] is None
             and f"< {MIN_FAN_IN}" in (r["kept_unpalettized"] or "")]
    assert "wg" in small                                   # Gemm 128x32: 32 per channel
    assert all(r["bits"] == 4 for n, r in rows.items() if n not in small)
    assert len(small) < len(rows)


def _ort(path: Path, feeds=None) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds or {"input": X})[0]


def _ov(path: Path) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled({"input": X})[compiled.outputs[0]])


def _decoded(original: Path, palettized: Path, out: Path) -> Path:
    """The original graph with each palettized weight replaced by its LUT-decoded values,
    decoded here in numpy from the stored tables and indices (an independent check)."""
    import onnx
    from onnx import numpy_helper

    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(palettized)).graph.initializer}
    model = onnx.load(str(original))
    for init in model.graph.initializer:
        if f"{init.name}.palette_idx" not in stored:
            continue
        weight = numpy_helper.to_array(init)
        axis = 0 if weight.ndim == 4 or init.name == "wg" else weight.ndim - 1
        lut = stored[f"{init.name}.palette_lut"]
        idx = stored[f"{init.name}.palette_idx"].astype(np.int64)
        moved = np.moveaxis(weight, axis, 0)
        values = np.take_along_axis(lut, idx, 1).astype(weight.dtype).reshape(moved.shape)
        if f"{init.name}.palette_scale" in stored:        # tables shared by several channels
            values = values * stored[f"{init.name}.palette_scale"].astype(weight.dtype)
        init.CopyFrom(numpy_helper.from_array(np.moveaxis(values, 0, axis), init.name))
    onnx.save(model, str(out))
    return out


# ------------------------------------------------------------------ maths


@pytest.mark.parametrize("law", ["gaussian", "laplace"])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_never_worse_than_uniform_grid(law, bits, weighted):
    rng = np.random.default_rng(bits)
    values = rng.standard_normal((12, 500)) if law == "gaussian" else rng.laplace(size=(12, 500))
    importance = values ** 2 if weighted else np.ones_like(values)
    k = 1 << bits

    def cost(centroids):
        idx = assign(values, centroids).astype(np.int64)
        err = values - np.take_along_axis(centroids, idx, 1)
        return (importance * err ** 2).sum(1)

    kmeans = cost(kmeans_1d(values, k, importance if weighted else None))
    absmax = np.abs(values).max(1, keepdims=True)
    symmetric = absmax / (k // 2 - 1 or 1) * (np.arange(k) - k // 2)
    assert np.all(kmeans <= cost(uniform_grid(values, k)) * (1 + 1e-9))
    assert np.all(kmeans <= cost(symmetric) * (1 + 1e-9))
    assert kmeans.sum() < 0.9 * cost(uniform_grid(values, k)).sum()   # and clearly better here


def test_kmeans_is_deterministic_and_sorted():
    values = np.random.default_rng(0).standard_normal((5, 300))
    a, b = kmeans_1d(values, 16), kmeans_1d(values, 16)
    assert np.array_equal(a, b)
    assert np.all(np.diff(a, axis=1) >= 0)


# ------------------------------------------------------------------ sizes and graph


@pytest.mark.parametrize(("bits", "group"), [(4, 1), (3, 2), (8, 16)])
def test_lut_and_packed_index_bytes_match_arithmetic(mixed, tmp_path, bits, group):
    import onnx
    from onnx import TensorProto

    out = tmp_path / "p.onnx"
    report = palettize_onnx(mixed, out, bits, group)
    stored = {i.name: i for i in onnx.load(str(out)).graph.initializer}
    rows = {r["name"]: r for r in report["layers"]}
    assert report["palettized_layers"] == sum(r["bits"] is not None for r in rows.values()) > 0
    for name, row in rows.items():
        if row["bits"] is None:
            assert row["kept_unpalettized"] and name in stored
            continue
        n = int(np.prod(row["shape"]))
        idx, lut = stored[f"{name}.palette_idx"], stored[f"{name}.palette_lut"]
        assert name not in stored
        assert idx.data_type == (TensorProto.UINT4 if bits <= 4 else TensorProto.UINT8)
        assert len(idx.raw_data) == ((n + 1) // 2 if bits <= 4 else n)
        assert lut.data_type == TensorProto.FLOAT16
        assert list(lut.dims) == [row["shape"][0 if name != "wm" else 1] // group, 1 << bits]
        assert row["groups"] == lut.dims[0]
        scale = stored.get(f"{name}.palette_scale")
        assert (scale is not None) == (group > 1)             # fp16, one per output channel
        scale_bytes = 0 if scale is None else len(scale.raw_data)
        assert scale_bytes == (0 if group == 1 else 2 * lut.dims[0] * group)
        assert row["palettized_bytes"] == len(idx.raw_data) + len(lut.raw_data) + scale_bytes
        assert row["original_bytes"] == 4 * n
    sizes = report["size_bytes"]
    assert sizes["after"] < sizes["before"] and report["size_zipped_bytes"]["after"] > 0


def test_pay_rule_keeps_small_tables_and_biases(mixed, tmp_path):
    report = palettize_onnx(mixed, tmp_path / "p.onnx", 4)
    rows = {r["name"]: r for r in report["layers"]}
    assert "b0" not in rows and "bg" not in rows                    # biases are never taken
    # Gemm 128x32, one table per channel: 32 B of tables per 16 B of indices
    assert rows["wg"]["bits"] is None and "tables" in rows["wg"]["kept_unpalettized"]
    assert {n for n, r in rows.items() if r["bits"] == 4} == {"w0", "w1", "wm"}
    rows = {r["name"]: r for r in palettize_onnx(mixed, tmp_path / "q.onnx", 4, 4)["layers"]}
    assert rows["wg"]["bits"] == 4


@pytest.mark.parametrize(("bits", "group"), [(4, 1), (4, 2), (6, 16)])
def test_ort_and_openvino_match_the_decoded_graph(mixed, tmp_path, bits, group):
    out = tmp_path / "p.onnx"
    palettize_onnx(mixed, out, bits, group)
    reference = _decoded(mixed, out, tmp_path / "decoded.onnx")
    expected = _ort(reference)
    np.testing.assert_array_equal(_ort(out), expected)
    np.testing.assert_allclose(_ov(out), _ov(reference), rtol=0, atol=1e-5)
    assert not np.array_equal(expected, _ort(mixed))             # the weights did change


def test_uniform_blockwise_runs_in_both_runtimes(mixed, tmp_path):
    out = tmp_path / "u.onnx"
    report = uniform_blockwise_onnx(mixed, out, 4, 4)
    assert report["palettized_layers"] == 4
    got, ov_got, fp32 = _ort(out), _ov(out), _ort(mixed)
    np.testing.assert_allclose(ov_got, got, rtol=1e-4, atol=1e-4)
    assert np.corrcoef(got.ravel(), fp32.ravel())[0, 1] > 0.9
    palettized = palettize_onnx(mixed, tmp_path / "p.onnx", 4, 4)
    for u, p in zip(report["layers"], palettized["layers"], strict=True):
        assert p["weight_sqnr_db"] >= u["weight_sqnr_db"], (p, u)


def test_palettizes_the_int8_codes_of_a_qdq_graph(mixed, tmp_path):
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgeopt.calibrate import integer_kernel_counts

    class Reader:
        def __init__(self):
            rng = np.random.default_rng(1)
            self.samples = iter([{"input": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.samples, None)

    int8 = tmp_path / "int8.onnx"
    quantize_static(str(mixed), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    out = tmp_path / "int8.pal.onnx"
    report = palettize_onnx(int8, out, 4, 2)
    assert report["palettized_layers"] >= 3
    luts = [i for i in onnx.load(str(out)).graph.initializer if i.name.endswith(".palette_lut")]
    assert luts and all(i.data_type == TensorProto.INT8 for i in luts)
    before, after = integer_kernel_counts(int8), integer_kernel_counts(out)
    assert after.get("QLinearConv", 0) == before.get("QLinearConv", 0) == 2, (before, after)
    assert after == before                                        # the same integer kernels
    got, ref = _ort(out), _ort(int8)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9
    np.testing.assert_allclose(_ov(out), got, rtol=0.05, atol=0.05 * np.abs(got).max())


# ------------------------------------------------------------------ accuracy budget


def test_sensitive_layer_keeps_more_bits(mixed, tmp_path):
    import onnx

    def evaluate(path: Path) -> float:
        """Penalises 'w1' below 6 bits; everything else is free."""
        stored = {i.name: i for i in onnx.load(str(path)).graph.initializer}
        lut = stored.get("w1.palette_lut")
        return 1.0 if lut is None or lut.dims[1] >= 64 else 0.5

    seen = []
    report = palettize_onnx(mixed, tmp_path / "p.onnx", 4, 4, evaluate=evaluate,
                            max_accuracy_drop=0.01, progress=lambda d, t: seen.append((d, t)))
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["w1"]["bits"] == 6 and "sensitive" in rows["w1"]["kept_unpalettized"]
    assert all(rows[n]["bits"] == 4 for n in ("w0", "wg", "wm"))
    assert report["metric_before"] == report["metric_after"] == 1.0 and report["budget_met"]
    assert seen and all(d <= t for d, t in seen)


def test_layer_that_breaks_budget_at_any_bits_stays_unpalettized(mixed, tmp_path):
    import onnx

    def evaluate(path: Path) -> float:
        names = {i.name for i in onnx.load(str(path)).graph.initializer}
        return 0.0 if "wm.palette_lut" in names else 1.0

    report = palettize_onnx(mixed, tmp_path / "p.onnx", 4, evaluate=evaluate,
                            max_accuracy_drop=0.0)
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["wm"]["bits"] is None
    assert rows["wm"]["kept_unpalettized"].startswith("kept unpalettized")
    assert rows["w1"]["bits"] == 4 and report["metric_after"] == 1.0


# ------------------------------------------------------------------ user errors


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"bits": 1}, "bits must be an integer from 2 to 8, got 1"),
    ({"bits": 9}, "bits must be an integer from 2 to 8, got 9"),
    ({"bits": 4, "group_size": 0}, "group size must be a positive number"),
    ({"bits": 4, "group_size": 3}, "group size 3 does not divide the 32 output channels"),
    ({"bits": 4, "max_accuracy_drop": 0.01}, "needs an evaluate callable"),
])
def test_bad_arguments_give_one_line_errors_and_no_file(mixed, tmp_path, kwargs, text):
    out = tmp_path / "out" / "p.onnx"
    out.parent.mkdir()
    with pytest.raises(PalettizeError) as info:
        palettize_onnx(mixed, out, **kwargs)
    message = str(info.value)
    assert text in message and "\n" not in message
    assert isinstance(info.value, CalibrationError)
    assert list(out.parent.iterdir()) == []


def test_nothing_to_palettize(tmp_path):
    from tiny_models import save_tiny_onnx

    model = save_tiny_onnx(tmp_path / "tiny.onnx")       # 216 + 32 weights: too few to pay
    with pytest.raises(PalettizeError, match="nothing to palettize in tiny.onnx at 4 bits"):
        palettize_onnx(model, tmp_path / "p.onnx", 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_input_is_never_overwritten(mixed):
    before = mixed.read_bytes()
    with pytest.raises(PalettizeError, match="is the input model"):
        palettize_onnx(mixed, mixed, 4)
    assert mixed.read_bytes() == before


def test_failed_evaluation_leaves_no_file(mixed, tmp_path):
    def evaluate(path: Path) -> float:
        raise RuntimeError("evaluation crashed")

    with pytest.raises(RuntimeError):
        palettize_onnx(mixed, tmp_path / "p.onnx", 4, evaluate=evaluate, max_accuracy_drop=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.onnx"]
