"""Calibration samples from files (.npy / .npz, a file or a folder), or explicit random data.

Every sample is checked against the model's inputs (names, dtypes, shapes) and for
NaN/Inf before anything runs, and the error names the file and the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeopt.calibrate.errors import CalibrationDataError

InputSpec = tuple[str, str, tuple[int, ...]]   # name, numpy dtype name, concrete shape
RANDOM = "random"
DEFAULT_RANDOM_SAMPLES = 32


def random_samples(inputs: Sequence[InputSpec], n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Standard-normal float inputs (small non-negative integers for integer inputs)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        sample = {}
        for name, dtype, shape in inputs:
            if np.issubdtype(np.dtype(dtype), np.integer):
                sample[name] = rng.integers(0, 2, size=shape).astype(dtype)
            else:
                sample[name] = rng.standard_normal(shape).astype(dtype)
        samples.append(sample)
    return samples


def _split(array: np.ndarray, shape: tuple[int, ...], source: str, name: str) -> list[np.ndarray]:
    """One sample of ``shape``, or a stack of them along the batch axis."""
    if array.shape == shape:
        return [array]
    if len(shape) >= 1 and shape[0] == 1 and array.shape[1:] == shape[1:]:
        return [array[i : i + 1] for i in range(array.shape[0])]
    if array.ndim == len(shape) - 1 and shape[0] == 1 and array.shape == shape[1:]:
        return [array[None]]
    want = "x".join(str(d) for d in shape)
    got = "x".join(str(d) for d in array.shape)
    msg = (f"calibration file {source}: input '{name}' has shape {got}, the model takes {want} "
           f"(or a stack Nx{'x'.join(str(d) for d in shape[1:])})")
    raise CalibrationDataError(msg)


def _read(path: Path, inputs: Sequence[InputSpec]) -> list[dict[str, np.ndarray]]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:
        msg = f"calibration file {path}: cannot read it as .npy/.npz ({type(e).__name__}: {e})"
        raise CalibrationDataError(msg) from e
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            names = ", ".join(n for n, _, _ in inputs)
            msg = (f"calibration file {path}: a .npy holds one input but the model takes "
                   f"{len(inputs)} ({names}); use .npz with one array per input name")
            raise CalibrationDataError(msg)
        arrays = {inputs[0][0]: loaded}
    else:
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
        if len(inputs) == 1 and len(arrays) == 1:
            arrays = {inputs[0][0]: next(iter(arrays.values()))}
    expected = {n for n, _, _ in inputs}
    missing = sorted(expected - set(arrays))
    if missing:
        msg = (f"calibration file {path}: no array for input(s) {', '.join(missing)} "
               f"(it has {', '.join(sorted(arrays)) or 'none'})")
        raise CalibrationDataError(msg)
    per_input = {}
    for name, dtype, shape in inputs:
        array = arrays[name]
        if array.dtype != np.dtype(dtype):
            if not (np.issubdtype(array.dtype, np.floating) and np.issubdtype(np.dtype(dtype), np.floating)):
                msg = (f"calibration file {path}: input '{name}' is {array.dtype}, "
                       f"the model takes {dtype}")
                raise CalibrationDataError(msg)
            array = array.astype(dtype)
        per_input[name] = _split(array, shape, str(path), name)
    counts = {len(v) for v in per_input.values()}
    if len(counts) != 1:
        msg = f"calibration file {path}: inputs hold different numbers of samples"
        raise CalibrationDataError(msg)
    n = counts.pop()
    return [{name: np.ascontiguousarray(per_input[name][i]) for name in per_input} for i in range(n)]


def check_finite(samples: Sequence[dict[str, np.ndarray]], source: str = "calibration data") -> None:
    """Raise naming the first sample and input that holds NaN or Inf."""
    for index, sample in enumerate(samples):
        for name, array in sample.items():
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                bad = "NaN" if np.isnan(array).any() else "Inf"
                msg = (f"{source}: sample {index} input '{name}' contains {bad}; "
                       "calibration data must be finite")
                raise CalibrationDataError(msg)


def load_calibration(
    spec: str | Path, inputs: Sequence[InputSpec], limit: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Read calibration samples from a .npy/.npz file or a folder of them.

    Raises:
        CalibrationDataError: missing path, empty folder, unreadable file, wrong
            names/shapes/dtypes, or NaN/Inf; the message names the file.
    """
    path = Path(spec)
    if not path.exists():
        msg = f"calibration data {path}: no such file or folder"
        raise CalibrationDataError(msg)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in {".npy", ".npz"} and p.is_file())
        if not files:
            msg = f"calibration folder {path} holds no .npy or .npz files"
            raise CalibrationDataError(msg)
    else:
        files = [path]
    samples: list[dict[str, np.ndarray]] = []
    for file in files:
        found = _read(file, inputs)
        check_finite(found, f"calibration file {file}")
        samples.extend(found)
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        msg = f"calibration data {path} holds no samples"
        raise CalibrationDataError(msg)
    return samples[:limit] if limit is not None else samples
