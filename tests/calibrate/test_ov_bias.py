"""NNCF's full bias correction with one compile per corrected layer (calibrate/ov_bias.py):
a subgraph with its bias as an input computes what it computes with the bias constant, and
the quantized IR is NNCF's own, byte for byte, with one OpenVINO compile fewer per layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeopt.calibrate import QuantConfig, ov_bias, ov_reuse, quantize_for_openvino
from edgeopt.calibrate.quantize import activation_stats
from edgeopt.calibrate.spill import spill
from edgeopt.convert import canonical_names, export_onnx, to_openvino_ir
from edgeopt.runtimes import capture_openvino


def _conv_bias_relu(bias: np.ndarray, as_input: bool = False):
    """x -> Convolution -> Add(bias) -> Relu, the bias a constant."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(1)
    x = ops.parameter([1, 3, 6, 6], ov.Type.f32, name="x")
    x.output(0).get_tensor().set_names({"x"})
    weights = ops.constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    conv = ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    conv.set_friendly_name("conv")
    add = ops.add(conv, ops.constant(bias.astype(np.float32)))
    return ov.Model([ops.relu(add)], [x])


def test_a_bias_input_computes_what_the_bias_constant_does():
    rng = np.random.default_rng(2)
    old, new = (rng.standard_normal((1, 4, 1, 1)).astype(np.float32) for _ in range(2))
    samples = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(3)]
    model = _conv_bias_relu(old)
    bias = ov_bias.bias_as_input(model, "conv", 1)
    assert bias is not None and np.array_equal(bias.value, old)
    assert {p.get_friendly_name() for p in model.get_parameters()} == {"x", ov_bias.BIAS_INPUT}
    for value in (old, new):
        bias.set(value.astype(np.float64))             # NNCF hands float64 updates in
        assert bias.value.dtype == np.float32
        fed = [{**s, ov_bias.BIAS_INPUT: bias.value} for s in samples]
        got = list(capture_openvino(model, fed))
        want = list(capture_openvino(_conv_bias_relu(value), samples))
        assert all(np.array_equal(g[0], w[0]) for g, w in zip(got, want, strict=True))


def test_no_bias_where_nncf_looks_leaves_the_subgraph_alone():
    model = _conv_bias_relu(np.zeros((1, 4, 1, 1)))
    assert ov_bias.bias_as_input(model, "no-such-op", 1) is None
    assert ov_bias.bias_as_input(model, "x", 1) is None      # no Add after it
    assert len(model.get_parameters()) == 1


def test_another_nncf_bias_correction_is_left_to_nncf(monkeypatch):
    from nncf.quantization.algorithms.bias_correction.algorithm import BiasCorrection
    from nncf.quantization.algorithms.post_training import pipeline

    assert ov_bias.fits()

    class Changed(BiasCorrection):
        def _collect_new_stats(self, model, feed_dicts):     # another signature
            return None

    assert not ov_bias.fits(Changed)
    with ov_bias.one_compile_bias_correction() as used:
        assert used and pipeline.BiasCorrection is not BiasCorrection
    assert pipeline.BiasCorrection is BiasCorrection
    monkeypatch.setattr(ov_bias, "fits", lambda base=None: False)
    with ov_bias.one_compile_bias_correction() as used:
        assert not used and pipeline.BiasCorrection is BiasCorrection


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    """Three biased convolutions and a linear layer: four layers NNCF's full bias
    correction corrects, each subgraph feeding the next."""
    path = tmp_path_factory.mktemp("ovbias") / "net.onnx"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10))
    export_onnx(net.eval(), (torch.randn(1, 3, 8, 8),), path)
    return path, to_openvino_ir(path, path.with_suffix(".xml"))


@pytest.fixture()
def compiles(monkeypatch) -> dict:
    """Counts NNCF's OpenVINO engines (one compile each) and the subgraphs given a bias
    input."""
    import nncf.openvino.engine as engine

    count = {"engines": 0, "bias inputs": 0}
    real_engine, real_input = engine.OVNativeEngine.__init__, ov_bias.bias_as_input

    def counted_engine(self, *args, **kwargs):
        count["engines"] += 1
        real_engine(self, *args, **kwargs)

    def counted_input(*args):
        found = real_input(*args)
        count["bias inputs"] += found is not None
        return found

    monkeypatch.setattr(engine.OVNativeEngine, "__init__", counted_engine)
    monkeypatch.setattr(ov_bias, "bias_as_input", counted_input)
    ov_reuse.clear()
    yield count
    ov_reuse.clear()


def _build(model, out: Path, effort: str = "default") -> tuple[bytes, bytes]:
    onnx_path, xml = model
    rng = np.random.default_rng(5)
    calib = spill({"input": rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)}
                  for _ in range(10))
    ov_reuse.clear()
    quantize_for_openvino(xml, out, calib, QuantConfig(saturation_guard=False, effort=effort),
                          stats=activation_stats(onnx_path, calib), fp32_onnx=onnx_path,
                          before_save=canonical_names)
    return out.read_bytes(), out.with_suffix(".bin").read_bytes()


def test_the_ir_is_nncfs_own_with_one_compile_less_per_corrected_layer(
        model, compiles, monkeypatch, tmp_path):
    ours = _build(model, tmp_path / "ours.xml")
    ours_count = dict(compiles)
    assert ours_count["bias inputs"] == 4                   # every corrected layer
    monkeypatch.setattr(ov_bias, "fits", lambda base=None: False)     # NNCF's own
    compiles.update({"engines": 0, "bias inputs": 0})
    nncf_own = _build(model, tmp_path / "nncf.xml")
    assert compiles["bias inputs"] == 0
    assert ours == nncf_own                                  # same IR, byte for byte
    assert compiles["engines"] - ours_count["engines"] == ours_count["bias inputs"]
    fast = _build(model, tmp_path / "fast.xml", effort="fast")
    assert fast[1] != ours[1]                    # the full correction did change biases
