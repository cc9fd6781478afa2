"""The OpenVINO saturation guard's input means (quantize_ov.input_means) come from the
statistics pass of the FP32 ONNX (calibrate/stats.py) when it has them: the same means as
a run of the FP32 IR over the same samples, without that run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeopt.calibrate import quantize_ov
from edgeopt.calibrate.quantize import activation_stats
from edgeopt.calibrate.stats import MEAN_SAMPLES
from edgeopt.convert import export_onnx, to_openvino_ir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """conv -> relu -> conv -> relu -> flatten -> linear (Convolution and MatMul inputs)."""
    path = tmp_path_factory.mktemp("means") / "net.onnx"
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 10))
    export_onnx(net.eval(), (torch.randn(1, 3, 6, 6),), path)
    return path, to_openvino_ir(path, path.with_suffix(".xml"))


def test_statistics_keep_the_channel_means_of_the_first_samples(model):
    onnx_path, _ = model
    rng = np.random.default_rng(0)
    calib = [{"input": rng.uniform(0, 1, (1, 3, 6, 6)).astype(np.float32) + i}
             for i in range(MEAN_SAMPLES + 8)]
    stats = activation_stats(onnx_path, calib)
    (name,) = [n for n in stats if n in {"input", "x"}]       # the first Conv's input
    expected = np.mean([s["input"].mean(axis=(0, 2, 3)) for s in calib[:MEAN_SAMPLES]], axis=0)
    np.testing.assert_allclose(stats[name].channel_mean, expected, rtol=1e-6)
    assert stats[name].samples == len(calib)                   # min/max saw every sample
    assert sum(s.channel_mean is not None for s in stats.values()) == 3   # conv, conv, linear


def test_input_means_come_from_the_statistics_without_a_run(model, monkeypatch):
    import openvino as ov

    onnx_path, xml = model
    rng = np.random.default_rng(1)
    calib = [{"input": rng.uniform(-1, 2, (1, 3, 6, 6)).astype(np.float32)} for _ in range(12)]
    fp32 = ov.Core().read_model(str(xml))
    ran = quantize_ov.input_means(fp32, calib)                  # a run of the IR
    runs = []
    real = quantize_ov.capture_openvino
    monkeypatch.setattr(quantize_ov, "capture_openvino",
                        lambda *a, **k: runs.append(1) or real(*a, **k))
    kept = quantize_ov.input_means(fp32, calib, stats=activation_stats(onnx_path, calib))
    assert runs == []
    assert kept.keys() == ran.keys() and len(kept) == 3
    for name in ran:
        np.testing.assert_allclose(kept[name], ran[name], rtol=1e-5, atol=1e-6)
    # statistics without the tensor: that op's means come from a run, the rest from them
    stats = activation_stats(onnx_path, calib)
    for s in stats.values():
        if s.channel_sum is not None and s.channel_sum.size == 8:  # the second Conv's input
            s.channel_sum = None
    mixed = quantize_ov.input_means(fp32, calib, stats=stats)
    assert runs == [1] and mixed.keys() == ran.keys()
    for name in ran:
        np.testing.assert_allclose(mixed[name], ran[name], rtol=1e-5, atol=1e-6)
