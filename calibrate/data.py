"""Calibration samples from every source a user has, or explicit random data.

Sources (``read_calibration`` tells them apart):
- a .npy/.npz file, or a folder of them;
- an image file, or a folder of images, with a preprocessing spec (``images.py``);
- ``package.module:factory``, a callable returning an iterable of ``{input_name: array}``.

Every sample is checked against the model's inputs (names, dtypes, shapes) and for
NaN/Inf before anything runs, and the error names the file (or sample) and the problem.
Images and factory samples are read lazily: no more than the limit is decoded or drawn.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibrate.errors import CalibrationDataError
from edgeopt.calibrate.images import (
    IMAGE_SUFFIXES,
    Preprocess,
    image_files,
    is_image,
    load_image,
    parse_preprocess,
)
from edgeopt.runtimes.errors import short_reason

InputSpec = tuple[str, str, tuple[int, ...]]   # name, numpy dtype name, concrete shape
RANDOM = "random"
DEFAULT_RANDOM_SAMPLES = 32
# Images and factories can be unbounded and every sample is held in memory: without a
# limit take this many (NNCF's and ONNX Runtime's default calibration subset size).
DEFAULT_STREAM_SAMPLES = 300
ARRAY_SUFFIXES = (".npy", ".npz")
LABELS_KEY = "labels"
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class CalibrationSet:
    """Checked calibration samples and where they came from.

    Attributes:
        samples: one ``{input_name: array}`` per sample, each matching the model's inputs.
        note: one line for the report: the source and, for images, the preprocessing.
        preprocessing: the image preprocessing used (``Preprocess.to_dict()``), else None.
    """

    samples: list[dict[str, np.ndarray]]
    note: str
    preprocessing: dict[str, Any] | None = None


def random_samples(inputs: Sequence[InputSpec], n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Standard-normal float inputs (small non-negative integers for integer inputs,
    either value for bool ones), of exactly the given shapes (0-d included)."""
    return list(iter_random_samples(inputs, n, seed))


