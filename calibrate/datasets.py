"""Calibration and evaluation sets that never share a sample, with their labels.

``read_split`` divides one source into a calibration and an evaluation part by a seeded
draw; ``read_dataset`` reads a separate held-out source, and ``check_disjoint`` refuses it
when it shares a sample with calibration (by content). Sample counts are a seeded spread
over the whole source, never its first N, and only the chosen images are decoded.

Labels come from class subfolders (ImageFolder layout), a ``labels.csv`` (``file,label``)
beside the images, a ``labels`` array in each ``.npz``, or ``(inputs, label)`` pairs from
a factory. Numeric labels are class indices; names need a ``classes.txt`` (one per line).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibrate.data import (
    ARRAY_SUFFIXES,
    DEFAULT_STREAM_SAMPLES,
    LABELS_KEY,
    InputSpec,
    call_factory,
    check_finite_sample,
    check_sample,
    image_sample,
    read_array_file,
    read_calibration,
)
from edgeopt.calibrate.errors import CalibrationDataError
from edgeopt.calibrate.images import image_files, is_image, parse_preprocess
from edgeopt.calibrate.spill import SpilledSamples, spill

__all__ = ["Dataset", "check_disjoint", "read_dataset", "read_split"]

CALIB_SEED, EVAL_SEED, SPLIT_SEED = 0, 1, 2
SPLIT_EVAL = 64             # held out by default when one source must serve both
LABELS_CSV, CLASSES_TXT = "labels.csv", "classes.txt"


@dataclass(frozen=True)
class Dataset:
    """Checked samples, their labels (or None) and a line for the report."""

    samples: SpilledSamples                    # a Sequence of input dicts, read from disk
    labels: np.ndarray | None
    note: str
    preprocessing: dict[str, Any] | None = None

    def keys(self) -> list[str]:
        """A content hash per sample: the same arrays give the same key."""
        return [sample_key(s) for s in self.samples]


def sample_key(sample: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for name in sorted(sample):
        a = np.asarray(sample[name], order="C")
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Source:
    """What a data spec holds, before any image is decoded."""

    count: int
    load: Callable[[int], dict[str, np.ndarray]]
    labels: np.ndarray | None
    what: str                                  # "12 images in data/", "factory m:f", ...
    preprocessing: dict[str, Any] | None = None
    streamed: bool = False                     # images, factories: capped by default


def read_split(spec: str, inputs: Sequence[InputSpec], calib_n: int | None,
               eval_n: int | None, preprocess=None) -> tuple[Dataset, Dataset]:
    """One source, split by a seeded draw into disjoint calibration and evaluation parts."""
    source = _open(spec, inputs, preprocess, "calibration",
                   want=None if calib_n is None else calib_n + (eval_n or SPLIT_EVAL))
    if source.count < 2:
        msg = (f"calibration data {spec} holds {source.count} sample: nothing is left to "
               "evaluate on; give more samples or held-out data with --eval")
        raise CalibrationDataError(msg)
    order = np.random.default_rng(SPLIT_SEED).permutation(source.count)
    n_eval = min(eval_n or min(SPLIT_EVAL, max(1, source.count // 5)), source.count - 1)
    rest = order[n_eval:]
    n_calib = min(len(rest), calib_n or _default_count(source, len(rest)))
    calib = np.sort(rest[:n_calib])
    held_out = np.sort(order[:n_eval])
    split = (f"seeded split of {spec}: {len(calib)} calibrate, {len(held_out)} others "
             "evaluate (no --eval given)")
    return (_take(source, calib, f"{source.what}: {split}"),
            _take(source, held_out, f"{source.what}: {split}"))


def read_dataset(spec: str, inputs: Sequence[InputSpec], n: int | None, preprocess=None,
                 role: str = "evaluation") -> Dataset:
    """``n`` samples (default: all arrays, or 300 images/factory samples) of ``spec``,
    a seeded spread over the whole source."""
    source = _open(spec, inputs, preprocess, role, want=n)
    count = min(source.count, n or _default_count(source, source.count))
    seed = EVAL_SEED if role == "evaluation" else CALIB_SEED
    chosen = _spread(count, source.count, seed)
    spread = "" if count == source.count else " (a seeded spread)"
    return _take(source, chosen, f"{source.what}: {count} of {source.count}{spread}")


def check_disjoint(calib: Dataset, held_out: Dataset, spec: str) -> None:
    shared = set(calib.keys()) & set(held_out.keys())
    if shared:
        msg = (f"--eval {spec} shares {len(shared)} sample(s) with the calibration data (same "
               "content); evaluation data must be disjoint from calibration data")
        raise CalibrationDataError(msg)


# ------------------------------------------------------------------------------ sources

def _default_count(source: _Source, available: int) -> int:
    return min(available, DEFAULT_STREAM_SAMPLES) if source.streamed else available


def _spread(n: int, total: int, seed: int) -> np.ndarray:
    if n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def _take(source: _Source, indices: np.ndarray, note: str) -> Dataset:
    samples = spill(source.load(int(i)) for i in indices)    # one decoded sample at a time
    labels = None if source.labels is None else source.labels[indices]
    return Dataset(samples, labels, note + (", labelled" if labels is not None else ""),
                   source.preprocessing)


def _open(spec: str, inputs: Sequence[InputSpec], preprocess, role: str,
          want: int | None) -> _Source:
    path = Path(spec)
    if not path.exists():
        if ":" in str(spec):
            return _factory(str(spec), inputs, role, want or DEFAULT_STREAM_SAMPLES)
        msg = f"{role} data {path}: no such file or folder"
        raise CalibrationDataError(msg)
    if path.is_dir():
        arrays = sorted(p for p in path.iterdir() if p.is_file()
                        and p.suffix.lower() in ARRAY_SUFFIXES and not p.name.startswith("."))
        if arrays and not image_files(path):
            return _arrays(arrays, str(path), inputs, role)
        if not image_files(path) and not _class_folders(path):
            read_calibration(path, inputs, 1, preprocess)   # raises, saying what is there
        files, labels = _labelled_images(path, role)
        return _images(files, labels, f"{len(files)} images in {path}", inputs, preprocess, role)
    if is_image(path):
        return _images([path], None, f"image {path}", inputs, preprocess, role)
    return _arrays([path], str(path), inputs, role)


def _arrays(files: list[Path], spec: str, inputs: Sequence[InputSpec], role: str) -> _Source:
    samples, labels = [], []
    for file in files:
        found = read_array_file(file, inputs)
        for i, sample in enumerate(found):
            check_finite_sample(sample, f"{role} file {file}: sample {i}")
        samples += found
        labels.append(_npz_labels(file, len(found), role))
    if not samples:
        msg = f"{role} data {spec} holds no samples"
        raise CalibrationDataError(msg)
    if any(lab is None for lab in labels):
        if any(lab is not None for lab in labels):
            msg = f"{role} data {spec}: some .npz files have '{LABELS_KEY}' and others not"
            raise CalibrationDataError(msg)
        merged = None
    else:
        merged = np.concatenate(labels)
    return _Source(len(samples), samples.__getitem__, merged, f"{spec} ({len(samples)} samples)")


def _npz_labels(file: Path, n: int, role: str) -> np.ndarray | None:
    if file.suffix.lower() != ".npz":
        return None
    with np.load(file, allow_pickle=False) as loaded:
        if LABELS_KEY not in loaded.files:
            return None
        labels = np.asarray(loaded[LABELS_KEY]).reshape(-1)
    if len(labels) != n:
        msg = f"{role} file {file}: {len(labels)} labels for {n} samples"
        raise CalibrationDataError(msg)
    return labels


def _images(files: list[Path], labels, what: str, inputs: Sequence[InputSpec], preprocess,
            role: str) -> _Source:
    if preprocess is None:
        msg = (f"{role} data {what} holds images: pass --preprocess to say how they become "
               "model inputs, e.g. --preprocess resize=256,crop=224,"
               "mean=0.485:0.456:0.406,std=0.229:0.224:0.225")
        raise CalibrationDataError(msg)
    if len(inputs) != 1:
        msg = (f"{role} data {what}: images feed one input, the model takes {len(inputs)}; "
               "use .npz files or a package.module:factory")
        raise CalibrationDataError(msg)
    pre = parse_preprocess(preprocess)

    def load(i: int) -> dict[str, np.ndarray]:
        sample = image_sample(files[i], inputs[0], pre)
        check_finite_sample(sample, f"{role} image {files[i]}:")
        return sample

    return _Source(len(files), load, labels, f"{what}, preprocessing {pre.to_spec()}",
                   pre.to_dict(), streamed=True)


def _labelled_images(folder: Path, role: str) -> tuple[list[Path], np.ndarray | None]:
    """Images of ``folder`` (name order) and their labels: from labels.csv, from class
    subfolders, or none."""
    files = image_files(folder)
    if files:
        table = folder / LABELS_CSV
        return files, (_csv_labels(table, files, folder, role) if table.is_file() else None)
    classes = _class_folders(folder)
    files, labels = [], []
    for index, d in enumerate(classes):
        found = image_files(d)
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and image_files(d))


def _csv_labels(table: Path, files: list[Path], folder: Path, role: str) -> np.ndarray:
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = {row["file"]: row["label"] for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError) as e:
        msg = (f"{role} labels {table}: cannot read it as CSV with 'file' and 'label' "
               f"columns ({type(e).__name__}: {e})")
        raise CalibrationDataError(msg) from e
    missing = [p.name for p in files if p.name not in rows]
    if missing:
        msg = f"{role} labels {table}: no label for {missing[0]} ({len(missing)} images)"
        raise CalibrationDataError(msg)
    absent = sorted(set(rows) - {p.name for p in files})
    if absent:
        msg = f"{role} labels {table}: {absent[0]} is listed but not in {folder}"
        raise CalibrationDataError(msg)
    return _label_values([rows[p.name] for p in files], folder / CLASSES_TXT, table, role)


def _label_values(raw: list[str], classes_file: Path, table: Path, role: str) -> np.ndarray:
    if all(v.strip().lstrip("-").isdigit() for v in raw):
        return np.asarray([int(v) for v in raw], dtype=np.int64)
    if not classes_file.is_file():
        bad = next(v for v in raw if not v.strip().lstrip("-").isdigit())
        msg = (f"{role} labels {table}: label {bad!r} is not a class index; give indices, or "
               f"class names with a {CLASSES_TXT} (one name per line) beside it")
        raise CalibrationDataError(msg)
    names = [line.strip() for line in classes_file.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    index = {name: i for i, name in enumerate(names)}
    unknown = [v for v in raw if v.strip() not in index]
    if unknown:
        msg = f"{role} labels {table}: unknown class {unknown[0]!r} (not in {classes_file.name})"
        raise CalibrationDataError(msg)
    return np.asarray([index[v.strip()] for v in raw], dtype=np.int64)


def _factory(spec: str, inputs: Sequence[InputSpec], role: str, n: int) -> _Source:
    where = f"{role} factory {spec}"
    made = call_factory(spec, where)
    if isinstance(made, (Mapping, str, bytes, np.ndarray)) or not hasattr(made, "__iter__"):
        msg = (f"{where}: the factory returned {type(made).__name__}, not an iterable of "
               "input dicts or (inputs, label) pairs")
        raise CalibrationDataError(msg)
    samples, labels = [], []
    items = iter(made)
    try:
        for index, item in zip(range(n), items, strict=False):
            pair = isinstance(item, tuple) and len(item) == 2
            sample = check_sample(item[0] if pair else item, inputs, f"{where}: sample {index}")
            check_finite_sample(sample, f"{where}: sample {index}")
            samples.append(sample)
            labels.append(item[1] if pair else None)
    finally:
        close = getattr(items, "close", None)
        if callable(close):
            close()
    if not samples:
        msg = f"{where}: the factory gave no samples"
        raise CalibrationDataError(msg)
    given = [lab for lab in labels if lab is not None]
    if given and len(given) != len(labels):
        msg = f"{where}: some samples come with a label and others without"
        raise CalibrationDataError(msg)
    merged = np.asarray(given) if given else None
    return _Source(len(samples), samples.__getitem__, merged,
                   f"factory {spec} ({len(samples)} samples)", streamed=True)
