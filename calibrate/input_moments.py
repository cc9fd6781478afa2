"""The input second moments H = E[x x^T] the weight rounding (rounding.py) rounds with,
taken on the FP32 model and computed once per process for every ONNX Runtime build of it.

A layer's H comes from its input as the FP32 model computes it (the equalized FP32 graph
the rounding receives), not from the QDQ graph being rounded: so it does not depend on
which layers a build keeps FP32, how its saturation guard scaled the weights, or which
build asked first. Builds of the same model (the main build, the weighing variants of
tradeoffs.py, search trials, the sensitivity probe) share one entry of the process's memo
(reuse.py), keyed by content: the FP32 model's serialized bytes, the samples', and SEED.
In it each layer's H is keyed by what decides it (:class:`Layer`: input tensor, kind,
kernel geometry, channel groups, row budget); a build that rounds a layer the entry lacks
(the stem a variant quantizes) computes just the missing ones, in one pass that captures
only their inputs, and the entry grows. Each layer's row subset has its own seed (from
SEED and its :class:`Layer`), so its H is the same whichever layers are computed with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeopt.calibrate import reuse

__all__ = ["Layer", "Moments", "fp32_tensor", "input_moments", "second_moments"]

SEED = 0
# An entry larger than this is not kept, so that it never evicts the stages it shares the
# memo with (a ResNet-50's H blocks take 253 MB in float32: each of its builds computes
# its own H, as before the memo; mobilenet-v2's and minilm's are kept).
MAX_SHARE = reuse.MAX_BYTES // 2


@dataclass(frozen=True)
class Layer:
    """What decides a layer's H: its input in the FP32 model, how its weights see it
    (``kind``: dense | matmul | pointwise | depthwise | full; ``shape``: the weights'
    shape after the output channels), the channel ``groups`` H is kept in (diagonal
    blocks), and the most input ``rows`` it is made from over all samples."""

    tensor: str
    kind: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    groups: tuple[tuple[int, int], ...]
    rows: int


@dataclass(frozen=True)
class Moments:
    """One memo entry: each layer's summed H blocks (float32, upper triangles except for
    depthwise layers; read-only), the per-channel means of FP32 tensors, over ``count``
    samples."""

    count: int
    sums: dict
    means: dict

    def hessian(self, layer: Layer) -> list[np.ndarray]:
        """``layer``'s H blocks, whole, in float64 (new arrays, the caller's own)."""
        return [_mirrored(h, layer.kind) / self.count for h in self.sums[layer]]

    def nbytes(self) -> int:
        return (sum(h.nbytes for blocks in self.sums.values() for h in blocks)
                + sum(m.nbytes for m in self.means.values()))


def input_moments(fp32_model, layers: Sequence[Layer], samples: Sequence[dict],
                  mean_tensors: Sequence[str] = ()) -> Moments:
    """The H of ``layers`` and the channel means of ``mean_tensors`` (FP32 tensors) over
    ``samples``, from the memo, with whatever it lacks computed in one pass over the FP32
    model and added to it."""
    samples = list(samples)
    key = ("ort-input-moments", hashlib.blake2b(fp32_model.SerializeToString()).hexdigest(),
           reuse.samples_digest(samples), SEED)
    found = reuse.memo().get(key) or Moments(len(samples), {}, {})
    layers = [layer for layer in dict.fromkeys(layers) if layer not in found.sums]
    names = sorted({n for n in mean_tensors if n not in found.means})
    if not layers and not names:
        return found
    sums, means = _pass(fp32_model, layers, samples, names)
    for blocks in sums.values():
        for h in blocks:
            h.flags.writeable = False
    found = Moments(len(samples), {**found.sums, **sums}, {**found.means, **means})
    if found.nbytes() <= MAX_SHARE:
        reuse.memo().put(key, found, found.nbytes())
    return found


def _pass(fp32_model, layers: list[Layer], samples: list[dict], names: list[str]):
    """Summed H blocks of ``layers`` and channel means of ``names``: one pass."""
    from edgeopt.calibrate.stats import channel_mean

    sums: dict[Layer, list[np.ndarray]] = {}
    totals = dict.fromkeys(names, 0.0)
    rngs = {layer: np.random.default_rng([SEED, int(reuse.digest(layer)[:15], 16)])
            for layer in layers}
    per_sample = {layer: -(-layer.rows // max(len(samples), 1)) for layer in layers}
    wanted = sorted({layer.tensor for layer in layers} | set(names))
    for inputs in _values(fp32_model, samples, wanted):
        for name in totals:
            totals[name] = totals[name] + channel_mean(inputs[name])
        for layer in layers:
            sums[layer] = second_moments(np.asarray(inputs[layer.tensor], np.float32), layer,
                                         per_sample[layer], rngs[layer], sums.get(layer))
    count = max(len(samples), 1)
    return sums, {name: total / count for name, total in totals.items()}


def _values(fp32_model, samples: list[dict], names: list[str]):
    """Per sample, ``{name: value}`` of ``names``: the graph inputs from the sample, the
    others from ONNX Runtime (no session when only graph inputs are asked for)."""
    from edgeopt.calibrate.stats import only_what_makes
    from edgeopt.runtimes import capture_onnx

    inputs = {i.name for i in fp32_model.graph.input}
    run = [n for n in names if n not in inputs]
    # only the nodes that compute them run (the stem variant's early tensors: a few)
    captured = (capture_onnx(only_what_makes(fp32_model, run), samples, run) if run
                else ([] for _ in samples))
    for sample, values in zip(samples, captured, strict=True):
        found = dict(zip(run, values, strict=True))
        found.update({n: np.asarray(sample[n]) for n in names if n not in found})
        yield found


def fp32_tensor(name: str, producer: dict, fp32_tensors: set[str]) -> str | None:
    """The FP32 model's tensor a QDQ graph's tensor ``name`` carries: itself if the FP32
    graph has it, else what the QuantizeLinear/DequantizeLinear pair before it quantizes
    (None: neither)."""
    while name not in fp32_tensors:
        node = producer.get(name)
        if node is None or node.op_type not in {"DequantizeLinear", "QuantizeLinear"}:
            return None
        name = node.input[0]
    return name


def _patches_depthwise(x: np.ndarray, kh: int, kw: int, stride, pads,
                       pick: np.ndarray | None = None) -> np.ndarray:
    """(C, positions, kh*kw) patches of a (1, C, H, W) input: one strided copy per tap
    (a reshape of the sliding-window view copies 3 values at a time); with ``pick`` (flat
    output positions) only those, in that order."""
    if pick is not None:                     # gathered from x, the padding masked in
        cols = (x.shape[3] + pads[1] + pads[3] - kw) // stride[1] + 1
        top = (pick // cols * stride[0] - pads[0])[:, None, None] + np.arange(kh)[None, :, None]
        left = (pick % cols * stride[1] - pads[1])[:, None, None] + np.arange(kw)[None, None, :]
        inside = (top >= 0) & (top < x.shape[2]) & (left >= 0) & (left < x.shape[3])
        got = x[0][:, np.clip(top, 0, x.shape[2] - 1), np.clip(left, 0, x.shape[3] - 1)]
        got *= inside
        return got.reshape(x.shape[1], pick.size, kh * kw)
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    rows = (xp.shape[1] - kh) // stride[0] + 1
    cols = (xp.shape[2] - kw) // stride[1] + 1
    out = np.empty((xp.shape[0], rows, cols, kh, kw), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j] = xp[:, i:i + stride[0] * (rows - 1) + 1:stride[0],
                                    j:j + stride[1] * (cols - 1) + 1:stride[1]]
    return out.reshape(xp.shape[0], rows * cols, kh * kw)


def _patches_full(x: np.ndarray, kh: int, kw: int, stride, pads,
                  pick: np.ndarray | None = None) -> np.ndarray:
    """(positions, C*kh*kw) im2col patches of a (1, C, H, W) input, in weight-row order."""
    p = _patches_depthwise(x, kh, kw, stride, pads, pick)
    return p.transpose(1, 0, 2).reshape(p.shape[1], -1)


def _pick(total: int, wanted: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted seeded random subset of ``wanted`` of ``total`` positions (None: all)."""
    if wanted >= total:
        return None
    return np.sort(rng.choice(total, size=wanted, replace=False))


