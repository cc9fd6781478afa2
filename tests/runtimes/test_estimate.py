"""Latency estimates: graph costs by hand arithmetic, the fit, the dict, storage, errors.

No benchmarking here: measured figures belong in benchmarks/estimates.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.runtimes.devices import ComputeUnit, DeviceProfile, Figure

onnx = pytest.importorskip("onnx")
pytest.importorskip("scipy")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeopt.runtimes import _peaks as peaks  # noqa: E402
from edgeopt.runtimes import estimate as est  # noqa: E402
from edgeopt.runtimes._graph_costs import (  # noqa: E402
    EstimateUnavailable,
    ModelCosts,
    NodeCost,
)

BASIS = {"peak_gops": {"fp32": 100.0, "fp16": 100.0, "int8": 400.0}, "bandwidth_gbs": 10.0,
         "sources": {"fp32": "test"}, "arch": "x86_64"}
HOST = DeviceProfile("host-cpu", "test host", (ComputeUnit("cpu", "cpu", ("ort-cpu",),
                                                            ("fp32", "int8"), cores=2),),
                     host=True)


def _save(path: Path, nodes, inits, inputs, outputs) -> Path:
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _w(*shape) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


def _conv_model(path: Path, cin=4, cout=8, group=1, stride=1) -> Path:
    """Conv k3 pad1 on 1 x cin x 10 x 10."""
    out = 10 // stride
    return _save(path, [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1],
                                         strides=[stride, stride], group=group, name="conv")],
                 {"w": _w(cout, cin // group, 3, 3)}, [("x", [1, cin, 10, 10])],
                 [("y", [1, cout, out, out])])


def _costs(path: Path) -> list[NodeCost]:
    return list(est.model_costs(path).nodes)


def test_conv_ops_and_bytes(tmp_path):
    (c,) = _costs(_conv_model(tmp_path / "conv.onnx"))
    # 8 out channels x 10 x 10 outputs, each 4 x 3 x 3 MACs; 2 ops per MAC.
    assert (c.op_class, c.precision, c.ops) == ("conv", "fp32", 2 * 800 * 36)
    assert c.bytes == 4 * (400 + 288 + 800)         # input + weights + output, fp32


def test_grouped_and_depthwise_conv(tmp_path):
    (g,) = _costs(_conv_model(tmp_path / "g.onnx", cin=8, cout=8, group=2, stride=2))
    assert (g.op_class, g.ops) == ("conv", 2 * (8 * 5 * 5) * (4 * 9))
    (d,) = _costs(_conv_model(tmp_path / "dw.onnx", cin=8, cout=8, group=8))
    assert (d.op_class, d.ops) == ("depthwise", 2 * 800 * 9)
    assert d.bytes == 4 * (800 + 72 + 800)


def test_matmul_and_gemm(tmp_path):
    path = _save(tmp_path / "mm.onnx", [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="gemm"),
    ], {"w": _w(16, 32), "fw": _w(5, 7), "fb": _w(5)},
        [("x", [2, 3, 16]), ("f", [1, 7])], [("h", [2, 3, 32]), ("y", [1, 5])])
    mm, gemm = _costs(path)
    assert (mm.op_class, mm.ops) == ("matmul", 2 * (2 * 3 * 32) * 16)
    assert mm.bytes == 4 * (96 + 512 + 192)
    assert (gemm.op_class, gemm.ops) == ("matmul", 2 * 5 * 7)
    assert gemm.bytes == 4 * (7 + 35 + 5 + 5)


def test_qdq_conv_is_int8_with_int8_bytes(tmp_path):
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zp_u8 = numpy_helper.from_array(np.array(128, dtype=np.uint8), "zu")
    zp_s8 = numpy_helper.from_array(np.array(0, dtype=np.int8), "zs")
    wq = numpy_helper.from_array(np.ones((8, 4, 3, 3), dtype=np.int8), "wq")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zu"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zu"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["wq", "s", "zs"], ["wd"], name="dqw"),
        helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("QuantizeLinear", ["y", "s", "zu"], ["yq"], name="qy"),
        helper.make_node("DequantizeLinear", ["yq", "s", "zu"], ["out"], name="dqy"),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 10, 10])],
        [scale, zp_u8, zp_s8, wq])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "qdq.onnx"
    onnx.save(model, str(path))
    by_name = {c.name: c for c in _costs(path)}
    conv = by_name["conv"]
    assert (conv.op_class, conv.precision, conv.ops) == ("conv", "int8", 2 * 800 * 36)
    assert conv.bytes == 400 + 288 + 800            # everything at one byte
    assert by_name["dqw"].folded and by_name["dqx"].folded and by_name["qy"].folded
    # Quantizing the float graph input is real work: costed as elementwise.
    assert not by_name["qx"].folded and by_name["qx"].op_class == "elementwise"


def test_epilogue_and_shape_ops_are_folded(tmp_path):
    path = _save(tmp_path / "ep.onnx", [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Sigmoid", ["f"], ["y"], name="sig"),
    ], {"w": _w(8, 4, 3, 3)}, [("x", [1, 4, 10, 10])], [("y", [1, 800])])
    costs = est.model_costs(path)
    assert [n.folded for n in costs.nodes] == [False, True, True, False]
    assert costs.executed == 2
    # A sigmoid counts 8 ops per element (a polynomial), a plain elementwise op 1.
    assert costs.nodes[3].ops == 8 * 800 and costs.nodes[3].op_class == "elementwise"


def _synthetic(rng, n_models=40) -> list[ModelCosts]:
    """Random models; a quarter of them small enough for the overheads to dominate."""
    models = []
    for i in range(n_models):
        if i % 4 == 0:
            models.append(ModelCosts.from_nodes([NodeCost("n", "Relu", "elementwise", "fp32",
                                                          1e3, 1e3)] * int(rng.integers(1, 30))))
            continue
        nodes = []
        for cls in rng.choice(["conv", "depthwise", "matmul", "elementwise", "other"],
                              size=rng.integers(5, 40)):
            prec = "int8" if rng.random() < 0.4 else "fp32"
            ops = 10 ** rng.uniform(4, 8) if cls in {"conv", "matmul"} else 10 ** rng.uniform(3, 6)
            nodes.append(NodeCost("n", "Op", str(cls), prec, ops, 10 ** rng.uniform(3, 7)))
        # Odd ones too big for the cache: their bytes move at eta_mem, the others' at eta_cache.
        models.append(ModelCosts.from_nodes(nodes, weight_bytes=1e9 if i % 2 else 0.0))
    return models


def test_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    truth = {"eta_conv": 0.4, "eta_depthwise": 0.08, "eta_matmul": 0.25,
             "eta_elementwise": 0.03, "eta_other": 0.01, "eta_int8": 0.6, "eta_mem": 2.0, "eta_cache": 6.0,
             "node_us": 4.0, "call_us": 40.0}
    models = _synthetic(rng)
    p50 = [est.predict_ms(m, truth, BASIS) for m in models]
    fitted = est.fit_params(models, p50, BASIS, prior_sigma=None)
    for key, value in truth.items():
        assert fitted[key] == pytest.approx(value, rel=0.02), key
    # With the default (weak) prior the factors move towards it, the predictions hold.
    regularized = est.fit_params(models, p50, BASIS)
    pred = np.array([est.predict_ms(m, regularized, BASIS) for m in models])
    assert np.median(np.abs(pred / p50 - 1)) < 0.05


def _tiny_models(tmp_path) -> list[Path]:
    return [_conv_model(tmp_path / f"c{i}.onnx", cin=4 * i, cout=8 * i) for i in (1, 2, 3, 4)]


def _calibration(tmp_path, device=HOST) -> est.Calibration:
    paths = _tiny_models(tmp_path)
    measured = [est.Measurement(p.stem, p, 0.05 * (i + 1)) for i, p in enumerate(paths)]
    return est.calibrate(measured, device, device.units[0], "onnxruntime", basis=BASIS)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(peaks, "measure_bandwidth_gbs", lambda: (10.0, "test figure"))
    return tmp_path / "cache"


def test_calibration_round_trip(tmp_path, cache):
    cal = _calibration(tmp_path)
    assert len(cal.loo) == 4 and all("abs_pct" in r for r in cal.loo)
    path = est.save_calibration(cal)
    assert path == cache / "calibration.json" and path.is_file()
    assert not list(cache.glob(".calibration.*"))           # no temporary left behind
    loaded = est.load_calibration("host-cpu", "cpu", "onnxruntime")
    assert loaded == cal
    assert est.load_calibration("host-cpu", "cpu", "openvino") is None


def test_estimate_dict_with_own_calibration(tmp_path, cache, monkeypatch):
    cal = _calibration(tmp_path)
    monkeypatch.setattr(est, "detect_host", lambda: {"name": cal.host_cpu, "cores": 2,
                                                     "isa": ("avx2", "fma"), "memory_gb": 8})
    est.save_calibration(cal)
    model = _conv_model(tmp_path / "m.onnx", cin=16, cout=16)
    out = est.estimate(model, HOST, HOST.units[0], "onnxruntime")
    assert out["label"] == "estimated"
    assert out["low_ms"] < out["p50_ms"] < out["high_ms"]
    assert out["calibration"].startswith("this unit's own")
    assert "leave-one-out" in out["band"] and out["uncalibrated"] is False
    assert out["p50_ms"] == pytest.approx(
        est.predict_ms(est.model_costs(model), cal.params, BASIS), rel=1e-3)
    assert out["basis"]["gops_by_class"]["conv"]["fp32"] > 0


def _arm(**unit_fields) -> DeviceProfile:
    fields = {"cores": 4, "isa": ("asimd", "asimddp"),
              "peak_gops": {"fp32": Figure(150.0, "test"), "int8": Figure(600.0, "test")},
              "bandwidth_gbs": Figure(17.0, "test")} | unit_fields
    return DeviceProfile("rpi5", "Raspberry Pi 5", (
        ComputeUnit("cpu", "cpu", ("ort-arm",), ("fp32", "int8"), **fields),))


def test_transfer_from_host_is_marked_and_widened(tmp_path, cache):
    cal = _calibration(tmp_path)
    est.save_calibration(cal)
    arm = _arm()
    out = est.estimate(_tiny_models(tmp_path)[0], arm, arm.units[0], "ort-arm")
    assert out["label"] == "estimated" and out["runtime"] == "onnxruntime"
    assert out["calibration"].startswith("transferred from host-cpu:cpu")
    assert "x86_64 calibration applied to aarch64" in out["calibration"]
    assert out["high_ms"] / out["p50_ms"] >= max(cal.band_factor() ** 2, 2.0) * 0.999


def test_uncalibrated_kind_uses_prior(tmp_path, cache):
    npu = DeviceProfile("npu-box", "an NPU", (ComputeUnit(
        "npu", "npu", ("ov-npu",), ("int8",), peak_gops={"int8": Figure(11000.0, "test")},
        bandwidth_gbs=Figure(50.0, "test")),))
    out = est.estimate(_tiny_models(tmp_path)[0], npu, npu.units[0], "openvino")
    assert out["uncalibrated"] is True and out["calibration"].startswith("none:")
    assert "uncalibrated" in out["calibration"] and "uncalibrated" in out["band"]
    assert out["high_ms"] == pytest.approx(out["p50_ms"] * 3, rel=1e-2)
    assert "fp32 peak" not in out["basis"]["sources"]["int8"]


def test_missing_peaks_error_names_the_figures(tmp_path, cache):
    bare = _arm(peak_gops={}, bandwidth_gbs=None)
    with pytest.raises(est.MissingPeakFigures,
                       match=r"rpi5:cpu: its profile lacks peak_gops and bandwidth_gbs"):
        est.estimate(_tiny_models(tmp_path)[0], bare, bare.units[0], "onnxruntime")


def test_host_peaks_from_isa(cache, monkeypatch):
    monkeypatch.setattr(peaks, "host_clock_ghz", lambda: (2.5, "test"))
    unit = ComputeUnit("cpu", "cpu", ("ort-cpu",), ("fp32",), cores=2,
                       isa=("avx2", "fma", "avx512f", "avx512_vnni"))
    basis = est.unit_basis(HOST, unit)
    assert basis["peak_gops"]["fp32"] == 2 * 2.5 * 64
    assert basis["peak_gops"]["int8"] == 4 * 2 * 2.5 * 64
    assert "2 cores x 2.50 GHz" in basis["sources"]["fp32"]
    assert peaks.isa_flops_per_cycle(("asimd",))[:2] == (16, 2.0)


def test_missing_onnx_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "unseen.onnx"
    path.write_bytes(b"never parsed: onnx is missing")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(EstimateUnavailable, match=r"^latency estimates .*: pip install onnx$"):
        est.model_costs(path)


def test_not_onnx_is_refused(tmp_path):
    with pytest.raises(EstimateUnavailable, match="estimates read ONNX graphs"):
        est.model_costs(tmp_path / "model.xml")
