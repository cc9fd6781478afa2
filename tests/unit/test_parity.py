"""Parity figures: what passes, what breaks, and that the error names the step."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.convert import ParityError, check, compare


def test_identical_outputs_pass(rng):
    ref = [[rng.standard_normal((1, 10)).astype(np.float32)] for _ in range(3)]
    parity = compare("torch -> ONNX", ref, ref)
    assert parity.ok
    assert parity.max_abs_diff == 0.0
    assert parity.cosine == pytest.approx(1.0)


def test_float_noise_passes_but_a_wrong_model_fails(rng):
    ref = [[rng.standard_normal((1, 1000)).astype(np.float32) * 10] for _ in range(4)]
    noisy = [[r[0] + rng.standard_normal(r[0].shape).astype(np.float32) * 1e-5] for r in ref]
    assert compare("step", ref, noisy).ok
    wrong = [[rng.standard_normal(r[0].shape).astype(np.float32) * 10] for r in ref]
    parity = compare("ONNX -> OpenVINO IR", ref, wrong)
    assert not parity.ok
    with pytest.raises(ParityError, match=r"ONNX -> OpenVINO IR broke parity: max abs diff"):
        check(parity)


def test_limit_scales_with_output_magnitude(rng):
    big = [[np.full((1, 4), 1000.0, dtype=np.float32)]]
    off = [[np.full((1, 4), 1000.5, dtype=np.float32)]]
    # 0.5 on values of 1000 is within 1e-3 relative; on values of 1 it would not be
    assert compare("s", big, off).ok
    small = [[np.full((1, 4), 1.0, dtype=np.float32)]]
    assert not compare("s", small, [[np.full((1, 4), 1.5, dtype=np.float32)]]).ok


def test_shape_mismatch_fails():
    parity = compare("s", [[np.zeros((1, 4))]], [[np.zeros((1, 5))]])
    assert not parity.ok


def test_sample_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1 reference samples vs 2"):
        compare("s", [[np.zeros(2)]], [[np.zeros(2)], [np.zeros(2)]])
