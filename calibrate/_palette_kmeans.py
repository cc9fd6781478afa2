"""Weighted 1-D k-means for palettization, and the uniform grid it must beat.

The maths of :mod:`edgeopt.calibrate.palettize`: numpy only, no ONNX.
"""

from __future__ import annotations

import numpy as np


def _batched_searchsorted(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row g: how many of the sorted ``x[g]`` are < ``b[g, j]``."""
    g, m = x.shape
    lo = x[:, :1]
    span = np.maximum(x[:, -1:] - lo, 1e-30)
    offset = 4.0 * np.arange(g)[:, None]
    xs = (x - lo) / span + offset
    bs = np.clip((b - lo) / span, -1.0, 2.0) + offset
    return np.searchsorted(xs.ravel(), bs.ravel(), side="left").reshape(b.shape) - m * np.arange(g)[:, None]


def _cluster_sums(prefix: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.take_along_axis(prefix, edges[:, 1:], 1) - np.take_along_axis(prefix, edges[:, :-1], 1)


def _lloyd(x, cw, cwx, cwx2, c, iterations):
    """Lloyd iterations on sorted rows with weight prefix sums; returns centroids, cost."""
    g, m = x.shape
    ends = (np.zeros((g, 1), np.int64), np.full((g, 1), m, np.int64))
    for step in range(iterations + 1):
        c = np.sort(c, axis=1)
        edges = np.concatenate([ends[0], _batched_searchsorted(x, (c[:, 1:] + c[:, :-1]) / 2), ends[1]], 1)
        sw, swx = _cluster_sums(cw, edges), _cluster_sums(cwx, edges)
        if step == iterations:
            break
        c = np.where(sw > 0, swx / np.where(sw > 0, sw, 1.0), c)
    cost = (_cluster_sums(cwx2, edges) - 2 * c * swx + c * c * sw).sum(1)
    return c, cost


def kmeans_1d(values: np.ndarray, k: int, importance: np.ndarray | None = None,
              iterations: int = 30) -> np.ndarray:
    """Weighted 1-D k-means of each row of ``values`` ([G, M]): the sorted centroids [G, k].

    Lloyd iterations from three starts (weighted quantiles, the min-max uniform grid, the
    symmetric abs-max grid), keeping each row's best. Lloyd never raises the cost, so the
    result is never worse in weighted MSE than either uniform grid of the same size.
    Deterministic (no random start).
    """
    x = np.asarray(values, dtype=np.float64)
    w = np.ones_like(x) if importance is None else np.asarray(importance, dtype=np.float64)
    order = np.argsort(x, axis=1, kind="stable")
    x = np.take_along_axis(x, order, 1)
    w = np.take_along_axis(w, order, 1) + 1e-12 * max(float(w.mean()), 1e-30)
    zero = np.zeros((len(x), 1))
    cw, cwx, cwx2 = (np.concatenate([zero, np.cumsum(v, axis=1)], 1) for v in (w, w * x, w * x * x))
    lo, hi = x[:, :1], x[:, -1:]
    steps = np.arange(k) / max(k - 1, 1)
    absmax = np.maximum(np.abs(lo), np.abs(hi))
    half = max(k // 2 - 1, 1)
    quantile_pos = np.minimum(_batched_searchsorted(cw[:, 1:], cw[:, -1:] * (np.arange(k) + 0.5) / k),
                              x.shape[1] - 1)
    starts = [np.take_along_axis(x, quantile_pos, 1), lo + (hi - lo) * steps,
              absmax / half * (np.arange(k) - k // 2)]
    best_c, best_cost = None, None
    for start in starts:
        c, cost = _lloyd(x, cw, cwx, cwx2, start, iterations)
        if best_c is None:
            best_c, best_cost = c, cost
        else:
            better = cost < best_cost
            best_c[better], best_cost[better] = c[better], cost[better]
    return best_c


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for every value (rows matched), as uint8."""
    out = np.empty(values.shape, np.uint8)
    rows = max(1, (1 << 22) // max(values.shape[1] * centroids.shape[1], 1))
    for start in range(0, len(values), rows):
        v, c = values[start:start + rows], centroids[start:start + rows]
        out[start:start + rows] = np.abs(v[:, :, None] - c[:, None, :]).argmin(2)
    return out


def uniform_grid(values: np.ndarray, k: int) -> np.ndarray:
    """The min-max uniform grid of ``k`` levels per row (the baseline k-means must beat)."""
    lo, hi = values.min(1, keepdims=True), values.max(1, keepdims=True)
    return lo + (hi - lo) * (np.arange(k) / max(k - 1, 1))


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref - got) ** 2))
    return float("inf") if noise == 0 else round(10 * np.log10(max(float(np.sum(ref * ref)), 1e-30) / noise), 2)
