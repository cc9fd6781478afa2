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


def test_reservoir_is_bounded_uniform_and_tracks_exact_and_mean_extremes():
    from edgeopt.calibrate.stats import TensorStats

    rng = np.random.default_rng(0)
    s = TensorStats("t")
    chunks = [rng.normal(loc=i / 10, size=500).astype(np.float32) for i in range(200)]
    for chunk in chunks:
        s.update(chunk, capacity=4096, rng=rng)
    everything = np.concatenate(chunks)
    assert s.reservoir.size == 4096                       # fixed, not 200 x 500
    assert s.count == everything.size and s.samples == 200
    assert s.min == everything.min() and s.max == everything.max()
    assert s.mean_max == pytest.approx(np.mean([c.max() for c in chunks]))
    assert s.mean_min == pytest.approx(np.mean([c.min() for c in chunks]))
    # uniform over all 100,000 values: sample i's values centre on i/10, so the reservoir's
    # mean and quantiles match the whole stream's (tolerances are ~4 standard errors)
    assert abs(float(s.reservoir.mean()) - float(everything.mean())) < 0.4
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(s.reservoir, q) - np.quantile(everything, q)) < 0.6


def test_mean_minmax_lies_inside_the_global_range():
    from edgeopt.calibrate.calibrators import mean_minmax
    from edgeopt.calibrate.stats import TensorStats

    rng = np.random.default_rng(1)
    s = TensorStats("t")
    for _ in range(50):
        s.update(rng.standard_t(3, size=300).astype(np.float32), capacity=1024, rng=rng)
    m, g = mean_minmax(s), minmax(s)
    assert g.rmin < m.rmin < 0 < m.rmax < g.rmax


def test_sqnr_gain_is_zero_for_minmax_and_non_negative_for_kmeans():
    from edgeopt.calibrate.calibrators import compute_ranges, sqnr_gain_db

    stats = {d: stats_of(sample(d, seed=2, outliers=(50.0, -40.0)))
             for d in ("gaussian", "laplace", "student_t", "outliers")}
    assert all(abs(v) < 1e-9 for v in sqnr_gain_db(stats, compute_ranges(stats, "minmax")).values())
    gains = sqnr_gain_db(stats, compute_ranges(stats, "kmeans"))
    assert set(gains) == set(stats) and min(gains.values()) >= 0.0
    assert gains["outliers"] > 0.1                        # a far outlier is worth clipping


def test_mean_minmax_takes_min_max_on_a_few_values_per_sample():
    """Six values a sample (a feature vector): each sample's extremes sit well inside the
    distribution, so their mean would clip most samples; min-max is taken instead."""
    from edgeopt.calibrate.calibrators import FEW_VALUES, mean_minmax

    rng = np.random.default_rng(0)

    def collected(values_per_sample: int) -> TensorStats:
        stats = TensorStats("t")
        for _ in range(16):
            stats.update(rng.standard_normal(values_per_sample).astype(np.float32), 4096, rng)
        return stats

    few = collected(6)
    assert mean_minmax(few) == minmax(few)
    many = collected(4 * FEW_VALUES)
    assert mean_minmax(many).rmax < minmax(many).rmax
