"""Older ONNX opsets (7-12) and IR versions (3-6) are upgraded when the model is loaded,
with the same outputs; what cannot be converted is refused up front, naming op and opset."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.convert import ExportError, load_model, upgrade_opset


def _old_model(opset: int, ir: int):
    """Conv, BatchNormalization, Relu, (Upsample where the opset has it), pooling, Gemm,
    Softmax and Dropout, written as an exporter of that opset and IR version would."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(opset)
    arrays = {"w": rng.standard_normal((4, 3, 3, 3)), "s": rng.uniform(0.5, 1.5, 4),
              "b": rng.standard_normal(4) * 0.1, "m": rng.standard_normal(4) * 0.1,
              "v": rng.uniform(0.5, 1.5, 4), "fw": rng.standard_normal((5, 4)),
              "fb": np.zeros(5)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"],
                              **({"spatial": 1} if opset < 9 else {})),
             helper.make_node("Relu", ["bn"], ["r"])]
    last = "r"
    if opset <= 9:          # Upsample: an attribute until 9, an input at 9, gone at 10
        if opset == 9:
            arrays["sc"] = np.array([1, 1, 2, 2])
        nodes.append(helper.make_node("Upsample", ["r", "sc"] if opset == 9 else ["r"], ["u"],
                                      mode="nearest",
                                      **({} if opset == 9 else {"scales": [1.0, 1.0, 2.0, 2.0]})))
        last = "u"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fw", "fb"], ["o"], transB=1),
              helper.make_node("Softmax", ["o"], ["p"], axis=1),
              helper.make_node("Dropout", ["p"], ["y"])]
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if ir < 4:              # IR 3: every initializer is a graph input too
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                   for i in inits]
    graph = helper.make_graph(nodes, "old", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    checker.check_model(model)
    return model


def _run(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options).run(None, {"x": x})[0]


@pytest.mark.parametrize("ir", [3, 6])
@pytest.mark.parametrize("opset", [7, 8, 9, 10, 11, 12])
def test_old_opsets_and_ir_versions_are_upgraded_with_the_same_outputs(opset, ir):
    model = _old_model(opset, ir)
    upgraded, found = upgrade_opset(model)
    assert found == opset
    assert upgraded.opset_import[0].version == 17 and upgraded.ir_version >= 7
    initializers = {i.name for i in upgraded.graph.initializer}
    assert [i.name for i in upgraded.graph.input if i.name in initializers] == []
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(upgraded, x), _run(model, x), atol=1e-6)


def test_loading_upgrades_before_any_other_work_and_leaves_the_file(tmp_path):
    import onnx

    path = tmp_path / "old.onnx"
    onnx.save(_old_model(9, 4), str(path))
    before = path.read_bytes()
    source = load_model(str(path))
    assert source.extra["opset"] == 9
    assert source.extra["upgraded"].opset_import[0].version == 17
    assert path.read_bytes() == before


def test_an_op_that_cannot_be_converted_is_refused_up_front_by_name(monkeypatch, run_cli,
                                                                     tmp_path):
    """The converter fails on Upsample here (patched: every real opset 7-12 model built
    above converts); the one-line error names the op and both opsets, and nothing is
    written."""
    import onnx
    from onnx import version_converter

    real = version_converter.convert_version

    def refuses_upsample(model, target):
        if any(n.op_type == "Upsample" for n in model.graph.node):
            msg = "No Adapter For Current Version"
            raise RuntimeError(msg)
        return real(model, target)

    monkeypatch.setattr(version_converter, "convert_version", refuses_upsample)
    path = tmp_path / "old.onnx"
    onnx.save(_old_model(8, 6), str(path))
    with pytest.raises(ExportError, match=r"cannot bring Upsample from opset 8 to 17"):
        load_model(str(path))
    out = tmp_path / "out"
    result = run_cli("optimize", path, "--calib", "random", "--out", out, "--no-bench",
                     "--quiet")
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Upsample" in lines[0] and "opset 8" in lines[0], result.err
    assert not out.exists()
