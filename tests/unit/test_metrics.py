"""Per-output figures: every output on its own, also when its size varies by sample."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.metrics import output_figures


def test_outputs_whose_size_varies_from_sample_to_sample():
    rng = np.random.default_rng(0)
    reference = [[rng.standard_normal((1, n, 4)), rng.random(3)] for n in (5, 9, 2)]
    exact = output_figures(reference, reference, ("boxes", "scores"))
    assert [f["output"] for f in exact] == ["boxes", "scores"]
    assert all(f["cosine"] == pytest.approx(1.0) and not f["clipped"] for f in exact)
    halved = [[r[0] * 0.5, r[1]] for r in reference]
    boxes, scores = output_figures(reference, halved, ("boxes", "scores"))
    assert boxes["cosine"] == pytest.approx(1.0) and boxes["sqnr_db"] == pytest.approx(6.02, abs=0.01)
    assert scores["sqnr_db"] == 99.0


def test_a_wall_at_the_top_is_clipped_and_a_lower_maximum_alone_is_not():
    reference = [[np.linspace(0, 1, 50) + i * 0.001] for i in range(20)]
    clipped = [[np.minimum(r[0], 0.3)] for r in reference]
    (figure,) = output_figures(reference, clipped)
    assert figure["clipped"] and figure["range_coverage"] < 0.35
    noisy = [[r[0] * 0.97] for r in reference]          # less accurate, no wall
    (figure,) = output_figures(reference, noisy)
    assert figure["range_coverage"] < 0.99 and not figure["clipped"]


def test_rounding_on_an_int8_grid_is_not_clipping():
    """Softmax probabilities of 0.1-0.25 on a 1/255 grid: the top values round down by
    under half a step, which is rounding; a wall well below the top is still clipping."""
    rng = np.random.default_rng(0)
    reference = [[rng.uniform(0.1, 0.25, 6)] for _ in range(40)]
    rounded = [[np.round(r[0] * 255) / 255] for r in reference]
    (figure,) = output_figures(reference, rounded)
    assert figure["range_coverage"] < 0.99 and not figure["clipped"]
    walled = [[np.minimum(np.round(r[0] * 255) / 255, 0.2)] for r in reference]
    (figure,) = output_figures(reference, walled)
    assert figure["clipped"]
