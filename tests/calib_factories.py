"""Calibration factories for tests (importable as 'calib_factories:NAME' --calib specs).

Each takes the tiny ONNX model's input: 'input', float32, 1x3x8x8.
"""

from __future__ import annotations

import numpy as np

drawn = 0       # samples the endless factory has given, to prove reading is lazy
closed = False  # whether the endless generator was closed after the last sample needed


def endless():
    """Never ends: only a limit stops it."""
    global drawn, closed
    drawn, closed = 0, False
    try:
        while True:
            drawn += 1
            yield {"input": np.full((1, 3, 8, 8), drawn, dtype=np.float32)}
    finally:
        closed = True


def three_without_batch_axis():
    """float64 arrays without the batch axis: cast and expanded to 1x3x8x8."""
    return [{"input": np.ones((3, 8, 8)) * i} for i in range(3)]


def nan_at_two():
    samples = [{"input": np.zeros((1, 3, 8, 8), dtype=np.float32)} for _ in range(4)]
    samples[2]["input"][0, 1, 2, 3] = np.nan
    return samples


def list_at_one():
    return [{"input": np.zeros((1, 3, 8, 8), dtype=np.float32)}, [1, 2, 3]]


def wrong_name():
    return [{"pixels": np.zeros((1, 3, 8, 8), dtype=np.float32)}]


def wrong_shape_at_one():
    return [{"input": np.zeros((1, 3, 8, 8), dtype=np.float32)},
            {"input": np.zeros((1, 3, 9, 9), dtype=np.float32)}]


def int_input():
    return [{"input": np.zeros((1, 3, 8, 8), dtype=np.int64)}]


def one_dict():
    return {"input": np.zeros((1, 3, 8, 8), dtype=np.float32)}


def a_number():
    return 7


def nothing():
    return []


def raises():
    msg = "dataset server unreachable"
    raise RuntimeError(msg)


def fails_midway():
    yield {"input": np.zeros((1, 3, 8, 8), dtype=np.float32)}
    msg = "bad record"
    raise ValueError(msg)


NOT_CALLABLE = [{"input": np.zeros((1, 3, 8, 8), dtype=np.float32)}]
