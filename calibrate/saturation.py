"""Int8 weights that ONNX Runtime's AVX2 kernels cannot saturate.

On x86-64 without VNNI (AVX2 only: AMD Zen 1-3, Intel before Ice Lake), ONNX Runtime's
U8S8 GEMM and convolution kernels multiply with ``vpmaddubsw``: the products of two
neighbouring reduction elements, ``a[k] * w[k] + a[k+1] * w[k+1]`` for even ``k``, are
added into a *saturating* int16 before they are widened. With uint8 activations up to 255
and int8 weights up to 127, that sum reaches 64770 and is clamped to 32767 (ONNX Runtime's
quantization docs name the problem and suggest 7-bit weights or U8U8). VNNI's
``vpdpbusd`` and ARM's dot products do not saturate, so the same artifact gives different
numbers on different CPUs, and on AVX2 the saturated sums cost accuracy that the same
graph run unfused does not lose.

The pairs can only saturate when both weights have the same sign; then the sum is at most
255 * (|w[k]| + |w[k+1]|), which fits int16 when |w[k]| + |w[k+1]| <= 128 (``PAIR_LIMIT``).
So instead of giving every weight a bit less (7-bit), only the same-sign pairs over that
limit are bounded, and the data-aware rounding (rounding.py) takes the bound as a
constraint, pushing what it costs onto the weights not yet rounded.

The reduction order is the one the kernels pack (probed on ONNX Runtime 1.32, AVX2):
a convolution's ``kh * kw * c_in`` patch with the input channel innermost (HWIO), a
Gemm's or MatMul's K. Depthwise convolutions widen to 16 bits before they multiply and
are left alone.
"""

from __future__ import annotations

import numpy as np

PAIR_LIMIT = 128


