"""--ov-int8: OpenVINO's INT8 from the run's QDQ model (auto, for CNN-style graphs), or NNCF's."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeopt.calibrate.ov_route import ov_int8_route

from tiny_models import save_inverted_residual_onnx, save_tiny_onnx

QDQ_NOTE = "OpenVINO IR converted from that QDQ model"


def _save(path, nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _matmul_model(path):
    """A constant-weight MatMul and nothing else: a transformer-style graph to the quantizer."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    return _save(path, [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [w],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])


def _if_model(path):
    """A convolution whose result goes through an If (its branches: Relu or Identity)."""
    def branch(op, name):
        return helper.make_graph([helper.make_node(op, ["c"], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT,
                                                                [1, 2, 4, 4])])

    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    flag = numpy_helper.from_array(np.array(True), "flag")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("If", ["flag"], ["y"], name="if",
                              then_branch=branch("Relu", "then"),
                              else_branch=branch("Identity", "else"))]
    return _save(path, nodes, [w, flag],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])])


def test_auto_converts_the_qdq_model_only_where_nncf_has_nothing_more(tmp_path):
    cnn = save_tiny_onnx(tmp_path / "cnn.onnx")
    assert ov_int8_route(cnn, "auto")[0] == "qdq"
    route, why = ov_int8_route(_matmul_model(tmp_path / "mm.onnx"), "auto")
    assert route == "nncf" and "transformer" in why
    route, why = ov_int8_route(_if_model(tmp_path / "if.onnx"), "auto")
    assert route == "nncf" and "If ops" in why
    for mode in ("qdq", "nncf"):                      # asked for: taken as asked
        assert ov_int8_route(cnn, mode) == (mode, f"ov_int8 {mode}")


def _optimize(run_cli, model, out, *flags) -> dict:
    result = run_cli("optimize", model, "--out", out, "--calib", "random", "--no-bench",
                     "--quiet", *flags)
    assert result.code == 0, result.err
    return json.loads((out / "report.json").read_text())


def _int8(report, runtime) -> dict:
    (art,) = [a for a in report["artifacts"]
              if a["runtime"] == runtime and a["precision"] == "int8"]
    return art


def test_openvino_runs_the_onnx_runtime_int8_model_and_follows_its_choices(run_cli, tmp_path,
                                                                          host_isa):
    """Both runtimes: OpenVINO's INT8 is ONNX Runtime's settled QDQ model converted (the
    quantizer ran once for it), its choices as weighed there; its outputs are that model's."""
    from edgeopt.runtimes import get_adapter

    host_isa(("avx2",))                        # the guard is built and weighed here too
    model = save_inverted_residual_onnx(tmp_path / "net.onnx")
    out = tmp_path / "out"
    report = _optimize(run_cli, model, out)
    ort, ov = _int8(report, "onnxruntime"), _int8(report, "openvino")
    assert any(n.startswith(QDQ_NOTE) for n in ov["quantization"]["notes"])
    assert ov["quantization"]["excluded_nodes"] == ort["quantization"]["excluded_nodes"]
    weighed = [t for t in report["tradeoffs"] if t["runtime"] == "onnxruntime"]
    followed = [t for t in report["tradeoffs"] if t["runtime"] == "openvino"]
    assert [t["choice"] for t in weighed] == ["fp32-stem", "saturation-guard"], weighed
    assert [(t["choice"], t["kept"]) for t in followed] == [(t["choice"], t["kept"])
                                                             for t in weighed]
    assert all(t["follows"] == "onnxruntime (the same QDQ model)" for t in followed)
    assert "as weighed on onnxruntime (the same QDQ model)" in (out / "report.md").read_text()
    assert not [f for f in out.iterdir() if "without" in f.name or f.suffix == ".onnx"
                and "qdq" in f.name]
    rng = np.random.default_rng(3)
    feeds = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    got = {}
    for runtime, art, adapter in (("onnxruntime", ort, "ort-cpu"), ("openvino", ov, "ov-cpu")):
        loaded = get_adapter(adapter).load(out / art["path"])
        got[runtime] = np.concatenate([loaded.run(f)[0] for f in feeds])
    signal = float(np.sum(got["onnxruntime"] ** 2))
    noise = float(np.sum((got["onnxruntime"] - got["openvino"]) ** 2))
    assert 10 * np.log10(signal / max(noise, 1e-30)) > 30.0     # the same int8 model


def test_nncf_when_asked_and_then_openvino_weighs_its_own(run_cli, tmp_path, host_isa):
    host_isa(("avx2",))
    model = save_inverted_residual_onnx(tmp_path / "net.onnx")
    report = _optimize(run_cli, model, tmp_path / "out", "--ov-int8", "nncf")
    notes = _int8(report, "openvino")["quantization"]["notes"]
    assert any("NNCF" in n and "post-training quantization" in n for n in notes), notes
    assert notes[-1] == "NNCF for OpenVINO: ov_int8 nncf"
    assert not any(n.startswith(QDQ_NOTE) for n in notes)
    assert not [t for t in report["tradeoffs"] if "follows" in t]
    assert report["recipe"]["quant"]["ov_int8"] == "nncf"


def test_openvino_alone_weighs_the_qdq_model_choices_itself(run_cli, tmp_path, host_isa):
    host_isa(("avx2", "avx512_vnni"))          # no guard: only the stem is a choice
    model = save_inverted_residual_onnx(tmp_path / "net.onnx")
    report = _optimize(run_cli, model, tmp_path / "out", "--runtime", "openvino")
    assert any(n.startswith(QDQ_NOTE) for n in _int8(report, "openvino")["quantization"]["notes"])
    (stem,) = [t for t in report["tradeoffs"] if t["choice"] == "fp32-stem"]
    assert stem["runtime"] == "openvino" and "gain" in stem and "follows" not in stem
