"""The vectorised GPTQ rounding (blocked columns, all depthwise channels at once) gives
the numbers of the one-column-at-a-time, one-channel-at-a-time form it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.calibrate.rounding import DAMPING, gptq_depthwise, gptq_rows
from edgeopt.calibrate.saturation import bound_pairs, over_limit, pair_bounds


def _per_column(w, scale, h, qmin, qmax, pairs=False):
    """GPTQ as rounding.py did it before the blocks: the reference."""
    k = w.shape[1]
    pruned = w == 0
    h = h + np.eye(k) * (DAMPING * max(float(np.mean(np.diag(h))), 1e-12))
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError:
        q = np.where(pruned, 0, np.clip(np.round(w / scale[:, None]), qmin, qmax))
        if pairs:
            bound_pairs(q)
        return q
    w = w.copy()
    q = np.empty_like(w)
    for i in range(k):
        lo, hi = pair_bounds(q[:, i - 1], qmin, qmax) if pairs and i % 2 else (qmin, qmax)
        q[:, i] = np.where(pruned[:, i], 0, np.clip(np.round(w[:, i] / scale), lo, hi))
        err = (w[:, i] - q[:, i] * scale) / hinv[i, i]
        w[:, i + 1:] -= np.outer(err, hinv[i, i + 1:])
    return q


def _layer(rng, rows, k, coarse=4.0):
    mix = rng.standard_normal((k, k)) / np.sqrt(k)
    x = rng.standard_normal((4 * k + 64, k)) @ (np.eye(k) + mix)     # correlated inputs
    h = x.T @ x / len(x)
    w = rng.standard_normal((rows, k))
    w[rng.random(w.shape) < 0.05] = 0.0                              # some pruned weights
    return w, np.abs(w).max(axis=1) / 127 * coarse, h


@pytest.mark.parametrize(("rows", "k", "pairs"), [(24, 40, False), (16, 300, True),
                                                  (8, 257, False), (8, 600, True)])
def test_blocked_gptq_matches_the_per_column_form(rows, k, pairs):
    """Same ints, up to a rare tie the block's summation order moves by one level."""
    w, scale, h = _layer(np.random.default_rng(k), rows, k)
    got = gptq_rows(w, scale, h, -127, 127, pairs)
    want = _per_column(w, scale, h, -127, 127, pairs)
    differ = got != want
    assert differ.mean() <= 0.002 and np.abs(got - want).max(initial=0) <= 1
    assert np.all(got[w == 0] == 0)
    if pairs:
        assert not over_limit(got).any()


def test_the_inverse_factor_of_large_layers_is_cholesky_of_the_inverse():
    from edgeopt.calibrate.rounding import LARGE, _inverse_factor_reversed

    rng = np.random.default_rng(2)
    a = rng.standard_normal((LARGE + 8, LARGE + 40))
    h = a @ a.T / a.shape[1] + 0.01 * np.eye(LARGE + 8)
    got = _inverse_factor_reversed(h)
    np.testing.assert_allclose(got, np.linalg.cholesky(np.linalg.inv(h)).T, rtol=0,
                               atol=1e-12 * np.abs(got).max())
    assert np.array_equal(got, np.triu(got))


def test_blocked_gptq_is_exact_within_one_block():
    w, scale, h = _layer(np.random.default_rng(1), 32, 100)
    np.testing.assert_array_equal(gptq_rows(w, scale, h, -127, 127, True),
                                  _per_column(w, scale, h, -127, 127, True))


def test_depthwise_gptq_all_channels_at_once_matches_one_call_per_channel():
    rng = np.random.default_rng(3)
    channels, k = 48, 9
    x = rng.standard_normal((channels, 500, k)) @ (np.eye(k) + 0.5 * rng.standard_normal((k, k)))
    h = np.einsum("cpk,cpl->ckl", x, x) / x.shape[1]
    h[5] = 0.0                                     # a dead channel: the batch must not fail
    w = rng.standard_normal((channels, k))
    scale = np.abs(w).max(axis=1) / 127 * 6
    got = gptq_depthwise(w, scale, h, -127, 127)
    want = np.stack([_per_column(w[c:c + 1], scale[c:c + 1], h[c], -127, 127)[0]
                     for c in range(channels)])
    np.testing.assert_array_equal(got, want)
    h[5] = np.eye(k)
    np.testing.assert_array_equal(
        gptq_depthwise(w, scale, h, -127, 127),
        np.stack([_per_column(w[c:c + 1], scale[c:c + 1], h[c], -127, 127)[0]
                  for c in range(channels)]))


def test_equalization_takes_the_statistics_channel_maxima_unchanged(tmp_path):
    """Channel maxima from the statistics pass equalize exactly as equalize's own pass."""
    import onnx
    from test_equalize import _expand_dw_model, _samples

    from edgeopt.calibrate.equalize import equalize_depthwise_inputs
    from edgeopt.calibrate.stats import collect_stats

    calib = _samples(12, 1)
    path = tmp_path / "m.onnx"
    onnx.save(_expand_dw_model(), str(path))
    stats = collect_stats(path, calib)
    direct = np.max([s["input"] for s in calib], axis=0)            # a 4-d input: per channel
    np.testing.assert_array_equal(stats["input"].channel_max, direct.max(axis=(0, 2, 3)))
    own, given = _expand_dw_model(), _expand_dw_model()
    peaks_own = equalize_depthwise_inputs(own, calib)
    peaks_given = equalize_depthwise_inputs(given, [], stats)       # no samples: no pass
    assert peaks_own.keys() == peaks_given.keys() and peaks_own
    for name in peaks_own:
        np.testing.assert_array_equal(peaks_own[name], peaks_given[name])
    assert own.SerializeToString() == given.SerializeToString()


def test_bias_correction_means_from_the_rounding_pass_are_the_pre_rounding_means(tmp_path):
    """The rounding pass's channel means are those a separate pass over the QDQ graph gets
    before the weights move; bias correction given them skips its own pass."""
    import copy

    import onnx
    import torch

    from edgeopt.calibrate import quantize_onnx_for_ort
    from edgeopt.calibrate.bias_correction import _channel_means, bias_inputs, correct_weight_bias
    from edgeopt.calibrate.quantize import QuantConfig
    from edgeopt.calibrate.rounding import optimize_weight_rounding
    from edgeopt.convert import export_onnx

    from tiny_models import tiny_cnn

    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
             for _ in range(6)]
    fp32 = tmp_path / "cnn.onnx"
    export_onnx(tiny_cnn(), (torch.randn(1, 3, 16, 16),), fp32)
    plain = quantize_onnx_for_ort(fp32, tmp_path / "q.onnx", calib, QuantConfig(
        weight_rounding=False, bias_correction=False, fp32_stem=False))
    model, qdq = onnx.load(str(fp32)), onnx.load(str(plain.path))
    names = bias_inputs(model, qdq)
    assert names
    want = _channel_means(qdq, names, calib)
    means = dict.fromkeys(names)
    optimize_weight_rounding(model, qdq, calib, True, means)
    for name in names:
        np.testing.assert_allclose(means[name], want[name], rtol=1e-12, atol=1e-12)
    other = copy.deepcopy(qdq)
    # given means: no pass of its own (there are no samples to run)
    assert correct_weight_bias(model, qdq, [], means) == len(names)
    correct_weight_bias(model, other, [], want)
    assert qdq.SerializeToString() == other.SerializeToString()
