"""Weight rounding that minds the data (GPTQ-style) for ONNX Runtime QDQ graphs.

Rounding each weight to its nearest int8 level ignores how inputs correlate. With the
second moments H = E[x x^T] of a convolution's input patches, the rounding of one weight
column at a time is chosen and its error pushed onto the columns not yet rounded (the
GPTQ update, Frantar et al. 2022), so the layer's output error (w - w_q)^T H (w - w_q) is
what gets minimised. The per-channel scales stay as ONNX Runtime chose them, so the graph
and its integer kernels are unchanged; only the int8 values move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from edgeopt.calibrate.saturation import bound_pairs, hwio_order, pair_bounds

MAX_SAMPLES = 32
DAMPING = 0.01
BLOCK = 128           # columns per lazy-batch block of GPTQ
LARGE = 512           # from this many columns: the inverse factor without inv()


def _damped_inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse of ``h`` (or a stack of them)."""
    k = h.shape[-1]
    mean_diag = np.mean(np.diagonal(h, axis1=-2, axis2=-1), axis=-1)
    damp = DAMPING * np.maximum(mean_diag, 1e-12)
    h = h + np.eye(k) * np.asarray(damp)[..., None, None]
    if h.ndim == 2 and k >= LARGE:
        return _inverse_factor_reversed(h)
    return np.swapaxes(np.linalg.cholesky(np.linalg.inv(h)), -1, -2)


