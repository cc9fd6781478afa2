"""Depthwise-input equalization: the same function, one 8-bit grid that fits every channel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.calibrate import QuantConfig, integer_kernel_counts, quantize_onnx_for_ort
from edgeopt.calibrate.equalize import depthwise_pairs, equalize_depthwise_inputs
from edgeopt.runtimes import capture_onnx

CHANNELS = 8


def _expand_dw_model(shared_weight: bool = False, clip: bool = True):
    """input -> 1x1 Conv (channel gains 0.02..3) -> ReLU6 -> 3x3 depthwise Conv -> output."""
    rng = np.random.default_rng(0)
    gains = np.geomspace(0.02, 3.0, CHANNELS)
    w1 = (rng.standard_normal((CHANNELS, 4, 1, 1)) * gains[:, None, None, None]).astype(np.float32)
    b1 = (0.1 * gains).astype(np.float32)
    w2 = rng.standard_normal((CHANNELS, 1, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.float32(0), "lo"),
             numpy_helper.from_array(np.float32(6), "hi")]
    act = (helper.make_node("Clip", ["a", "lo", "hi"], ["r"], name="relu6") if clip
           else helper.make_node("Relu", ["a"], ["r"], name="relu"))
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["a"], name="expand"), act,
             helper.make_node("Conv", ["r", "w2"], ["output"], name="dw", group=CHANNELS,
                              pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, CHANNELS, 8, 8])]
    if shared_weight:   # w1 read by a second node too: its scaling would change that node
        nodes.append(helper.make_node("Conv", ["input", "w1"], ["other"], name="other"))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "expand_dw",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(n)]


def _run(model, names, samples):
    return [dict(zip(names, values, strict=True))
            for values in capture_onnx(model, samples, names)]


@pytest.mark.parametrize("clip", [True, False], ids=["relu6", "relu"])
def test_equalization_keeps_the_function_and_evens_the_channels(clip):
    model = _expand_dw_model(clip=clip)
    calib = _samples(16, 0)
    before = _run(model, ["output", "r"], calib)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    assert [p.tensor for p in depthwise_pairs(model)] == ["r"]
    maxima = equalize_depthwise_inputs(model, calib)
    assert list(maxima) == ["r"]
    after = _run(model, ["output", "r"], calib)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a["output"], b["output"], rtol=1e-4, atol=1e-5)
    peak = lambda runs: np.max([v["r"].max(axis=(0, 2, 3)) for v in runs], axis=0)  # noqa: E731
    assert peak(before).max() / peak(before).min() > 20          # uneven before
    np.testing.assert_allclose(maxima["r"], peak(before), rtol=1e-6)
    np.testing.assert_allclose(peak(after), peak(after).max(), rtol=1e-4)
    # away from the calibration data, only values above a channel's calibrated maximum
    # (clipped by any calibrated 8-bit range anyway) can differ
    held = _samples(8, 1)
    for b, a in zip(_run(original, ["output"], held), _run(model, ["output"], held), strict=True):
        assert np.abs(a["output"] - b["output"]).max() < 0.5 * np.abs(b["output"]).max()


def test_shared_or_unfit_weights_are_left_alone():
    model = _expand_dw_model(shared_weight=True)
    before = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    assert equalize_depthwise_inputs(model, _samples(4, 0)) == {}
    for init in model.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), before[init.name])


def test_equalized_int8_is_closer_to_fp32_with_the_same_kernels(tmp_path):
    fp32 = tmp_path / "expand_dw.onnx"
    onnx.save(_expand_dw_model(), str(fp32))
    calib, held = _samples(32, 0), _samples(16, 1)
    ref = [v["output"] for v in _run(onnx.load(str(fp32)), ["output"], held)]

    def sqnr(equalize: bool) -> tuple[np.ndarray, dict]:
        """Each output channel's SQNR (dB) against FP32, and the kernel counts."""
        out = tmp_path / f"eq{int(equalize)}.onnx"
        result = quantize_onnx_for_ort(fp32, out, calib, QuantConfig(equalize=equalize))
        assert any("equalized" in n for n in result.notes) == equalize, result.notes
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = [session.run(None, x)[0] for x in held]
        signal = sum(np.sum(r.astype(np.float64) ** 2, axis=(0, 2, 3)) for r in ref)
        noise = sum(np.sum((g - r).astype(np.float64) ** 2, axis=(0, 2, 3))
                    for g, r in zip(got, ref, strict=True))
        return 10 * np.log10(signal / noise), integer_kernel_counts(out)

    plain, plain_kernels = sqnr(False)
    equal, equal_kernels = sqnr(True)
    # the expand convolution runs as an integer kernel; the depthwise one gives the float
    # graph output, from the dequantized (equalized) tensor
    assert equal_kernels == plain_kernels and equal_kernels.get("QLinearConv") == 1
    # the small channels had a few of the tensor's 256 levels; now each has all of them
    assert equal.min() > plain.min() + 10 and equal.mean() > plain.mean() + 3, (equal, plain)
    assert onnx.load(str(fp32)).graph.initializer[0].name == "w1"     # input untouched


def test_equalized_ranges_follow_from_the_statistics_pass(monkeypatch):
    """For the min-max calibrators the equalized tensor's range comes from the statistics
    of the original model (its per-sample channel maxima), with no pass of the equalized
    model, and matches that pass; past PEAKS_BYTES no maxima are kept and the pass runs."""
    import copy

    from edgeopt.calibrate import ort_base, stats

    model, samples = _expand_dw_model(), _samples(20, 1)
    passes = []
    real = ort_base.collect_stats
    monkeypatch.setattr(ort_base, "collect_stats",
                        lambda *a, **k: passes.append(k.get("names")) or real(*a, **k))
    found = stats.collect_stats(model, samples, reservoir=0)
    assert found["r"].sample_peaks.shape == (20, CHANNELS)
    equalized = copy.deepcopy(model)
    gains = equalize_depthwise_inputs(equalized, samples, found)
    for calibrator in ("mean-minmax", "minmax"):
        known = ort_base.equalized_ranges(equalized, gains, samples, calibrator, found)
        assert passes == []
        measured = ort_base.equalized_ranges(equalized, gains, samples, calibrator)
        assert passes.pop() == ["r"]
        assert set(known) == set(measured) == {"r", "a"}
        for name, r in known.items():
            assert r.rmin == measured[name].rmin == 0.0
            assert r.rmax == pytest.approx(measured[name].rmax, rel=1e-6)
    monkeypatch.setattr(stats, "PEAKS_BYTES", 0)
    found = stats.collect_stats(model, samples, reservoir=0)
    assert found["r"].sample_peaks is None
    ort_base.equalized_ranges(equalized, gains, samples, "mean-minmax", found)
    assert passes == [["r"]]
