"""--finetune-data: labelled or unlabelled samples to fine-tune on, checked like calibration data.

- ``data.npz`` (or a folder of them): one array per model input (a stack N x ... or one
  sample) and optionally ``labels`` (N integers): labelled. In a folder, every file has
  ``labels`` or none does.
- a folder of class folders of images (``train/cat/*.jpg``, ``train/dog/*.jpg``): labelled,
  the class index is the position of the folder's name in sorted order (torchvision's
  ImageFolder). Every class folder must hold images, and no image may sit beside them.
- a folder of images, or .npy/.npz files without ``labels``: unlabelled; fine-tuning then
  distils from the unpruned model.

Samples are read and checked by ``data.read_calibration`` (names, shapes, dtypes, NaN/Inf,
image preprocessing). ``limit`` keeps a seeded random subset (every class has its chance,
and only the kept images are decoded); a seeded ``val_fraction`` (at least one sample) is
held out for validation, disjoint from training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeopt.calibrate.data import ARRAY_SUFFIXES, InputSpec, read_calibration
from edgeopt.calibrate.errors import CalibrationDataError, FinetuneError
from edgeopt.calibrate.finetune import FinetuneData
from edgeopt.calibrate.images import image_files, is_image, parse_preprocess

__all__ = ["read_finetune_data"]

WHERE = "--finetune-data"


def read_finetune_data(path: str | Path, input_specs: Sequence[InputSpec], *, preprocess=None,
                       val_fraction: float = 0.1, seed: int = 0,
                       limit: int | None = None) -> FinetuneData:
    """Read fine-tuning samples (see the module docstring for the layouts).

    Args:
        path: a .npz/.npy file, a folder of them, a folder of images, or a folder of class
            folders of images.
        input_specs: the model's inputs as (name, numpy dtype, batch-1 shape).
        preprocess: image preprocessing (``images.parse_preprocess`` accepts it); images only.
        val_fraction: the share held out for validation, in [0, 1); at least one sample.
        seed: seeds the subset (``limit``) and the validation split.
        limit: keep at most this many samples (a seeded random subset), >= 2.

    Raises:
        FinetuneError: a missing path, no usable samples, labels of the wrong dtype or
            length or for some files only, a mixed or empty class-folder layout, samples
            that are not the model's inputs, NaN/Inf; one line naming the file.
        PreprocessError: a malformed ``preprocess``.
    """
    if not 0 <= val_fraction < 1:
        msg = f"{WHERE}: validation fraction {val_fraction} must be in [0, 1)"
        raise FinetuneError(msg)
    if limit is not None and limit < 2:
        msg = f"{WHERE}: limit {limit} must be >= 2 (one sample to train on, one to validate)"
        raise FinetuneError(msg)
    p = Path(path)
    if not p.exists():
        msg = f"{WHERE} {p}: no such file or folder"
        raise FinetuneError(msg)
    pre = parse_preprocess(preprocess) if preprocess is not None else None
    try:
        entries, labels, what = _entries(p, input_specs)
        if pre is None and any(isinstance(e, Path) for e in entries):
            msg = (f"{WHERE} {p} holds images: pass --preprocess to say how they become model "
                   "inputs, e.g. --preprocess resize=256,crop=224,mean=0.485:0.456:0.406,"
                   "std=0.229:0.224:0.225")
            raise FinetuneError(msg)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(entries))[:limit]
        samples = [_sample(entries[i], input_specs, pre) for i in order]
    except CalibrationDataError as e:
        raise FinetuneError(_reworded(e)) from e
    if len(samples) < 2:
        msg = (f"{WHERE} {p}: {len(samples)} sample(s); fine-tuning needs at least 2 "
               "(one to train on, one to validate)")
        raise FinetuneError(msg)
    labels = None if labels is None else labels[order]
    n_val = min(len(samples) - 1, max(1, round(len(samples) * val_fraction)))
    kept = f"{len(samples)} of {len(entries)}" if len(samples) < len(entries) else len(samples)
    note = (f"{p} ({kept} {what}, {'labelled' if labels is not None else 'no labels'}), "
            f"{n_val} held out for validation")
    pick = (lambda a, s: None if a is None else a[s])  # noqa: E731
    return FinetuneData(samples[n_val:], pick(labels, slice(n_val, None)), samples[:n_val],
                        pick(labels, slice(None, n_val)), note)


def _entries(path: Path, specs: Sequence[InputSpec]) -> tuple[list, np.ndarray | None, str]:
    """Every sample as a loaded dict or an image file to decode, its labels, what they are."""
    if path.is_file():
        if is_image(path):
            return [path], None, "image"
        return _from_array_files([path], path, specs)
    classes = _class_folders(path)
    if classes:
        files, labels = [], []
        for index, folder in enumerate(classes):
            found = image_files(folder)
            files += found
            labels += [index] * len(found)
        return files, np.asarray(labels, dtype=np.int64), f"images in {len(classes)} class folders"
    arrays = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in ARRAY_SUFFIXES
                    and not f.name.startswith("."))
    images = image_files(path)
    if arrays and not images:
        return _from_array_files(arrays, path, specs)
    if images and not arrays:
        return images, None, "images"
    # neither, or both: read_calibration says what is wrong with the folder
    read_calibration(path, specs, 1)
    msg = f"{WHERE} {path}: holds no usable samples"   # not reached: it raised
    raise FinetuneError(msg)


def _from_array_files(files: list[Path], path: Path,
                      specs: Sequence[InputSpec]) -> tuple[list, np.ndarray | None, str]:
    samples: list[dict[str, np.ndarray]] = []
    labels: list[np.ndarray] = []
    with_labels, without = [], []
    for file in files:
        found = read_calibration(file, specs, None).samples
        file_labels = _npz_labels(file, len(found))
        (without if file_labels is None else with_labels).append(file.name)
        samples += found
        if file_labels is not None:
            labels.append(file_labels)
    if with_labels and without:
        msg = (f"{WHERE} {path}: {with_labels[0]} has 'labels' but {without[0]} has none; "
               "give labels in every file (labelled) or in none (distillation)")
        raise FinetuneError(msg)
    what = "samples" if len(files) == 1 else f"samples in {len(files)} files"
    return samples, np.concatenate(labels) if with_labels else None, what


def _sample(entry, specs: Sequence[InputSpec], preprocess) -> dict[str, np.ndarray]:
    if isinstance(entry, Path):     # an image: decoded only when kept
        return read_calibration(entry, specs, 1, preprocess).samples[0]
    return entry


def _class_folders(path: Path) -> list[Path]:
    """The sorted class folders when ``path`` is an ImageFolder tree, else []."""
    subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [d for d in subs if image_files(d)]
    if not classes:
        return []
    loose = [f.name for f in sorted(path.iterdir()) if f.is_file() and
             (is_image(f) or f.suffix.lower() in ARRAY_SUFFIXES and not f.name.startswith("."))]
    if loose:
        msg = (f"{WHERE} {path}: holds class folders ({', '.join(d.name for d in classes[:3])}) "
               f"and also {loose[0]} beside them; put every image in a class folder (labelled) "
               "or none (unlabelled)")
        raise FinetuneError(msg)
    empty = [d.name for d in subs if d not in classes]
    if empty:
        msg = (f"{WHERE} {path}: class folder {empty[0]} holds no images; add its images or "
               "remove it (class indices follow the sorted folder names)")
        raise FinetuneError(msg)
    if len(classes) == 1:
        msg = (f"{WHERE} {path}: one class folder ({classes[0].name}); labelled data needs a "
               f"folder per class, unlabelled images can be given as {classes[0]}")
        raise FinetuneError(msg)
    return classes


def _npz_labels(path: Path, n: int) -> np.ndarray | None:
    """``labels`` of one .npz, checked against its ``n`` samples; None without them."""
    if path.suffix.lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as z:
        if "labels" not in z.files:
            return None
        labels = z["labels"]
    if not np.issubdtype(labels.dtype, np.integer):
        msg = (f"{WHERE} {path}: 'labels' are {labels.dtype}, expected integer class "
               "indices (e.g. labels.astype(np.int64))")
        raise FinetuneError(msg)
    if labels.ndim != 1 or len(labels) != n:
        shape = "x".join(map(str, labels.shape)) or "a scalar"
        msg = (f"{WHERE} {path}: 'labels' has shape {shape}, expected one label per "
               f"sample ({n})")
        raise FinetuneError(msg)
    if n and labels.min() < 0:
        msg = f"{WHERE} {path}: 'labels' holds negative values; use class indices 0..K-1"
        raise FinetuneError(msg)
    return labels.astype(np.int64)


def _reworded(error: CalibrationDataError) -> str:
    """A calibration-data message, as the fine-tuning data's."""
    text = re.sub(r"^calibration (file|folder|image|data) ", f"{WHERE} ", str(error))
    return text.replace("calibration ", "fine-tuning ")
