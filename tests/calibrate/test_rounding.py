"""The vectorised GPTQ rounding (blocked columns in the nearest-plane form, all depthwise
channels at once) gives the numbers of the one-column-at-a-time, one-channel-at-a-time form
with the Cholesky factor of the inverse it replaced; the bounds on its cost (a seeded
subset of the input rows, channel groups of wide layers) are deterministic and close."""

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


def test_the_reversed_factor_is_the_inverse_of_gptqs_inverse_factor():
    """M M^T = the damped H, M upper, and M = inv(chol(inv(H))^T): no inverse needed."""
    from edgeopt.calibrate.rounding import _damped, _reversed_factor

    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 340))
    h = a @ a.T / a.shape[1]
    m = _reversed_factor(h)
    assert np.array_equal(m, np.triu(m))
    np.testing.assert_allclose(m @ m.T, _damped(h), rtol=0, atol=1e-12 * np.abs(h).max())
    u = np.linalg.cholesky(np.linalg.inv(_damped(h))).T
    np.testing.assert_allclose(m @ u, np.eye(len(h)), rtol=0, atol=1e-9)


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


def _fp32_gram(x: np.ndarray, lay) -> list[np.ndarray]:
    """One sample's H blocks of ``lay`` from all its input rows, in float64, the plain way."""
    from edgeopt.calibrate.input_moments import _patches_depthwise

    x = x.astype(np.float64)
    if lay.kind in {"dense", "matmul"}:
        flat = x.reshape(-1, lay.shape[0])
        per_channel = 1
    else:
        kh, kw = lay.shape[1:] if lay.kind != "pointwise" else (1, 1)
        p = _patches_depthwise(x, kh, kw, lay.strides, lay.pads)
        if lay.kind == "depthwise":
            return [np.matmul(p.transpose(0, 2, 1), p) / p.shape[1]]
        flat, per_channel = p.transpose(1, 0, 2).reshape(p.shape[1], -1), kh * kw
    return [flat[:, c0 * per_channel:c1 * per_channel].T
            @ flat[:, c0 * per_channel:c1 * per_channel] / len(flat) for c0, c1 in lay.groups]


@pytest.fixture
def spied_passes(monkeypatch):
    """Each pass over the samples input_moments makes: (FP32 model, layers, mean tensors)."""
    from edgeopt.calibrate import input_moments, reuse

    calls, real = [], input_moments._pass

    def spy(model, layers, samples, names):
        calls.append((model, list(layers), list(names)))
        return real(model, layers, samples, names)

    reuse.clear()
    monkeypatch.setattr(input_moments, "_pass", spy)
    yield calls
    reuse.clear()


def test_h_is_the_fp32_input_gram_computed_once_per_model_and_per_missing_layer(
        tmp_path, spied_passes):
    """H is the Gram of each layer's input in the FP32 model the rounding gets (not of the
    QDQ graph's quantized input); a second build of that model takes every H from the memo,
    and a variant that quantizes the stem computes the stem's H only."""
    import onnx

    from edgeopt.calibrate import QuantConfig, quantize_onnx_for_ort
    from edgeopt.calibrate.input_moments import input_moments
    from edgeopt.runtimes import capture_onnx

    from tiny_models import save_inverted_residual_onnx

    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
             for _ in range(6)]
    fp32 = save_inverted_residual_onnx(tmp_path / "net.onnx", body=3)
    stem = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    # the first build keeps the stem convolution FP32, as the default keeps a CNN's stem
    quantize_onnx_for_ort(fp32, tmp_path / "a.onnx", calib, QuantConfig(exclude_nodes=(stem,)))
    assert len(spied_passes) == 1
    model, first, _ = spied_passes[0]
    assert {lay.kind for lay in first} >= {"depthwise", "pointwise"}
    assert all(lay.rows >= 8 * 8 * len(calib) for lay in first)                # every row
    quantize_onnx_for_ort(fp32, tmp_path / "b.onnx", calib,
                          QuantConfig(exclude_nodes=(stem,), saturation_guard=False))
    assert len(spied_passes) == 1                                  # all from the memo
    quantize_onnx_for_ort(fp32, tmp_path / "c.onnx", calib)       # the stem quantized
    assert len(spied_passes) == 2
    extra = spied_passes[1][1]
    assert extra and not set(extra) & set(first)
    assert {lay.tensor for lay in extra} == {"input"}              # the stem reads the image
    moments = input_moments(model, first + extra, calib)
    assert len(spied_passes) == 2
    layers = first + extra
    values = capture_onnx(model, calib, [lay.tensor for lay in first])
    want = {lay: [0.0] * len(lay.groups) for lay in layers}
    for sample, captured in zip(calib, values, strict=True):
        inputs = dict(zip([lay.tensor for lay in first], captured, strict=True))
        inputs["input"] = sample["input"]
        for lay in layers:
            want[lay] = [a + b for a, b in zip(want[lay], _fp32_gram(inputs[lay.tensor], lay),
                                               strict=True)]
    for lay in layers:
        for got, block in zip(moments.hessian(lay), want[lay], strict=True):
            np.testing.assert_allclose(got, block / len(calib), rtol=1e-5,
                                       atol=1e-6 * np.abs(block).max() / len(calib))


