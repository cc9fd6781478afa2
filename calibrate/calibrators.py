"""Calibrators: functions from a tensor's statistics to its quantization range.

The maths is numpy only, testable without any runtime.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from edgeopt.calibrate.stats import TensorStats

QMAX_U8 = 255


@dataclass(frozen=True)
class QuantRange:
    rmin: float
    rmax: float


def fake_quant(values: np.ndarray, rmin: float, rmax: float, levels: int = QMAX_U8) -> np.ndarray:
    """Quantize-dequantize with an asymmetric uniform grid on [rmin, rmax] (0 exact)."""
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    scale = (rmax - rmin) / levels if rmax > rmin else 1.0
    zero = np.round(-rmin / scale)
    q = np.clip(np.round(values / scale) + zero, 0, levels)
    return (q - zero) * scale


def sqnr_db(values: np.ndarray, rmin: float, rmax: float, levels: int = QMAX_U8) -> float:
    values = values.astype(np.float64)
    err = float(np.sum((values - fake_quant(values, rmin, rmax, levels)) ** 2))
    sig = float(np.sum(values ** 2))
    if err == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(sig, 1e-300) / err)


FEW_VALUES = 64     # per sample: below, mean-minmax takes min-max


def minmax(stats: TensorStats) -> QuantRange:
    """The global min and max seen over the calibration set."""
    return QuantRange(min(stats.min, 0.0), max(stats.max, 0.0))


def mean_minmax(stats: TensorStats) -> QuantRange:
    """The mean over calibration samples of each sample's min and max (NNCF's default
    activation estimator; ONNX Runtime's MinMax with moving average). It clips the rare
    extremes that a single sample brings, without looking at the distribution.

    A tensor of fewer than FEW_VALUES values per sample (a feature vector, a small head)
    gets min-max: the extremes of a handful of values sit well inside the distribution's
    (six normal values average a max of 1.3 sigma), so their mean would clip every sample."""
    if stats.samples and stats.count < FEW_VALUES * stats.samples:
        return minmax(stats)
    return QuantRange(min(stats.mean_min, 0.0), max(stats.mean_max, 0.0))


def mse(stats: TensorStats, steps: int = 40, rounds: int = 2, levels: int = QMAX_U8) -> QuantRange:
    """The clip range whose uniform grid has the least squared error on the sampled
    values: coordinate search over each end, shrinking from min-max; kept at min-max
    unless it is better on the calibration sample, so it is never worse."""
    base = minmax(stats)
    values = stats.sample()
    if values.size == 0 or base.rmax <= base.rmin:
        return base
    values = values.astype(np.float64)

    def err(lo: float, hi: float) -> float:
        return float(np.mean((values - fake_quant(values, lo, hi, levels)) ** 2))

    lo, hi = base.rmin, base.rmax
    best = err(lo, hi)
    fractions = np.linspace(0.05, 1.0, steps)
    for _ in range(rounds):
        if hi > 0:
            for f in fractions:
                e = err(lo, base.rmax * f)
                if e < best:
                    best, hi = e, base.rmax * f
        if lo < 0:
            for f in fractions:
                e = err(base.rmin * f, hi)
                if e < best:
                    best, lo = e, base.rmin * f
    return QuantRange(lo, hi)


@dataclass(frozen=True)
class KMeansConfig:
    bits: int = 8
    clip_steps: int = 40
    lloyd_iterations: int = 10
    min_gain_db: float = 0.05      # keep min-max unless the fit is better by this much


def kmeans(stats: TensorStats, cfg: KMeansConfig = KMeansConfig()) -> QuantRange:
    """The range whose uniform grid best fits the sampled values: 1-D k-means with the
    2^bits centroids tied to a uniform grid (Lloyd-Max under that constraint).

    Starts from the best clip of min-max (``mse``), then alternates Lloyd steps: assign
    each value to its nearest grid level, then refit the grid's offset and step by least
    squares to the values so assigned. Kept at min-max unless calibration SQNR improves by
    ``min_gain_db``, so it is never worse than min-max on the calibration data.
    """
    levels = (1 << cfg.bits) - 1
    base = minmax(stats)
    values = stats.sample().astype(np.float64)
    if values.size < 2 or base.rmax <= base.rmin:
        return base
    start = mse(stats, steps=cfg.clip_steps, levels=levels)
    lo, hi = start.rmin, start.rmax
    best_lo, best_hi = lo, hi
    best_sqnr = sqnr_db(values, lo, hi, levels)
    for _ in range(cfg.lloyd_iterations):
        step = (hi - lo) / levels
        k = np.clip(np.round((values - lo) / step), 0, levels)
        # least squares for v ~ offset + step * k
        design = np.stack([np.ones_like(k), k], axis=1)
        (offset, new_step), *_ = np.linalg.lstsq(design, values, rcond=None)
        if new_step <= 0:
            break
        lo, hi = min(offset, 0.0), max(offset + new_step * levels, 0.0)
        sqnr = sqnr_db(values, lo, hi, levels)
        if sqnr > best_sqnr:
            best_lo, best_hi, best_sqnr = lo, hi, sqnr
    if best_sqnr < sqnr_db(values, base.rmin, base.rmax, levels) + cfg.min_gain_db:
        return base
    return QuantRange(best_lo, best_hi)


CALIBRATORS = {"minmax": minmax, "mean-minmax": mean_minmax, "mse": mse, "kmeans": kmeans}
DEFAULT_CALIBRATOR = "mean-minmax"


def compute_ranges(stats: dict[str, TensorStats], calibrator: str,
                   inputs: Collection[str] = (),
                   protected: Mapping[str, tuple[float, float] | None] | None = None,
                   ) -> dict[str, QuantRange]:
    """Each tensor's range by the named calibrator. The graph ``inputs`` named get their
    full range (min-max): an input is the data itself, not a layer's output, and a clip
    there only reflects how many dark or bright samples the calibration set had (ONNX
    Runtime's quantizer takes this; NNCF's symmetric input quantizer does not).

    ``protected`` tensors (``output_ranges.protected_ranges``) are never clipped: a
    bounded function's output takes its mathematical range, what reaches a graph output
    its full observed range."""
    choose = CALIBRATORS[calibrator]
    protected = protected or {}
    ranges = {name: (minmax if name in inputs or name in protected else choose)(s)
              for name, s in stats.items() if s.count}
    for name, bounds in protected.items():
        if bounds is not None and (name in ranges or name in stats):
            ranges[name] = QuantRange(float(bounds[0]), float(bounds[1]))
    return ranges


def sqnr_gain_db(stats: dict[str, TensorStats], ranges: dict[str, QuantRange],
                 levels: int = QMAX_U8) -> dict[str, float]:
    """Calibration SQNR of ``ranges`` minus that of min-max, per tensor (on the reservoirs)."""
    gains = {}
    for name, r in ranges.items():
        values = stats[name].sample()
        if values.size == 0:
            continue
        base = minmax(stats[name])
        a, b = sqnr_db(values, r.rmin, r.rmax, levels), sqnr_db(values, base.rmin, base.rmax, levels)
        if np.isfinite(a) and np.isfinite(b):
            gains[name] = a - b
    return gains
