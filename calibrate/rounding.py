"""Weight rounding that minds the data (GPTQ-style) for ONNX Runtime QDQ graphs.

Rounding each weight to its nearest int8 level ignores how inputs correlate. With the
second moments H = E[x x^T] of a convolution's input patches, the rounding of one weight
column at a time is chosen and its error pushed onto the columns not yet rounded (the
GPTQ update, Frantar et al. 2022), so the layer's output error (w - w_q)^T H (w - w_q) is
what gets minimised. The per-channel scales stay as ONNX Runtime chose them, so the graph
and its integer kernels are unchanged; only the int8 values move.

H is that of the layer's input in the FP32 model (input_moments.py): computed once per
process for all the builds of one model, whichever layers each keeps FP32. The cost is
bounded (docs/quantization.md): H from at most ``MAX_SAMPLES`` samples and a seeded subset
of at most :func:`row_budget` input rows; layers wider than ``MAX_COLUMNS`` in channel
groups on H's diagonal blocks (:func:`channel_groups`); GPTQ in its nearest-plane form,
which needs one Cholesky factor of H and no inverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, pairwise

import numpy as np

from edgeopt.calibrate.input_moments import Layer, fp32_tensor, input_moments
from edgeopt.calibrate.saturation import bound_pairs, hwio_order, pair_bounds

MAX_SAMPLES = 32
DAMPING = 0.01
BLOCK = 128           # columns per lazy-batch block of GPTQ
SUB_BLOCK = 16        # inside a block, columns whose errors reach the rest in one product
# H of a layer comes from at most max(MIN_ROWS, ROWS_PER_COLUMN * columns) rows (input
# patches), an equal seeded random subset of each sample's spatial positions: past that
# the estimate hardly moves, while its cost (im2col and the X^T X product) grows with
# the positions; a ResNet-50's early 3x3 convolutions have 100k patches over 32 samples.
ROWS_PER_COLUMN = 8
MIN_ROWS = 4096
# A layer wider than this is rounded in independent groups of input channels, each at
# most this many columns wide, on its own block of H (H taken block-diagonal): the X^T X
# products then grow with the columns times the group width, the factorizations with the
# columns times its square, instead of the columns squared and cubed (a ResNet-50's last
# 3x3 convolutions have 4608).
MAX_COLUMNS = 2048


def _damped(h: np.ndarray) -> np.ndarray:
    """``h`` (or a stack of them) plus DAMPING times its mean diagonal."""
    k = h.shape[-1]
    mean_diag = np.mean(np.diagonal(h, axis1=-2, axis2=-1), axis=-1)
    damp = DAMPING * np.maximum(mean_diag, 1e-12)
    return h + np.eye(k) * np.asarray(damp)[..., None, None]


def _damped_inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse of ``h`` (a stack of small ones)."""
    return np.swapaxes(np.linalg.cholesky(np.linalg.inv(_damped(h))), -1, -2)


def _reversed_factor(h: np.ndarray) -> np.ndarray:
    """Upper triangular M with M M^T = the damped ``h``: the Cholesky factor of ``h`` in
    reversed order (P h P = L L^T, M = P L P). M is the inverse of GPTQ's upper Cholesky
    factor of inv(h), so no inverse is needed (one k^3/3 factorization)."""
    return np.linalg.cholesky(_damped(h)[::-1, ::-1])[::-1, ::-1]