def _gram(flat: np.ndarray, groups, per_channel: int = 1,
          totals: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """``totals`` plus flat^T flat / rows on each group's columns (``per_channel`` columns a
    channel), in place: the upper triangles only (:func:`_mirrored` completes them)."""
    return [_syrk(flat[:, c0 * per_channel:c1 * per_channel], totals[g] if totals else None)
            for g, (c0, c1) in enumerate(groups)]


def _syrk(rows: np.ndarray, total: np.ndarray | None) -> np.ndarray:
    """``total`` + rows^T rows / len(rows) by BLAS syrk: the upper triangle, in place in the
    Fortran-ordered float32 ``total`` (a new one if None). Half the products of
    ``rows.T @ rows``, and no k x k temporaries: on a 2048-wide layer fed 49 rows a sample
    (a ResNet-50's last stage) 10x faster than that product, scaled and added."""
    from scipy.linalg.blas import ssyrk

    k = rows.shape[1]
    if total is None:
        total = np.zeros((k, k), np.float32, order="F")
    if not (rows.flags.f_contiguous or rows.flags.c_contiguous):
        rows = np.ascontiguousarray(rows)
    fortran = rows.flags.f_contiguous      # (rows, k) as is; else its transpose is
    return ssyrk(1.0 / max(rows.shape[0], 1), rows if fortran else rows.T, beta=1.0,
                 c=total, trans=int(fortran), overwrite_c=1)


def _mirrored(h: np.ndarray, kind: str) -> np.ndarray:
    """A summed H in float64, whole: :func:`_gram`'s upper triangle mirrored (depthwise
    layers sum whole matrices)."""
    h = h.astype(np.float64)
    if kind == "depthwise":
        return h
    whole = h + h.T                 # syrk leaves the strictly lower triangle at zero
    np.fill_diagonal(whole, np.diagonal(h))
    return whole


def second_moments(x: np.ndarray, layer: Layer, wanted: int, rng: np.random.Generator,
                   totals: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """``totals`` plus one sample's second moments of the layer's input as its weights see
    it (the blocks of its channel groups, float32, summed in place; upper triangles
    except for depthwise layers), over at most ``wanted`` of its positions (a seeded random
    subset)."""
    kind, groups = layer.kind, layer.groups
    if kind == "pointwise":                  # channels as rows: a contiguous gather
        rows = x[0].reshape(x.shape[1], -1)
        pick = _pick(rows.shape[1], wanted, rng)
        return _gram((rows if pick is None else rows[:, pick]).T, groups, totals=totals)
    if kind in {"dense", "matmul"}:
        flat = x.reshape(-1, layer.shape[0])
        pick = _pick(flat.shape[0], wanted, rng)
        return _gram(flat if pick is None else flat[pick], groups, totals=totals)
    kh, kw = layer.shape[1], layer.shape[2]
    stride, pads = layer.strides, layer.pads
    total = (((x.shape[2] + pads[0] + pads[2] - kh) // stride[0] + 1)
             * ((x.shape[3] + pads[1] + pads[3] - kw) // stride[1] + 1))
    pick = _pick(total, wanted, rng)
    if kind == "full":
        flat = _patches_full(x, kh, kw, stride, pads, pick)
        return _gram(flat, groups, kh * kw, totals)
    p = _patches_depthwise(x, kh, kw, stride, pads, pick)
    h = np.matmul(p.transpose(0, 2, 1), p) / np.float32(p.shape[1])   # batched BLAS
    if totals:
        totals[0] += h
        return totals
    return [h]
