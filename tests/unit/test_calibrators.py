"""Calibrator maths in numpy: no runtime needed."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.calibrate.calibrators import fake_quant, minmax, mse, sqnr_db
from edgeopt.calibrate.stats import TensorStats


def stats_of(values: np.ndarray) -> TensorStats:
    return TensorStats("t", float(values.min()), float(values.max()), values.size,
                       values.astype(np.float32))


def sample(dist: str, seed: int, outliers: tuple[float, float]) -> np.ndarray:
    """20,000 values from a named distribution (outliers: a Gaussian plus two far values)."""
    rng = np.random.default_rng(seed)
    if dist == "gaussian":
        return rng.standard_normal(20000)
    if dist == "laplace":
        return rng.laplace(size=20000)
    if dist == "student_t":
        return rng.standard_t(3, size=20000)
    return np.concatenate([rng.standard_normal(20000), outliers])


def test_fake_quant_keeps_zero_exact_and_stays_in_range():
    v = np.linspace(-1.3, 2.7, 1001)
    q = fake_quant(v, -1.3, 2.7)
    assert len(np.unique(q)) <= 256
    assert fake_quant(np.zeros(3), -1.3, 2.7).tolist() == [0.0, 0.0, 0.0]
    step = 4.0 / 255
    # the zero-point is rounded so 0 is exact: the grid may move by up to one step
    assert q.min() >= -1.3 - step and q.max() <= 2.7 + step
    assert np.abs(q - v).max() <= step


def test_minmax_is_the_global_range_including_zero():
    r = minmax(stats_of(np.array([0.5, 3.0, 1.0])))
    assert (r.rmin, r.rmax) == (0.0, 3.0)


@pytest.mark.parametrize("dist", ["gaussian", "laplace", "student_t", "outliers"])
def test_mse_never_worse_than_minmax(dist):
    v = sample(dist, seed=0, outliers=(80.0, -60.0))
    s = stats_of(v)
    a, b = minmax(s), mse(s)
    assert sqnr_db(v, b.rmin, b.rmax) >= sqnr_db(v, a.rmin, a.rmax) - 1e-9
    assert b.rmin <= 0.0 <= b.rmax
    assert a.rmin <= b.rmin and b.rmax <= a.rmax


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dist", ["gaussian", "laplace", "student_t", "outliers"])
def test_kmeans_never_worse_than_minmax_and_wins_below_8_bits(dist, bits):
    from edgeopt.calibrate.calibrators import KMeansConfig, kmeans

    v = sample(dist, seed=1, outliers=(40.0, -30.0))
    levels = (1 << bits) - 1
    s = stats_of(v)
    base = minmax(s)
    fit = kmeans(s, KMeansConfig(bits=bits))
    gain = sqnr_db(v, fit.rmin, fit.rmax, levels) - sqnr_db(v, base.rmin, base.rmax, levels)
    assert gain >= 0.0
    assert fit.rmin <= 0.0 <= fit.rmax
    if bits == 4:  # a coarse grid: fitting the range to the values pays by several dB
        assert gain > 2.0, gain


def test_kmeans_stays_near_minmax_on_uniform_data():
    """Min-max is already the best uniform grid for uniform values."""
    from edgeopt.calibrate.calibrators import kmeans

    v = np.random.default_rng(2).uniform(0.0, 1.0, 20000)
    s = stats_of(v)
    fit, base = kmeans(s), minmax(s)
    assert abs(fit.rmax - base.rmax) < 0.02 * base.rmax
    assert sqnr_db(v, fit.rmin, fit.rmax) - sqnr_db(v, base.rmin, base.rmax) < 0.2