def gptq_rows(w: np.ndarray, scale: np.ndarray, h: np.ndarray, qmin: int, qmax: int,
              pairs: bool = False) -> np.ndarray:
    """Round rows of ``w`` (one output channel each, sharing ``h``) to ints of ``scale``.

    Weights that are exactly zero (pruned) stay zero: their rounding error is pushed onto
    the weights not yet rounded, as SparseGPT does, so a pruned model keeps its sparsity.
    With ``pairs`` (columns in the kernels' reduction order) each odd column is bounded by
    its even neighbour so that no pair can saturate ONNX Runtime's AVX2 kernels
    (saturation.py).

    GPTQ's column-by-column rounding, in its nearest-plane form (Chen et al. 2025, "GPTQ
    as Babai's nearest plane algorithm"): with h = M M^T (M upper), the output error
    (w - w_q)^T h (w - w_q) is the sum over columns i of (M^T z)_i^2, z = w - w_q, and
    column i is rounded to zero its term given the columns before it: the target is
    w_i + sum_{j<i} z_j M_ji / M_ii. The same ints as GPTQ's update with the Cholesky
    factor of inv(h) (up to a rare tie), without that inverse. Columns go in blocks of
    ``BLOCK`` (GPTQ's lazy batch update): inside a block one column at a time, and the
    block's errors reach the columns after it in one matrix product; the same inside a
    block, in sub-blocks of ``SUB_BLOCK`` columns (the same ints, fewer rank-1 updates).
    """
    k = w.shape[1]
    pruned = w == 0
    try:
        m = _reversed_factor(h)                                 # upper triangular
    except np.linalg.LinAlgError:
        q = np.where(pruned, 0, np.clip(np.round(w / scale[:, None]), qmin, qmax))
        if pairs:
            bound_pairs(q)
        return q
    coef = m / np.diagonal(m)[None, :]                          # M_ji / M_ii
    target = w.copy()
    q = np.empty_like(w)
    sparse = bool(pruned.any())
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        # the block's columns as contiguous rows (faster than the columns of w)
        block, wanted = target[:, b0:b1].T.copy(), w[:, b0:b1].T
        done, errors = np.empty_like(block), np.empty_like(block)
        for s0 in range(0, b1 - b0, SUB_BLOCK):
            s1 = min(s0 + SUB_BLOCK, b1 - b0)
            for j in range(s0, s1):
                i = b0 + j
                # ufuncs with out= (np.clip, np.round, np.outer cost more in their wrappers
                # than in their arithmetic at these sizes); the same values
                lo, hi = (pair_bounds(done[j - 1], qmin, qmax) if pairs and i % 2
                          else (qmin, qmax))
                column = done[j]
                np.rint(np.divide(block[j], scale, out=column), out=column)
                np.minimum(np.maximum(column, lo, out=column), hi, out=column)
                if sparse:
                    column[pruned[:, i]] = 0
                np.subtract(wanted[j], np.multiply(column, scale, out=errors[j]),
                            out=errors[j])
                block[j + 1:s1] += coef[i, i + 1:b0 + s1, None] * errors[j]
            if s1 < b1 - b0:             # the sub-block's errors reach the rest of the block
                block[s1:] += coef[b0 + s0:b0 + s1, b0 + s1:b1].T @ errors[s0:s1]
        q[:, b0:b1] = done.T
        if b1 < k:
            target[:, b1:] += np.ascontiguousarray(errors.T) @ coef[b0:b1, b1:]
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


