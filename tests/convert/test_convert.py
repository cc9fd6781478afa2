"""Loading every model kind, torch -> ONNX export (dynamo and fallback), ONNX -> IR."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgeopt.convert import (
    InputShapeError,
    ModelLoadError,
    export_onnx,
    fix_onnx_shapes,
    load_model,
    onnx_input_specs,
    parse_input_shapes,
    run_torch,
    to_openvino_ir,
)
from edgeopt.runtimes import compare

from conftest import sha256


def _ort_run(path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_parse_input_shapes():
    assert parse_input_shapes("1,3,224,224") == (1, 3, 224, 224)
    assert parse_input_shapes("ids=1,128;mask=1,128") == {"ids": (1, 128), "mask": (1, 128)}
    assert parse_input_shapes(None) is None
    with pytest.raises(InputShapeError, match="positive"):
        parse_input_shapes("1,0,3")
    with pytest.raises(InputShapeError, match="not a list of integers"):
        parse_input_shapes("a,b")


def test_onnx_input_specs_and_fixed_shapes(tiny_onnx):
    specs = onnx_input_specs(tiny_onnx)
    assert specs == [("input", "float32", (1, 3, 8, 8))]
    assert fix_onnx_shapes(specs, None, None) == {"input": (1, 3, 8, 8)}
    with pytest.raises(InputShapeError, match="does not fit input 'input'"):
        fix_onnx_shapes(specs, (1, 3, 4, 4), "1,3,4,4")
    dynamic = [("x", "float32", ("batch", 3))]
    with pytest.raises(InputShapeError, match="dynamic shape"):
        fix_onnx_shapes(dynamic, None, None)
    assert fix_onnx_shapes(dynamic, (2, 3), "2,3") == {"x": (2, 3)}


def test_load_onnx_records_sha_and_leaves_file_alone(tiny_onnx):
    before = sha256(tiny_onnx)
    source = load_model(str(tiny_onnx))
    assert source.kind == "onnx"
    assert source.sha256 == before
    assert source.input_names == ("input",)
    assert sha256(tiny_onnx) == before


def test_load_factory_with_and_without_example_inputs():
    source = load_model("tiny_models:tiny_cnn", "1,3,16,16")
    assert source.kind == "torch-factory"
    assert tuple(source.example_inputs[0].shape) == (1, 3, 16, 16)
    source = load_model("tiny_models:tiny_cnn_with_example")
    assert tuple(source.example_inputs[0].shape) == (1, 3, 16, 16)
    with pytest.raises(InputShapeError, match="pass --input-shape"):
        load_model("tiny_models:tiny_cnn")


def test_factory_errors():
    with pytest.raises(ModelLoadError, match="has no callable 'nope'"):
        load_model("tiny_models:nope")
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):
        load_model("tiny_models:not_a_module")


def test_torchscript_and_exported_program(tmp_path):
    from tiny_models import tiny_cnn

    module = tiny_cnn()
    x = torch.randn(1, 3, 16, 16)
    scripted = torch.jit.trace(module, (x,))
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    ts = load_model(str(tmp_path / "m.pt"), "1,3,16,16")
    assert ts.kind == "torchscript"
    np.testing.assert_allclose(run_torch(ts.module, (x,))[0], run_torch(module, (x,))[0],
                               rtol=1e-5, atol=1e-5)
    program = torch.export.export(module, (x,))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    ep = load_model(str(tmp_path / "m.pt2"))
    assert ep.kind == "exported-program"
    assert tuple(ep.example_inputs[0].shape) == (1, 3, 16, 16)
    with pytest.raises(ModelLoadError, match="not a TorchScript archive"):
        (tmp_path / "bad.pt").write_bytes(b"garbage" * 10)
        load_model(str(tmp_path / "bad.pt"), "1,3,16,16")


@pytest.mark.parametrize("prefer", ["torchscript", "dynamo"])
def test_export_matches_torch(tmp_path, prefer):
    from tiny_models import tiny_cnn

    module = tiny_cnn()
    x = torch.randn(1, 3, 16, 16)
    result = export_onnx(module, (x,), tmp_path / "m.onnx", prefer=prefer)
    assert result.exporter == prefer            # a clean trace: the first exporter's file
    assert result.input_names == ("input",) and result.warnings == ()
    onnx.checker.check_model(str(result.path))
    parity = compare("torch -> ONNX", [run_torch(module, (x,))],
                     [_ort_run(result.path, {"input": x.numpy()})])
    assert parity.ok, parity
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


class _DataDependent(torch.nn.Module):
    """A branch on a tensor's value: a trace records the branch its example took."""

    def forward(self, x):
        return x * 2 if bool(x.sum() > 0) else x - 1