def test_input_moments_over_their_share_of_the_memo_are_not_kept(tmp_path, spied_passes,
                                                                  monkeypatch):
    """An entry over MAX_SHARE (a ResNet-50's) is computed by each build and not kept, so it
    never evicts the stages it shares the memo with; the builds are the same either way."""
    from edgeopt.calibrate import QuantConfig, input_moments, quantize_onnx_for_ort, reuse

    from tiny_models import save_inverted_residual_onnx

    rng = np.random.default_rng(1)
    calib = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
             for _ in range(4)]
    fp32 = save_inverted_residual_onnx(tmp_path / "net.onnx", body=2)
    kept = quantize_onnx_for_ort(fp32, tmp_path / "a.onnx", calib).path.read_bytes()
    entries = len(reuse.memo())
    reuse.clear()
    monkeypatch.setattr(input_moments, "MAX_SHARE", 0)
    configs = {"b.onnx": QuantConfig(saturation_guard=False),
               "c.onnx": QuantConfig(calibrator="minmax"), "d.onnx": QuantConfig()}
    for name, config in configs.items():          # three different builds
        built = quantize_onnx_for_ort(fp32, tmp_path / name, calib, config)
    assert len(spied_passes) == 1 + 3
    # a's entries but its moments, and b's and c's own: c's base and QDQ graph (its
    # calibrator's), the finished builds and their per-layer SQNR (d's are a's)
    assert len(reuse.memo()) == entries - 1 + 2 + 2 * 2
    assert built.path.read_bytes() == kept


def test_bias_correction_means_from_the_rounding_pass_are_the_fp32_inputs_means(
        tmp_path, spied_passes):
    """Effort "fast": the rounding pass gives bias correction the channel means of the FP32
    tensors its convolutions' inputs quantize (before any weight moved), in the same pass
    as H; bias correction given them skips its own pass."""
    import copy

    import onnx
    import torch

    from edgeopt.calibrate import quantize_onnx_for_ort
    from edgeopt.calibrate.bias_correction import bias_inputs, correct_weight_bias
    from edgeopt.calibrate.input_moments import fp32_tensor
    from edgeopt.calibrate.quantize import QuantConfig
    from edgeopt.calibrate.rounding import optimize_weight_rounding
    from edgeopt.calibrate.stats import channel_mean
    from edgeopt.convert import export_onnx
    from edgeopt.runtimes import capture_onnx

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
    producer = {o: n for n in qdq.graph.node for o in n.output}
    tensors = {i.name for i in model.graph.input} | {o for n in model.graph.node
                                                      for o in n.output}
    sources = {name: fp32_tensor(name, producer, tensors) for name in names}
    assert None not in sources.values() and set(sources.values()) != set(names)
    assert "input" in sources.values()                  # the stem reads the graph input
    order = ["input", *sorted(set(sources.values()) - {"input"})]
    sums = dict.fromkeys(order, 0.0)
    for sample, values in zip(calib, capture_onnx(model, calib, order[1:]), strict=True):
        for name, value in zip(order, [sample["input"], *values], strict=True):
            sums[name] = sums[name] + channel_mean(value)
    means = dict.fromkeys(names)
    optimize_weight_rounding(model, qdq, calib, True, means)
    assert len(spied_passes) == 1                                   # H and means: one pass
    for name in names:
        np.testing.assert_allclose(means[name], sums[sources[name]] / len(calib),
                                   rtol=1e-12, atol=1e-12)
    other = copy.deepcopy(qdq)
    # given means: no pass of its own (there are no samples to run)
    assert correct_weight_bias(model, qdq, [], means) == len(names)
    correct_weight_bias(model, other, [], dict(means))
    assert qdq.SerializeToString() == other.SerializeToString()