def optimize_weight_rounding(fp32_model, qdq_model, samples: Sequence[dict[str, np.ndarray]],
                             pairs: bool = True,
                             means: dict | None = None) -> tuple[int, int]:
    """Re-round the int8 weights of convolutions (groups 1 or depthwise), Gemms and MatMuls
    with constant weights, in place; returns how many, and how many of them were wider than
    ``MAX_COLUMNS`` (rounded per channel group). With ``pairs``, no int8 weight pair may
    saturate ONNX Runtime's AVX2 kernels (saturation.py). ``fp32_model`` is the model
    ``qdq_model`` was quantized from: each layer's H is that of its input there
    (input_moments.py, shared with the other builds of that model).

    ``means`` maps tensors of ``qdq_model`` to None: the same pass fills in the per-channel
    mean of the FP32 tensor each one quantizes (bias correction's inputs,
    bias_correction.py), as the weights were before any moved; a tensor with no FP32
    counterpart is dropped from ``means`` (bias correction then measures it itself)."""
    jobs = _rounding_jobs(fp32_model, qdq_model)
    wanted = _fp32_names(fp32_model, qdq_model, means or {})
    if means is not None:
        for name in set(means) - set(wanted):
            del means[name]
    if not jobs and not wanted:
        return 0, 0
    import scipy.linalg.blas  # noqa: F401  (loaded before the limit, so that it applies)
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these products and factorizations are small (at most a few
    # thousand wide), and with two threads on a machine shared with other work they wait
    # on each other: measured on a loaded 2-core machine, a (144 x 3136) product took 30x
    # longer and a 1280 x 1280 Cholesky 30x longer than with one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        layers = {_key(job.node): layer(job) for job in jobs}
        moments = input_moments(fp32_model, list(layers.values()),
                                list(islice(samples, MAX_SAMPLES)), sorted(set(wanted.values())))
        if means is not None:
            means.update({name: moments.means[tensor] for name, tensor in wanted.items()})
        inits = {i.name: i for i in qdq_model.graph.initializer}
        for job in jobs:
            _reround(job, moments.hessian(layers[_key(job.node)]), inits, pairs)
    return len(jobs), sum(len(channel_groups(job)) > 1 for job in jobs)


@dataclass(frozen=True)
class _Job:
    node: object               # the Conv / Gemm / MatMul
    w_dq: object               # the DequantizeLinear of its int8 weights
    w: np.ndarray              # FP32 weights, one output channel per row (MatMul: transposed)
    attrs: dict
    kind: str                  # dense | matmul | pointwise | depthwise | full
    tensor: str = ""           # its input in the FP32 model


def _key(node) -> str:
    return node.name or node.output[0]


def layer(job: _Job) -> Layer:
    """What decides ``job``'s H (input_moments.py)."""
    return Layer(job.tensor, job.kind, tuple(job.w.shape[1:]),
                 tuple(job.attrs.get("strides", [1, 1])), tuple(job.attrs.get("pads", [0] * 4)),
                 tuple(channel_groups(job)), row_budget(job))


def _fp32_tensors(fp32_model) -> set[str]:
    graph = fp32_model.graph
    return {i.name for i in graph.input} | {o for n in graph.node for o in n.output}


def _fp32_names(fp32_model, qdq_model, names) -> dict[str, str]:
    """The FP32 tensor each of ``names`` (tensors of ``qdq_model``) quantizes, where known."""
    if not names:
        return {}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    tensors = _fp32_tensors(fp32_model)
    found = {name: fp32_tensor(name, producer, tensors) for name in names}
    return {name: tensor for name, tensor in found.items() if tensor is not None}


def _rounding_jobs(fp32_model, qdq_model) -> list[_Job]:
    """The layers whose int8 weights can be re-rounded, with their FP32 weights and the
    FP32 tensor their input quantizes."""
    import onnx
    from onnx import numpy_helper

    fp32_weights = {i.name: i for i in fp32_model.graph.initializer}
    tensors = _fp32_tensors(fp32_model)
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
        tensor = fp32_tensor(node.input[0], producer, tensors)
        if original is None or tensor is None:
            continue
        w = numpy_helper.to_array(original).astype(np.float64)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        found = _layout(node.op_type, w, attrs)
        if found is not None:
            jobs.append(_Job(node, w_dq, found[0], attrs, found[1], tensor))
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
        # a strided or padded 1x1 reads only some positions, or zeros: the patch path
        plain = (all(s == 1 for s in attrs.get("strides", [1, 1]))
                 and not any(attrs.get("pads", [0] * 4)))
        return w, "pointwise" if plain else "full"
    if group == c_out and c_in_g == 1:
        return w, "depthwise"
    return (w, "full") if group == 1 else None


def channel_groups(job: _Job) -> list[tuple[int, int]]:
    """The input-channel ranges a layer is rounded in: one, or near-equal groups of at most
    ``MAX_COLUMNS`` columns starting at even channels (so no int8 pair of the kernels'
    reduction order spans two groups). Depthwise layers and odd channel counts: one."""
    w = job.w
    channels = w.shape[1]
    per_channel = w[0].size // channels
    if (job.kind == "depthwise" or w[0].size <= MAX_COLUMNS
            or (channels % 2 and per_channel > 1)):
        return [(0, channels)]
    n = -(-w[0].size // MAX_COLUMNS)
    cuts = [0, *(2 * round(i * channels / n / 2) for i in range(1, n)), channels]
    return list(pairwise(cuts))


def row_budget(job: _Job) -> int:
    """The most input rows (patches) a layer's H is made from, over all samples."""
    w = job.w
    columns = w.shape[2] * w.shape[3] if job.kind == "depthwise" else w[0].size
    return max(MIN_ROWS, ROWS_PER_COLUMN * min(columns, MAX_COLUMNS))


def _reround(job: _Job, blocks: list[np.ndarray], inits: dict, pairs: bool) -> None:
    """Round one layer's weights with GPTQ on its H ``blocks`` (one per channel group) and
    store them in its int8 initializer."""
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
    if kind == "depthwise":
        q = gptq_depthwise(rows, scale, blocks[0], qmin, qmax)
    else:
        q = np.empty_like(rows)
        per_channel = rows.shape[1] // w.shape[1]
        for (c0, c1), h in zip(channel_groups(job), blocks, strict=True):
            # a convolution's kernels reduce channels innermost: its columns go in that order
            order = (hwio_order(c1 - c0, *w.shape[2:]) if kind == "full"
                     else np.arange(c1 - c0)) + c0 * per_channel
            local = order - c0 * per_channel
            if kind == "full":
                h = h[np.ix_(local, local)]
            q[:, order] = gptq_rows(rows[:, order], scale, h, qmin, qmax, bounded)
    q = q.reshape(w.shape)
    if kind == "matmul":
        q = q.T
    q_init.CopyFrom(numpy_helper.from_array(q.astype(dtype), q_init.name))