def test_a_trace_that_may_not_hold_goes_to_dynamo(tmp_path, monkeypatch):
    x = torch.ones(1, 4)
    seen = []
    real_export = torch.onnx.export

    def recorded(*args, **kwargs):
        seen.append("dynamo" if kwargs.get("dynamo") else "torchscript")
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated: data-dependent branch")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", recorded)
    result = export_onnx(_DataDependent(), (x,), tmp_path / "m.onnx")
    assert seen == ["torchscript", "dynamo"]    # the tracer warned: dynamo was tried
    assert result.exporter == "torchscript"     # it failed: the trace is kept, and said so
    assert any("dynamo exporter failed" in w for w in result.warnings)
    assert any("kept the TorchScript trace" in w and "may not hold" in w
               for w in result.warnings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("broken", ["torchscript", "dynamo"])
def test_export_falls_back_to_the_other_exporter_with_a_warning(tmp_path, monkeypatch, broken):
    from tiny_models import tiny_cnn

    real_export = torch.onnx.export

    def one_breaks(*args, **kwargs):
        if ("dynamo" if kwargs.get("dynamo", True) else "torchscript") == broken:
            message = f"simulated {broken} failure"
            raise RuntimeError(message)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", one_breaks)
    result = export_onnx(tiny_cnn(), (torch.randn(1, 3, 16, 16),), tmp_path / "m.onnx",
                         prefer=broken)
    other = {"torchscript": "dynamo", "dynamo": "torchscript"}[broken]
    assert result.exporter == other
    assert result.warnings == (f"{broken} exporter failed (simulated {broken} "
                               f"failure); exported with the {other} exporter",)
    assert (tmp_path / "m.onnx").is_file()


def test_onnx_to_ir_matches_onnx(tiny_onnx, tmp_path):
    import openvino as ov

    xml = to_openvino_ir(tiny_onnx, tmp_path / "m.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_out = [compiled(x)[0]]
    parity = compare("ONNX -> OpenVINO IR", [_ort_run(tiny_onnx, {"input": x})], [ov_out])
    assert parity.ok, parity


@pytest.mark.parametrize("opset", [11, 12])
def test_older_opsets_are_upgraded_with_parity(run_cli, tmp_path, opset):
    """A model exported at opset 11 or 12 goes through both runtimes: the copy is upgraded
    before any quantization, and the report records the step and its parity."""
    import json

    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(opset)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=0),
         helper.make_node("Softmax", ["m"], ["probs"], axis=1)],
        "old", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    path = tmp_path / f"old{opset}.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out"
    result = run_cli("optimize", path, "--calib", "random", "--out", out, "--quiet",
                     "--bench-iterations", "3", "--bench-seconds", "0", "--bench-repeats", "1")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["name"].startswith(f"ONNX opset {opset} ->"))
    assert step["parity"]["cosine"] > 0.9999
    assert {(a["runtime"], a["precision"]) for a in report["artifacts"]} >= {
        ("onnxruntime", "int8"), ("openvino", "int8")}
    assert onnx.load(str(path)).opset_import[0].version == opset      # the input untouched