def _conv_job(c_out, c_in, k=3, group=1):
    from edgeopt.calibrate.rounding import _Job

    w = np.random.default_rng(c_in).standard_normal((c_out, c_in // group, k, k))
    kind = "depthwise" if group > 1 else ("pointwise" if k == 1 else "full")
    return _Job(None, None, w, {"pads": [k // 2] * 4, "strides": [1, 1]}, kind)


def test_the_row_subsample_is_seeded_and_its_h_is_close_to_the_full_one():
    from edgeopt.calibrate.input_moments import _mirrored, second_moments
    from edgeopt.calibrate.rounding import layer

    rng = np.random.default_rng(5)
    job = layer(_conv_job(8, 16))                             # 144 columns
    # smooth correlated images: neighbouring positions and channels alike
    base = rng.standard_normal((1, 4, 40, 40)).cumsum(axis=2).cumsum(axis=3) / 10
    x = (np.repeat(base, 4, axis=1) + 0.3 * rng.standard_normal((1, 16, 40, 40)))
    x = x.astype(np.float32)
    full = _mirrored(second_moments(x, job, 10**9, np.random.default_rng(0))[0], job.kind)
    first = _mirrored(second_moments(x, job, 400, np.random.default_rng(0))[0], job.kind)
    again = _mirrored(second_moments(x, job, 400, np.random.default_rng(0))[0], job.kind)
    other = _mirrored(second_moments(x, job, 400, np.random.default_rng(1))[0], job.kind)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.linalg.norm(first - full) < 0.1 * np.linalg.norm(full)
    # the positions picked are those of the full im2col: a subset of its rows
    assert first.shape == full.shape == (144, 144)


def test_row_budget_bounds_the_rows_of_early_layers_only():
    from edgeopt.calibrate.rounding import MIN_ROWS, ROWS_PER_COLUMN, row_budget

    assert row_budget(_conv_job(64, 64)) == max(MIN_ROWS, ROWS_PER_COLUMN * 576)
    assert row_budget(_conv_job(32, 32, group=32)) == MIN_ROWS           # depthwise: 9 wide


def test_a_layer_wider_than_max_columns_is_rounded_per_channel_group():
    """Groups start at even channels (no kernel pair spans two), each at most MAX_COLUMNS
    wide, each H block the full H's diagonal block; the layer's ints are GPTQ's on each
    group's own block, in the kernels' order."""
    from onnx import helper, numpy_helper

    from edgeopt.calibrate.input_moments import _mirrored, _patches_full, second_moments
    from edgeopt.calibrate.rounding import MAX_COLUMNS, _reround, channel_groups, layer
    from edgeopt.calibrate.saturation import hwio_order

    channels = 2 * (MAX_COLUMNS // 18 + 1)                       # just over MAX_COLUMNS
    job = _conv_job(6, channels)
    groups = channel_groups(job)
    assert len(groups) == 2 and groups[0][0] == 0 and groups[-1][1] == channels
    assert all(c0 % 2 == 0 and (c1 - c0) * 9 <= MAX_COLUMNS for c0, c1 in groups)
    assert channel_groups(_conv_job(6, 64)) == [(0, 64)]
    x = np.random.default_rng(6).standard_normal((1, channels, 6, 6)).astype(np.float32)
    blocks = [_mirrored(b, job.kind)
              for b in second_moments(x, layer(job), 10**9, np.random.default_rng(0))]
    assert [b.shape[0] for b in blocks] == [(c1 - c0) * 9 for c0, c1 in groups]
    flat = _patches_full(x, 3, 3, [1, 1], [1, 1, 1, 1]).astype(np.float64)
    for (c0, c1), block in zip(groups, blocks, strict=True):
        part = flat[:, c0 * 9:c1 * 9]
        np.testing.assert_allclose(block, part.T @ part / len(flat), rtol=1e-4, atol=1e-4)
    rows = job.w.reshape(6, -1)
    scale = np.abs(rows).max(axis=1) / 127 * 4
    inits = {"q": numpy_helper.from_array(np.zeros(job.w.shape, np.int8), "q"),
             "s": numpy_helper.from_array(scale.astype(np.float32), "s")}
    job = type(job)(None, helper.make_node("DequantizeLinear", ["q", "s"], ["w"]), job.w,
                    job.attrs, job.kind)
    _reround(job, blocks, inits, True)
    got = numpy_helper.to_array(inits["q"]).reshape(6, -1)
    scale = scale.astype(np.float32).astype(np.float64)
    for (c0, c1), h in zip(groups, blocks, strict=True):
        order = hwio_order(c1 - c0, 3, 3)
        want = gptq_rows(rows[:, c0 * 9:c1 * 9][:, order], scale, h[np.ix_(order, order)],
                         -127, 127, True)
        np.testing.assert_array_equal(got[:, c0 * 9:c1 * 9][:, order], want)


@pytest.mark.parametrize(("size", "k", "stride", "pads"), [
    ((9, 9), 3, 2, [1, 1, 1, 1]), ((8, 7), 3, 1, [1, 1, 1, 1]), ((10, 10), 5, 2, [2, 1, 2, 1])])
def test_picked_patches_are_those_rows_of_the_full_im2col(size, k, stride, pads):
    """The subset is gathered from the unpadded input with the padding masked in."""
    from edgeopt.calibrate.input_moments import _patches_depthwise, _pick

    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 4, *size)).astype(np.float32)
    full = _patches_depthwise(x, k, k, [stride] * 2, pads)
    pick = _pick(full.shape[1], full.shape[1] // 2, rng)
    assert pick is not None and np.all(np.diff(pick) > 0)
    np.testing.assert_array_equal(_patches_depthwise(x, k, k, [stride] * 2, pads, pick),
                                  full[:, pick])
    assert _pick(full.shape[1], full.shape[1], rng) is None


def test_the_notes_say_which_layers_were_rounded_in_channel_groups(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeopt.calibrate import quantize_onnx_for_ort
    from edgeopt.calibrate.rounding import MAX_COLUMNS

    k, rng = MAX_COLUMNS + 2, np.random.default_rng(8)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="wide", transB=1),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="narrow", transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(rng.standard_normal((8, k)).astype(np.float32) / 40, "w"),
         numpy_helper.from_array(np.zeros(8, np.float32), "b"),
         numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w2"),
         numpy_helper.from_array(np.zeros(4, np.float32), "b2")])
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    calib = [{"x": rng.standard_normal((1, k)).astype(np.float32)} for _ in range(4)]
    notes = quantize_onnx_for_ort(path, tmp_path / "q.onnx", calib).notes
    rounding = next(n for n in notes if n.startswith("weight rounding"))
    assert f"1 wider than {MAX_COLUMNS} columns rounded in groups" in rounding, rounding


@pytest.mark.parametrize("shape", [(1, 960, 7, 7), (1, 16, 40, 40), (2, 8, 3, 3), (1, 5, 16, 16)])
def test_channel_peaks_are_the_per_channel_maxima_whatever_the_map_size(shape):
    from edgeopt.calibrate.stats import _channel_peaks

    value = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_channel_peaks(value), value.max(axis=(0, 2, 3)))


def test_a_strided_1x1_convolutions_h_is_over_the_positions_it_reads():
    """A 1x1 convolution of stride 2 (a ResNet's downsampling shortcut) reads every other
    row and column: its H is their Gram, not that of every position."""
    from edgeopt.calibrate.input_moments import _mirrored, second_moments
    from edgeopt.calibrate.rounding import _Job, _layout, layer

    w = np.random.default_rng(1).standard_normal((4, 6, 1, 1))
    attrs = {"strides": [2, 2], "pads": [0, 0, 0, 0]}
    assert _layout("Conv", w, attrs)[1] == "full"
    assert _layout("Conv", w, {"strides": [1, 1]})[1] == "pointwise"
    x = np.random.default_rng(2).standard_normal((1, 6, 7, 7)).astype(np.float32)
    job = _Job(None, None, w, attrs, "full")
    got = _mirrored(second_moments(x, layer(job), 10**9, np.random.default_rng(0))[0], "full")
    rows = x[0][:, ::2, ::2].reshape(6, -1).T.astype(np.float64)
    np.testing.assert_allclose(got, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["pointwise", "full", "depthwise"])
def test_second_moments_sum_samples_in_place_to_the_mean_of_their_grams(kind):
    """H summed over samples in place (BLAS syrk's upper triangle, then mirrored) is the
    sum of each sample's X^T X / rows, as one product per sample gives it."""
    from edgeopt.calibrate.input_moments import _mirrored, _patches_depthwise, second_moments
    from edgeopt.calibrate.rounding import layer

    job = {"pointwise": _conv_job(4, 12, k=1), "full": _conv_job(4, 6),
           "depthwise": _conv_job(6, 6, group=6)}[kind]
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, job.w.shape[0] if kind == "depthwise" else job.w.shape[1],
                               5, 5)).astype(np.float32) for _ in range(3)]
    totals = None
    for x in xs:
        totals = second_moments(x, layer(job), 10**9, rng, totals)
    got = _mirrored(totals[0], job.kind)
    want = 0.0
    for x in xs:
        k = job.w.shape[2]
        p = _patches_depthwise(x, k, k, [1, 1], job.attrs["pads"]).astype(np.float64)
        if kind == "depthwise":
            want = want + np.matmul(p.transpose(0, 2, 1), p) / p.shape[1]
        else:
            flat = p.transpose(1, 0, 2).reshape(p.shape[1], -1)
            want = want + flat.T @ flat / len(flat)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