def iter_random_samples(inputs: Sequence[InputSpec], n: int,
                        seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The samples of :func:`random_samples`, made one at a time."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        sample = {}
        for name, dtype, shape in inputs:
            kind = np.dtype(dtype)
            if np.issubdtype(kind, np.integer) or kind == np.bool_:
                values = rng.integers(0, 2, size=shape)
            else:
                values = rng.standard_normal(shape)
            sample[name] = np.asarray(values, dtype=kind)
        yield sample


def _split(array: np.ndarray, shape: tuple[int, ...], source: str, name: str) -> list[np.ndarray]:
    """One sample of ``shape``, or a stack of them along the batch axis."""
    if array.shape == shape:
        return [array]
    if not shape and array.ndim == 1:           # a stack of scalars: each stays 0-d
        return [np.asarray(value) for value in array]
    if len(shape) >= 1 and shape[0] == 1 and array.shape[1:] == shape[1:]:
        return [array[i : i + 1] for i in range(array.shape[0])]
    if array.ndim == len(shape) - 1 and shape[0] == 1 and array.shape == shape[1:]:
        return [array[None]]
    want = "x".join(str(d) for d in shape)
    got = "x".join(str(d) for d in array.shape)
    msg = (f"calibration file {source}: input '{name}' has shape {got}, the model takes {want} "
           f"(or a stack Nx{'x'.join(str(d) for d in shape[1:])})")
    raise CalibrationDataError(msg)


def read_array_file(path: Path, inputs: Sequence[InputSpec]) -> list[dict[str, np.ndarray]]:
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
        names = {n for n, _, _ in inputs}
        try:
            with loaded:
                # a 'labels' array is the samples' task labels (evaluation), not an input
                arrays = {k: loaded[k] for k in loaded.files if k != LABELS_KEY or k in names}
        except Exception as e:       # object arrays (pickles), corrupt members
            msg = (f"calibration file {path}: cannot read it as .npz ({type(e).__name__}: "
                   f"{short_reason(e, 160)}); save plain numeric arrays (np.savez)")
            raise CalibrationDataError(msg) from e
        if len(inputs) == 1 and list(arrays) == ["arr_0"]:
            # np.savez(f, x) names a positional array arr_0: unnamed, like a .npy. Any other
            # name is checked against the model's input names.
            arrays = {inputs[0][0]: arrays["arr_0"]}
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
    return [{name: np.asarray(per_input[name][i], order="C") for name in per_input} for i in range(n)]


def check_finite(samples: Sequence[dict[str, np.ndarray]], source: str = "calibration data") -> None:
    """Raise naming the first sample and input that holds NaN or Inf."""
    for index, sample in enumerate(samples):
        check_finite_sample(sample, f"{source}: sample {index}")


def check_finite_sample(sample: dict[str, np.ndarray], where: str) -> None:
    for name, array in sample.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = "NaN" if np.isnan(array).any() else "Inf"
            msg = f"{where} input '{name}' contains {bad}; calibration data must be finite"
            raise CalibrationDataError(msg)


def load_calibration(
    spec: str | Path, inputs: Sequence[InputSpec], limit: int | None = None,
    preprocess: str | Path | Mapping[str, Any] | Preprocess | None = None,
) -> list[dict[str, np.ndarray]]:
    """The samples of ``read_calibration`` (same arguments, same errors)."""
    return read_calibration(spec, inputs, limit, preprocess).samples


def read_calibration(
    spec: str | Path, inputs: Sequence[InputSpec], limit: int | None = None,
    preprocess: str | Path | Mapping[str, Any] | Preprocess | None = None,
) -> CalibrationSet:
    """Read and check calibration samples from any source, at most ``limit`` of them.

    Args:
        spec: a .npy/.npz file or a folder of them; an image file or a folder of images;
            or ``package.module:factory`` returning an iterable of input dicts.
        inputs: the model's inputs as (name, dtype, shape).
        limit: at most this many samples (images and factories: ``DEFAULT_STREAM_SAMPLES``
            when None); only that many images are decoded.
        preprocess: the image preprocessing (``key=value,...``, a .json/.yaml path, a
            mapping, or a Preprocess); required by image sources, unused by the others.

    Raises:
        CalibrationDataError: missing path, empty folder, no supported files, unreadable
            file or image, a factory that fails, wrong names/shapes/dtypes, or NaN/Inf;
            the message names the file or sample.
        PreprocessError: a malformed ``preprocess``.
    """
    path = Path(spec)
    if not path.exists():
        if _FACTORY.fullmatch(str(spec)):
            return _from_factory(str(spec), inputs, limit)
        msg = f"calibration data {path}: no such file or folder"
        raise CalibrationDataError(msg)
    if path.is_dir():
        return _from_folder(path, inputs, limit, preprocess)
    if is_image(path):
        return _from_images([path], str(path), inputs, limit, preprocess)
    return _from_arrays([path], str(spec), inputs, limit)


def _from_folder(folder: Path, inputs: Sequence[InputSpec], limit: int | None,
                 preprocess) -> CalibrationSet:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    files = [p for p in entries if p.is_file()]
    arrays = sorted(p for p in files if p.suffix.lower() in ARRAY_SUFFIXES)
    images = image_files(folder)
    if arrays and images:
        msg = (f"calibration folder {folder} holds both .npy/.npz files and images "
               f"({arrays[0].name}, {images[0].name}); keep one kind per folder")
        raise CalibrationDataError(msg)
    if images:
        return _from_images(images, f"{folder}", inputs, limit, preprocess)
    if arrays:
        return _from_arrays(arrays, str(folder), inputs, limit)
    kinds = f".npy or .npz files, nor images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})"
    if not entries:
        msg = f"calibration folder {folder} is empty: it holds no {kinds}"
    else:
        others = sorted(p.name for p in files)
        found = (f"{len(others)} other file(s), e.g. {others[0]}" if others
                 else "only subfolders")
        msg = f"calibration folder {folder} holds no {kinds}; it has {found}"
        if len(files) < len(entries):
            msg += " (subfolders are not searched)"
    raise CalibrationDataError(msg)


def _from_arrays(files: list[Path], spec: str, inputs: Sequence[InputSpec],
                 limit: int | None) -> CalibrationSet:
    samples: list[dict[str, np.ndarray]] = []
    for file in files:
        found = read_array_file(file, inputs)
        check_finite(found, f"calibration file {file}")
        samples.extend(found)
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        msg = f"calibration data {spec} holds no samples"
        raise CalibrationDataError(msg)
    samples = samples[:limit] if limit is not None else samples
    return CalibrationSet(samples, f"{spec} ({len(samples)} samples)")


def _from_images(files: list[Path], spec: str, inputs: Sequence[InputSpec],
                 limit: int | None, preprocess) -> CalibrationSet:
    what = "folder" if len(files) > 1 or Path(spec).is_dir() else "image"
    if preprocess is None:
        msg = (f"calibration {what} {spec} holds images: pass --preprocess to say how they "
               "become model inputs, e.g. --preprocess resize=256,crop=224,"
               "mean=0.485:0.456:0.406,std=0.229:0.224:0.225 (keys: README, 'Calibration data')")
        raise CalibrationDataError(msg)
    pre = parse_preprocess(preprocess)
    if len(inputs) != 1:
        names = ", ".join(n for n, _, _ in inputs)
        msg = (f"calibration {what} {spec}: images feed one input, the model takes "
               f"{len(inputs)} ({names}); use .npz files or a package.module:factory")
        raise CalibrationDataError(msg)
    n = min(len(files), limit or DEFAULT_STREAM_SAMPLES)
    samples = []
    for file in files[:n]:      # only these are decoded
        sample = image_sample(file, inputs[0], pre)
        check_finite_sample(sample, f"calibration image {file}:")
        samples.append(sample)
    if what == "folder":
        note = f"{n} of {len(files)} images in {spec} (name order)"
    else:
        note = f"image {spec}"
    return CalibrationSet(samples, f"{note}, preprocessing {pre.to_spec()}", pre.to_dict())


def image_sample(path: Path, spec: InputSpec, pre: Preprocess) -> dict[str, np.ndarray]:
    name, dtype, shape = spec
    array = load_image(path, pre)
    if len(shape) == array.ndim + 1 and shape[0] == 1:
        array = array[None]
    if array.shape != tuple(shape):
        msg = (f"calibration image {path}: preprocessing gives {_dims(array.shape)}, input "
               f"'{name}' takes {_dims(shape)}; set resize/crop/order/layout to match")
        raise CalibrationDataError(msg)
    if not np.issubdtype(np.dtype(dtype), np.floating):
        if not (np.issubdtype(np.dtype(dtype), np.integer) and pre.keeps_integers):
            msg = (f"calibration image {path}: input '{name}' takes {dtype}, preprocessing "
                   "gives float32 (for raw integer pixels use scale=1 without mean/std)")
            raise CalibrationDataError(msg)
    return {name: np.asarray(array.astype(dtype, copy=False), order="C")}


def call_factory(spec: str, where: str) -> Any:
    """Import ``package.module:attr`` (the working directory on the path) and call it.

    convert/load.py does the same for model factories; calibrate may not import convert
    and convert may not import runtimes, the only layer below both, so each has its own.
    """
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # let users name modules in the working dir
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        msg = (f"{where}: cannot import '{module_name}' ({type(e).__name__}: "
               f"{short_reason(e, 160)}); check the module is on PYTHONPATH")
        raise CalibrationDataError(msg) from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        msg = f"{where}: '{module_name}' has no callable '{attr}'"
        raise CalibrationDataError(msg)
    try:
        return factory()
    except Exception as e:
        msg = f"{where}: the factory raised {type(e).__name__}: {short_reason(e, 160)}"
        raise CalibrationDataError(msg) from e


def _from_factory(spec: str, inputs: Sequence[InputSpec], limit: int | None) -> CalibrationSet:
    where = f"calibration factory {spec}"
    made = call_factory(spec, where)
    if isinstance(made, (Mapping, str, bytes, np.ndarray)) or not hasattr(made, "__iter__"):
        msg = (f"{where}: the factory returned {type(made).__name__}, not an iterable of "
               "input dicts; return a list or generator of {input_name: array}")
        raise CalibrationDataError(msg)
    n = limit or DEFAULT_STREAM_SAMPLES
    samples: list[dict[str, np.ndarray]] = []
    items: Iterator = iter(made)
    try:
        while len(samples) < n:
            index = len(samples)
            try:
                item = next(items)
            except StopIteration:
                break
            except Exception as e:
                msg = (f"{where}: raised {type(e).__name__} while giving sample {index}: "
                       f"{short_reason(e, 160)}")
                raise CalibrationDataError(msg) from e
            sample = check_sample(item, inputs, f"{where}: sample {index}")
            check_finite_sample(sample, f"{where}: sample {index}")
            samples.append(sample)
    finally:
        close = getattr(items, "close", None)
        if callable(close):
            close()     # a generator stopped early runs its cleanup now
    if not samples:
        msg = f"{where}: the factory gave no samples"
        raise CalibrationDataError(msg)
    return CalibrationSet(samples, f"factory {spec} ({len(samples)} samples)")


def check_sample(item: Any, inputs: Sequence[InputSpec], where: str) -> dict[str, np.ndarray]:
    """One factory sample as the model takes it; raise naming the sample otherwise."""
    if not isinstance(item, Mapping):
        msg = f"{where} is {type(item).__name__}, not a dict {{input_name: array}}"
        raise CalibrationDataError(msg)
    expected = [n for n, _, _ in inputs]
    missing = [n for n in expected if n not in item]
    unknown = sorted(str(k) for k in item if k not in expected)
    if missing or unknown:
        problems = [f"no array for input(s) {', '.join(missing)}"] if missing else []
        problems += [f"unknown input(s) {', '.join(unknown)}"] if unknown else []
        msg = f"{where}: {'; '.join(problems)} (the model takes {', '.join(expected)})"
        raise CalibrationDataError(msg)
    sample = {}
    for name, dtype, shape in inputs:
        value = item[name]
        if hasattr(value, "detach") and hasattr(value, "numpy"):   # a torch tensor
            value = value.detach().cpu().numpy()
        try:
            array = np.asarray(value)
        except Exception as e:
            msg = f"{where} input '{name}' is not an array ({type(e).__name__}: {short_reason(e, 160)})"
            raise CalibrationDataError(msg) from e
        if array.dtype != np.dtype(dtype):
            if not (np.issubdtype(array.dtype, np.floating)
                    and np.issubdtype(np.dtype(dtype), np.floating)):
                msg = f"{where} input '{name}' is {array.dtype}, the model takes {dtype}"
                raise CalibrationDataError(msg)
            array = array.astype(dtype)
        if array.shape != tuple(shape):
            if len(shape) == array.ndim + 1 and shape[0] == 1 and array.shape == tuple(shape[1:]):
                array = array[None]
            else:
                msg = (f"{where} input '{name}' has shape {_dims(array.shape)}, "
                       f"the model takes {_dims(shape)}")
                raise CalibrationDataError(msg)
        sample[name] = np.asarray(array, order="C")  # keeps 0-d arrays 0-d
    return sample


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) or "a scalar"


