"""Output comparison: the figures, what passes parity, what breaks it, and the error it raises."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.runtimes import (
    ComparisonError,
    ParityError,
    check,
    compare,
    cosine,
    max_abs_diff,
    output_diff,
    peak_abs,
    row_cosines,
)


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


def test_parity_error_text_and_root():
    ref = [[np.array([1.0, 2.0])]]
    parity = compare("torch -> ONNX", ref, [[np.array([1.0, -2.0])]])
    with pytest.raises(ComparisonError) as caught:
        check(parity)
    assert str(caught.value) == (
        "torch -> ONNX broke parity: max abs diff 4 (limit 0.002), cosine -0.600000 "
        "(limit 0.9999); the converted model computes something else than its source")
    assert caught.value.step == "torch -> ONNX" and caught.value.parity is parity


def test_cli_reports_a_parity_break_on_one_line_with_exit_2(monkeypatch, capsys):
    from edgeopt import _run_cli, cli

    parity = compare("torch -> ONNX", [[np.ones(3)]], [[-np.ones(3)]])

    def broken(args):
        check(parity)

    monkeypatch.setattr(_run_cli, "run_model", broken)
    code = cli.main(["run", "m.onnx", "--inputs", "in.npz", "--out", "out.npz"])
    assert code == cli.EXIT_USER_ERROR == 2
    assert capsys.readouterr().err == (
        "edgeopt: error: torch -> ONNX broke parity: max abs diff 2 (limit 0.001), cosine "
        "-1.000000 (limit 0.9999); the converted model computes something else than its "
        "source\n")


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


def test_another_layout_of_the_same_values_is_compared():
    values = np.arange(6, dtype=np.float32)
    assert compare("s", [[values.reshape(2, 3)]], [[values]]).ok


def test_non_finite_output_breaks_parity():
    ref = [[np.array([1.0, 2.0, 3.0], dtype=np.float32)]]
    for bad in (np.nan, np.inf):
        parity = compare("s", ref, [[np.array([1.0, bad, 3.0], dtype=np.float32)]])
        assert not parity.ok
        assert parity.max_abs_diff == float("inf") and parity.cosine == 0.0


def test_sample_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1 reference samples vs 2"):
        compare("s", [[np.zeros(2)]], [[np.zeros(2)], [np.zeros(2)]])


def test_figures_are_taken_in_float64():
    ref = np.array([1e8, 1.0], dtype=np.float32)
    out = np.array([1e8, 2.0], dtype=np.float64)
    assert max_abs_diff(ref, out) == 1.0          # float32 arithmetic would lose the 1
    assert peak_abs(np.array([-3.0, 2.0])) == 3.0
    assert peak_abs(np.zeros(0)) == 0.0 and max_abs_diff(np.zeros(0), np.zeros(0)) == 0.0


def test_zero_vectors_agree_with_each_other_only():
    zero, one = np.zeros(3), np.ones(3)
    assert cosine(zero, zero) == 1.0
    assert cosine(zero, one) == 0.0 and cosine(one, zero) == 0.0
    assert cosine(one, -one) == pytest.approx(-1.0)
    rows = row_cosines(np.stack([zero, one, one]), np.stack([zero, zero, 2 * one]))
    assert rows.tolist() == pytest.approx([1.0, 0.0, 1.0])


def test_row_cosines_are_per_sample(rng):
    ref = rng.standard_normal((4, 2, 3))
    out = ref + rng.standard_normal(ref.shape) * 0.1
    rows = row_cosines(ref, out)
    assert rows.shape == (4,)
    assert rows == pytest.approx([cosine(r, o) for r, o in zip(ref, out, strict=True)])


def test_output_diff_of_a_non_finite_output_is_infinite():
    diff = output_diff(np.array([4.0, -5.0]), np.array([np.nan, 1.0]))
    assert diff.max_abs_diff == float("inf") and diff.cosine == 0.0 and diff.peak_abs == 5.0
