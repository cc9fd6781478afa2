"""edgeopt.runtimes.capture: intermediate tensors of a model run on the host CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.runtimes import (
    capture_onnx,
    capture_openvino,
    onnx_input_specs,
    optimized_op_counts,
    read_openvino_model,
)

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5


def _model() -> onnx.ModelProto:
    """y = relu(x @ W) with a dynamic batch; 'h' is the intermediate MatMul output."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(n)]


def test_capture_onnx_gives_intermediate_tensors_and_leaves_the_model_alone():
    model = _model()
    before = model.SerializeToString()
    samples = _samples()
    runs = list(capture_onnx(model, samples, ["h", "y"]))
    assert model.SerializeToString() == before
    assert len(runs) == len(samples)
    for sample, (h, y) in zip(samples, runs, strict=True):
        np.testing.assert_allclose(h, sample["x"] @ W, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(y, np.maximum(sample["x"] @ W, 0), rtol=1e-6, atol=1e-6)


def test_capture_onnx_runs_samples_side_by_side_and_gives_them_back_in_order(monkeypatch):
    """By default several samples run at once on a one-thread session: each sample's values
    are those of one run at a time (threads=1), in sample order, and no more samples are
    read ahead than run at once."""
    import edgeopt.runtimes.capture as capture

    monkeypatch.setattr(capture, "workers", lambda: 3)
    samples = _samples(40)
    read = []

    def source():
        for i, sample in enumerate(samples):
            read.append(i)
            yield sample

    one = list(capture_onnx(_model(), samples, ["h", "y"], threads=1))
    taken = []
    for i, values in enumerate(capture_onnx(_model(), source(), ["h", "y"])):
        assert len(read) <= i + 1 + 3                 # at most 3 samples ahead of the caller
        taken.append(values)
    assert len(taken) == 40
    for a, b in zip(one, taken, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_capture_onnx_reads_a_path_and_ignores_keys_that_are_not_inputs(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    sample = {**_samples(1)[0], "not_an_input": np.zeros(1, np.float32)}
    [[h]] = list(capture_onnx(path, [sample], ["h"]))
    np.testing.assert_allclose(h, sample["x"] @ W, rtol=1e-6, atol=1e-6)


def test_capture_onnx_fails_when_called_on_a_model_it_cannot_load():
    broken = _model()
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(Exception, match="NoSuchOp"):
        capture_onnx(broken, _samples(), ["h"])


def test_onnx_input_specs_and_optimized_op_counts(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    (spec,) = onnx_input_specs(path)
    assert (spec.name, spec.dtype, spec.shape) == ("x", "float32", ("batch", 4))
    counts = optimized_op_counts(path)
    assert sum(counts.values()) >= 1
    assert set(counts) <= {"MatMul", "Relu", "FusedMatMul", "Gemm"}


def test_capture_openvino_returns_the_ports_asked_for(tmp_path):
    pytest.importorskip("openvino")
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    model = read_openvino_model(path)
    relu = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Relu")
    samples = _samples()
    runs = list(capture_openvino(model, samples, [relu.input_value(0), relu.output(0)]))
    assert len(model.outputs) == 1                     # the model itself is unchanged
    for sample, (h, y) in zip(samples, runs, strict=True):
        np.testing.assert_allclose(h, sample["x"] @ W, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, np.maximum(sample["x"] @ W, 0), rtol=1e-5, atol=1e-5)
    (y,) = next(capture_openvino(model, samples[:1]))  # no ports: the model's own outputs
    np.testing.assert_allclose(y, np.maximum(samples[0]["x"] @ W, 0), rtol=1e-5, atol=1e-5)
