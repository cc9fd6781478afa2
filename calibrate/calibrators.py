"""Calibrators: functions from a tensor's statistics to its quantization range.

The maths is numpy only, testable without any runtime.
"""

from __future__ import annotations

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


def sqnr_db(values: np.ndarray, rmin: float, rmax: float) -> float:
    values = values.astype(np.float64)
    err = float(np.sum((values - fake_quant(values, rmin, rmax)) ** 2))
    sig = float(np.sum(values ** 2))
    if err == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(sig, 1e-300) / err)


def minmax(stats: TensorStats) -> QuantRange:
    """The global min and max seen over the calibration set."""
    return QuantRange(min(stats.min, 0.0), max(stats.max, 0.0))


def mse(stats: TensorStats, steps: int = 40, rounds: int = 2) -> QuantRange:
    """The clip range whose uniform grid has the least squared error on the sampled
    values: coordinate search over each end, shrinking from min-max; kept at min-max
    unless it is better on the calibration sample, so it is never worse."""
    base = minmax(stats)
    values = stats.sample()
    if values.size == 0 or base.rmax <= base.rmin:
        return base
    values = values.astype(np.float64)

    def err(lo: float, hi: float) -> float:
        return float(np.mean((values - fake_quant(values, lo, hi)) ** 2))

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


CALIBRATORS = {"minmax": minmax, "mse": mse}