def pair_bounds(previous: np.ndarray, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds for the second weight of each row's pair, given the first (``previous``)."""
    hi = np.where(previous > 0, np.minimum(qmax, PAIR_LIMIT - previous), qmax)
    lo = np.where(previous < 0, np.maximum(qmin, -PAIR_LIMIT - previous), qmin)
    return lo, hi


def hwio_order(c_in: int, kh: int, kw: int) -> np.ndarray:
    """Column permutation from a convolution's OIHW-flattened rows to the kernels'
    reduction order (input channel innermost)."""
    return np.arange(c_in * kh * kw).reshape(c_in, kh * kw).T.reshape(-1)


def over_limit(rows: np.ndarray) -> np.ndarray:
    """Mask of the even-indexed columns whose pair (``k``, ``k+1``) can saturate; ``rows``
    are int weights in reduction order."""
    k = rows.shape[1] - rows.shape[1] % 2
    a, b = rows[:, 0:k:2].astype(np.int32), rows[:, 1:k:2].astype(np.int32)
    return (a * b > 0) & (np.abs(a) + np.abs(b) > PAIR_LIMIT)


def bound_pairs(rows: np.ndarray) -> int:
    """Shrink every same-sign pair over the limit in place, keeping the pair's ratio;
    returns how many pairs changed. ``rows`` are int weights in reduction order."""
    bad = over_limit(rows)
    if not bad.any():
        return 0
    k = rows.shape[1] - rows.shape[1] % 2
    a, b = rows[:, 0:k:2].astype(np.float64), rows[:, 1:k:2].astype(np.float64)
    total = np.abs(a) + np.abs(b)
    new_a = np.round(a * PAIR_LIMIT / np.maximum(total, 1))
    new_b = np.sign(b) * (PAIR_LIMIT - np.abs(new_a))
    rows[:, 0:k:2] = np.where(bad, new_a, a).astype(rows.dtype)
    rows[:, 1:k:2] = np.where(bad, new_b, b).astype(rows.dtype)
    return int(bad.sum())


def reduction_rows(weight: np.ndarray, op: str, attrs: dict,
                   even_channels: bool = False) -> tuple[np.ndarray, callable] | None:
    """``weight`` as (output channels, K) in the kernels' reduction order, and the function
    that puts such rows back into the weight's shape; None where no int8 GEMM reads it.

    A convolution's patch is ``kh * kw * c_in`` with the input channel innermost. ONNX
    Runtime flattens it (with an odd ``c_in`` a pair spans two taps); OpenVINO's oneDNN
    pads each tap's channels to an even count, so its pairs never span taps (both probed
    on AVX2): ``even_channels`` asks for that layout. ``op`` is the ONNX op type, or
    OpenVINO's Convolution / MatMul.
    """
    if op in {"Conv", "Convolution"} and weight.ndim == 4:
        c_out, c_in_g, kh, kw = weight.shape
        if attrs.get("group", 1) > 1 and c_in_g == 1:
            return None                                  # depthwise: no pairs
        hwio = weight.transpose(0, 2, 3, 1)
        pad = c_in_g % 2 if even_channels else 0
        if pad:
            hwio = np.concatenate([hwio, np.zeros((c_out, kh, kw, 1), hwio.dtype)], axis=3)
        rows = hwio.reshape(c_out, -1).copy()
        return rows, lambda r: r.reshape(c_out, kh, kw, c_in_g + pad)[..., :c_in_g].transpose(
            0, 3, 1, 2)
    if op in {"Gemm", "MatMul"} and weight.ndim == 2 and not attrs.get("transA", 0):
        if attrs.get("transB", 0) or attrs.get("transpose_b", False):
            return weight.copy(), lambda r: r
        return weight.T.copy(), lambda r: r.T
    return None


def needed_scale(rows: np.ndarray, qmax: int = 127) -> np.ndarray:
    """Per row (float weights in reduction order): the finest scale at which the row's
    largest weight fits ``qmax`` and its largest same-sign pair fits ``PAIR_LIMIT``."""
    k = rows.shape[1] - rows.shape[1] % 2
    a, b = rows[:, 0:k:2], rows[:, 1:k:2]
    pair = np.where(a * b > 0, np.abs(a) + np.abs(b), 0.0)
    pair = pair.max(axis=1) if k else np.zeros(rows.shape[0])
    return np.maximum(np.abs(rows).max(axis=1) / qmax, pair / PAIR_LIMIT)


def refit(rows: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float weight rows (reduction order) and their per-row ``scale`` (or one scale) ->
    int8 rows, the scales that keep every same-sign pair within the limit, and which
    rows' scales grew."""
    per_row = scale.reshape(-1)
    new = needed_scale(rows)
    if per_row.size == 1:
        new = np.full_like(new, new.max())
    grow = new > np.broadcast_to(per_row, new.shape) * (1 + 1e-6)
    fitted = np.where(grow, new, np.broadcast_to(per_row, new.shape)).astype(np.float32)
    q = np.clip(np.round(rows / fitted[:, None]), -127, 127)
    bound_pairs(q)
    return q, (fitted[:1] if per_row.size == 1 else fitted), grow


def _targets(qdq_model):
    """(node, weight DequantizeLinear, attrs) of every Conv/Gemm/MatMul whose int8 weight
    an integer GEMM reads."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq_model.graph.initializer}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    for node in list(qdq_model.graph.node):
        if node.op_type not in {"Conv", "Gemm", "MatMul"} or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        if inits[dq.input[0]].data_type != onnx.TensorProto.INT8:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(inits[dq.input[0]])
        if reduction_rows(weight, node.op_type, attrs) is not None:
            yield node, dq, attrs


def fit_scales(qdq_model) -> tuple[int, int]:
    """Coarsen the per-channel weight scales that a same-sign pair would saturate, in
    place: each such channel gets :func:`needed_scale` of its weights, which are requantized,
    and the int32 bias (scale = input scale x weight scale) follows. Returns (channels
    changed, channels looked at). Channels with no large same-sign pair keep their 8 bits;
    at worst (two equal largest weights side by side) a channel gets ONNX Runtime's
    ``reduce_range`` (7-bit weights)."""
    from onnx import numpy_helper

    from edgeopt.calibrate.bias_correction import dequantized

    inits = {i.name: i for i in qdq_model.graph.initializer}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    changed = seen = 0
    for node, dq, attrs in list(_targets(qdq_model)):
        old = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        rows, back = reduction_rows(dequantized(inits, dq), node.op_type, attrs)
        q, scale, grow = refit(rows, old)
        seen += grow.size
        if not grow.any():
            continue
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(
            np.ascontiguousarray(back(q)).astype(np.int8), dq.input[0]))
        inits[dq.input[1]].CopyFrom(numpy_helper.from_array(scale.reshape(old.shape),
                                                            dq.input[1]))
        _follow_bias(node, scale, inits, producer)
        changed += int(grow.sum())
    return changed, seen


def _follow_bias(node, weight_scale: np.ndarray, inits: dict, producer: dict) -> None:
    """Requantize the node's int32 bias to its new scale (input scale x weight scale)."""
    from onnx import numpy_helper

    if len(node.input) < 3 or not node.input[2]:
        return
    b_dq, x_dq = producer.get(node.input[2]), producer.get(node.input[0])
    if b_dq is None or b_dq.op_type != "DequantizeLinear" or b_dq.input[0] not in inits:
        return
    if x_dq is None or x_dq.op_type != "DequantizeLinear" or x_dq.input[1] not in inits:
        return
    x_scale = numpy_helper.to_array(inits[x_dq.input[1]]).astype(np.float32)
    old = numpy_helper.to_array(inits[b_dq.input[1]]).astype(np.float64)
    bias = numpy_helper.to_array(inits[b_dq.input[0]]).astype(np.float64) * old
    scale = (x_scale * weight_scale).astype(np.float32)
    scale = np.broadcast_to(scale, old.shape) if old.size > 1 else scale.reshape(old.shape)
    values = np.clip(np.round(bias / scale), -2**31, 2**31 - 1).astype(np.int32)
    inits[b_dq.input[0]].CopyFrom(numpy_helper.from_array(values, b_dq.input[0]))
    inits[b_dq.input[1]].CopyFrom(numpy_helper.from_array(
        np.ascontiguousarray(scale).astype(np.float32), b_dq.input[1]))


def bound_model(qdq_model) -> tuple[int, int]:
    """Bound the int8 weight pairs of every Conv/Gemm/MatMul of a QDQ graph in place (a
    last check: after :func:`fit_scales` and the constrained rounding, only a pair that
    rounding or fine-tuning took just over the limit); returns (pairs changed, layers
    changed)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq_model.graph.initializer}
    pairs = layers = 0
    for node, dq, attrs in list(_targets(qdq_model)):
        rows, back = reduction_rows(numpy_helper.to_array(inits[dq.input[0]]), node.op_type,
                                    attrs)
        changed = bound_pairs(rows)
        if changed:
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(
                np.ascontiguousarray(back(rows)).astype(np.int8), dq.input[0]))
            pairs += changed
            layers += 1
    return pairs, layers