def _inverse_factor_reversed(h: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor of ``inv(h)`` from one Cholesky factor and a triangular
    inverse (2k^3/3 flops instead of inv's 2k^3 and a second Cholesky's k^3/3): with P
    the order reversal and P h P = L L^T, inv(h) = U^T U for U = P inv(L) P, upper."""
    from scipy.linalg import lapack

    rev = h[::-1, ::-1]
    lower = np.linalg.cholesky(rev)
    inverse, info = lapack.dtrtri(lower, lower=1)
    if info:
        raise np.linalg.LinAlgError("singular Cholesky factor")
    return np.ascontiguousarray(np.tril(inverse)[::-1, ::-1])


def gptq_rows(w: np.ndarray, scale: np.ndarray, h: np.ndarray, qmin: int, qmax: int,
              pairs: bool = False) -> np.ndarray:
    """Round rows of ``w`` (one output channel each, sharing ``h``) to ints of ``scale``.

    Weights that are exactly zero (pruned) stay zero: their rounding error is pushed onto
    the weights not yet rounded, as SparseGPT does, so a pruned model keeps its sparsity.
    With ``pairs`` (columns in the kernels' reduction order) each odd column is bounded by
    its even neighbour so that no pair can saturate ONNX Runtime's AVX2 kernels
    (saturation.py).

    Columns go in blocks of ``BLOCK`` (GPTQ's lazy batch update): inside a block one column
    at a time, and the block's errors reach the columns after it in one matrix product.
    """
    k = w.shape[1]
    pruned = w == 0
    try:
        hinv = _damped_inverse_factor(h)                        # upper triangular
    except np.linalg.LinAlgError:
        q = np.where(pruned, 0, np.clip(np.round(w / scale[:, None]), qmin, qmax))
        if pairs:
            bound_pairs(q)
        return q
    w = w.copy()
    q = np.empty_like(w)
    sparse = bool(pruned.any())
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        # the block's columns as contiguous rows (the same element-wise arithmetic as on
        # the columns of w, faster); its rounded values and errors the same way
        block = w[:, b0:b1].T.copy()
        done, errors = np.empty_like(block), np.empty_like(block)
        for j, i in enumerate(range(b0, b1)):
            lo, hi = pair_bounds(done[j - 1], qmin, qmax) if pairs and i % 2 else (qmin, qmax)
            column = np.clip(np.round(block[j] / scale), lo, hi)
            done[j] = np.where(pruned[:, i], 0, column) if sparse else column
            errors[j] = (block[j] - done[j] * scale) / hinv[i, i]
            block[j + 1:] -= np.outer(hinv[i, i + 1:b1], errors[j])
        q[:, b0:b1] = done.T
        if b1 < k:
            w[:, b1:] -= np.ascontiguousarray(errors.T) @ hinv[b0:b1, b1:]
    return q


def gptq_depthwise(w: np.ndarray, scale: np.ndarray, h: np.ndarray, qmin: int,
                   qmax: int) -> np.ndarray:
    """:func:`gptq_rows` of each row of ``w`` on its own ``h[c]`` (a depthwise
    convolution: one filter per channel), all channels at once; the same numbers as one
    call per channel."""
    try:
        hinv = _damped_inverse_factor(h)                        # (C, k, k)
    except np.linalg.LinAlgError:     # some channel's H is singular: that one rounds plain
        return np.stack([gptq_rows(w[c:c + 1], scale[c:c + 1], h[c], qmin, qmax)[0]
                         for c in range(w.shape[0])])
    pruned = w == 0
    w = w.copy()
    q = np.empty_like(w)
    for i in range(w.shape[1]):
        q[:, i] = np.where(pruned[:, i], 0, np.clip(np.round(w[:, i] / scale), qmin, qmax))
        err = (w[:, i] - q[:, i] * scale) / hinv[:, i, i]
        w[:, i + 1:] -= err[:, None] * hinv[:, i, i + 1:]
    return q


def _patches_depthwise(x: np.ndarray, kh: int, kw: int, stride, pads) -> np.ndarray:
    """(C, positions, kh*kw) patches of a (1, C, H, W) input: one strided copy per tap
    (a reshape of the sliding-window view copies 3 values at a time)."""
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    rows = (xp.shape[1] - kh) // stride[0] + 1
    cols = (xp.shape[2] - kw) // stride[1] + 1
    out = np.empty((xp.shape[0], rows, cols, kh, kw), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j] = xp[:, i:i + stride[0] * (rows - 1) + 1:stride[0],
                                    j:j + stride[1] * (cols - 1) + 1:stride[1]]
    return out.reshape(xp.shape[0], rows * cols, kh * kw)


def _patches_full(x: np.ndarray, kh: int, kw: int, stride, pads) -> np.ndarray:
    """(positions, C*kh*kw) im2col patches of a (1, C, H, W) input, in weight-row order."""
    p = _patches_depthwise(x, kh, kw, stride, pads)
    return p.transpose(1, 0, 2).reshape(p.shape[1], -1)


def optimize_weight_rounding(fp32_model, qdq_model, samples: Sequence[dict[str, np.ndarray]],
                             pairs: bool = True, means: dict | None = None) -> int:
    """Re-round the int8 weights of convolutions (groups 1 or depthwise), Gemms and MatMuls
    with constant weights, in place; returns how many. With ``pairs``, no int8 weight pair
    may saturate ONNX Runtime's AVX2 kernels (saturation.py).

    ``means`` maps tensor names to None: the same pass over the samples fills in each
    one's per-channel mean (bias correction's inputs, bias_correction.py), before any
    weight moves."""
    jobs = _rounding_jobs(fp32_model, qdq_model)
    if not jobs and not means:
        return 0
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these products and factorizations are small (at most a few
    # thousand wide), and with two threads on a machine shared with other work they wait
    # on each other: measured on a loaded 2-core machine, a (144 x 3136) product took 30x
    # longer and a 1280 x 1280 Cholesky 30x longer than with one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        hessians = _input_hessians(qdq_model, jobs, list(islice(samples, MAX_SAMPLES)),
                                   means if means is not None else {})
        inits = {i.name: i for i in qdq_model.graph.initializer}
        for job in jobs:
            _reround(job, hessians[_key(job.node)], inits, pairs)
    return len(jobs)


@dataclass(frozen=True)
class _Job:
    node: object               # the Conv / Gemm / MatMul
    w_dq: object               # the DequantizeLinear of its int8 weights
    w: np.ndarray              # FP32 weights, one output channel per row (MatMul: transposed)
    attrs: dict
    kind: str                  # dense | matmul | pointwise | depthwise | full


def _key(node) -> str:
    return node.name or node.output[0]


def _rounding_jobs(fp32_model, qdq_model) -> list[_Job]:
    """The layers whose int8 weights can be re-rounded, with their FP32 weights."""
    import onnx
    from onnx import numpy_helper

    fp32_weights = {i.name: i for i in fp32_model.graph.initializer}
    inits = {i.name for i in qdq_model.graph.initializer}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    jobs = []
    for node in qdq_model.graph.node:
        if node.op_type not in {"Conv", "Gemm", "MatMul"}:
            continue
        w_dq = producer.get(node.input[1])
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits:
            continue
        original = fp32_weights.get(w_dq.input[0].removesuffix("_quantized"))
        if original is None:
            continue
        w = numpy_helper.to_array(original).astype(np.float64)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        found = _layout(node.op_type, w, attrs)
        if found is not None:
            jobs.append(_Job(node, w_dq, found[0], attrs, found[1]))
    return jobs


def _layout(op: str, w: np.ndarray, attrs: dict) -> tuple[np.ndarray, str] | None:
    """A layer's weights with one output channel per row, and how its inputs make them
    (None: a layout not handled)."""
    if op == "MatMul":
        # y = x W with W (K, N): its columns are output channels (per-channel axis 1)
        return (w.T.copy(), "matmul") if w.ndim == 2 else None
    if op == "Gemm":
        # y = x W^T (+ b): rows of W are output channels, like a 1x1 convolution
        if attrs.get("transA", 0) or w.ndim != 2:
            return None
        return (w, "dense") if attrs.get("transB", 0) else (w.T.copy(), "matmul")
    group = attrs.get("group", 1)
    if w.ndim != 4 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return None
    c_out, c_in_g, kh, kw = w.shape
    if kh == kw == 1 and group == 1:
        return w, "pointwise"
    if group == c_out and c_in_g == 1:
        return w, "depthwise"
    return (w, "full") if group == 1 else None


def _input_hessians(qdq_model, jobs: list[_Job], samples,
                    means: dict) -> dict[str, np.ndarray]:
    """Each layer's H = E[x x^T] over its (quantized) input patches, by node; fills in
    the per-channel means of the tensors named in ``means``, in the same pass."""
    from edgeopt.calibrate.bias_correction import channel_mean
    from edgeopt.runtimes import capture_onnx

    names = sorted({job.node.input[0] for job in jobs} | set(means))
    hessians: dict[str, np.ndarray] = {}
    sums = dict.fromkeys(means, 0.0)
    count = 0
    for values in capture_onnx(qdq_model, samples, names):
        count += 1
        inputs = dict(zip(names, values, strict=True))
        for name in sums:
            sums[name] = sums[name] + channel_mean(inputs[name])
        for job in jobs:
            # products in float32 (the activations' own precision), sums over samples in
            # float64
            h = _second_moments(np.asarray(inputs[job.node.input[0]], np.float32), job)
            hessians[_key(job.node)] = hessians.get(_key(job.node), 0.0) + h.astype(np.float64)
    means.update({name: total / count for name, total in sums.items()})
    return {key: h / count for key, h in hessians.items()}


def _second_moments(x: np.ndarray, job: _Job) -> np.ndarray:
    """One sample's second moments of the layer's input as its weights see it."""
    w, kind = job.w, job.kind
    if kind in {"dense", "matmul"}:
        flat = x.reshape(-1, w.shape[1]).T
        return flat @ flat.T / flat.shape[1]
    if kind == "pointwise":
        flat = x[0].reshape(x.shape[1], -1)
        return flat @ flat.T / flat.shape[1]
    geometry = (w.shape[2], w.shape[3], job.attrs.get("strides", [1, 1]),
                job.attrs.get("pads", [0, 0, 0, 0]))
    if kind == "full":
        flat = _patches_full(x, *geometry)
        return flat.T @ flat / flat.shape[0]
    p = _patches_depthwise(x, *geometry)
    return np.matmul(p.transpose(0, 2, 1), p) / p.shape[1]       # batched BLAS, not einsum


def _reround(job: _Job, h: np.ndarray, inits: dict, pairs: bool) -> None:
    """Round one layer's weights with GPTQ on ``h`` and store them in its int8 initializer."""
    from onnx import numpy_helper

    w, kind = job.w, job.kind
    scale = numpy_helper.to_array(inits[job.w_dq.input[1]]).astype(np.float64).reshape(-1)
    q_init = inits[job.w_dq.input[0]]
    dtype = numpy_helper.to_array(q_init).dtype
    info = np.iinfo(dtype)
    qmin, qmax = (-127, 127) if dtype == np.int8 else (info.min, info.max)
    rows = w.reshape(w.shape[0], -1)
    if scale.size == 1:
        scale = np.full(rows.shape[0], scale[0])
    bounded = pairs and dtype == np.int8      # U8S8: no pair may saturate
    if kind == "full":                        # the kernels reduce channels innermost
        order = hwio_order(*w.shape[1:])
        q = np.empty_like(rows)
        q[:, order] = gptq_rows(rows[:, order], scale, h[np.ix_(order, order)], qmin,
                                qmax, bounded)
    elif kind != "depthwise":
        q = gptq_rows(rows, scale, h, qmin, qmax, bounded)
    else:
        q = gptq_depthwise(rows, scale, h, qmin, qmax)
    q = q.reshape(w.shape)
    if kind == "matmul":
        q = q.T
    q_init.CopyFrom(numpy_helper.from_array(q.astype(dtype), q_init.name))
