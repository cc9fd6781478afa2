"""--finetune-data: labelled or unlabelled samples to fine-tune on, checked like calibration data.

- ``data.npz``: one array per model input (a stack N x ... or one sample) and optionally
  ``labels`` (N integers): labelled.
- a folder of class folders of images (``train/cat/*.jpg``, ``train/dog/*.jpg``): labelled,
  the class index is the position of the folder's name in sorted order.
- a folder of images, of .npy/.npz files, or one such file without ``labels``: unlabelled;
  fine-tuning then distils from the unpruned model.
A seeded fraction of the samples is held out for validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.calibrate.errors import CalibrationDataError
from edgeopt.calibrate.finetune import FinetuneData, FinetuneError
from edgeopt.calibrate.images import image_files

EVERYTHING = 10**9


def read_finetune_data(path: str | Path, input_specs, *, preprocess=None,
                       val_fraction: float = 0.1, seed: int = 0,
                       limit: int | None = None) -> FinetuneData:
    """Read ``path`` (see the module docstring); every problem is a one-line FinetuneError."""
    from edgeopt.calibrate.data import read_calibration

    p = Path(path)
    if not p.exists():
        msg = f"--finetune-data {p}: no such file or folder"
        raise FinetuneError(msg)
    classes = _class_folders(p)
    try:
        if classes:
            samples, labels = [], []
            for index, folder in enumerate(classes):
                found = read_calibration(folder, input_specs, EVERYTHING, preprocess).samples
                samples += found
                labels += [index] * len(found)
            labels = np.asarray(labels, dtype=np.int64)
            note = f"{p} ({len(samples)} images in {len(classes)} class folders)"
        else:
            samples = read_calibration(p, input_specs, EVERYTHING, preprocess).samples
            labels = _npz_labels(p, len(samples))
            note = f"{p} ({len(samples)} samples, {'labelled' if labels is not None else 'no labels'})"
    except CalibrationDataError as e:
        msg = f"--finetune-data: {e}".replace("calibration ", "")
        raise FinetuneError(msg) from e
    if limit is not None:
        samples = samples[:limit]
        labels = None if labels is None else labels[:limit]
    if len(samples) < 2:
        msg = (f"--finetune-data {p}: {len(samples)} sample(s); fine-tuning needs at least 2 "
               "(one to train on, one to validate)")
        raise FinetuneError(msg)
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(len(samples) - 1, max(1, int(round(len(samples) * val_fraction))))
    val, train = order[:n_val], order[n_val:]
    return FinetuneData([samples[i] for i in train], None if labels is None else labels[train],
                        [samples[i] for i in val], None if labels is None else labels[val],
                        f"{note}, {n_val} held out for validation")


def _class_folders(path: Path) -> list[Path]:
    """Sub-folders holding images, when ``path`` is an ImageFolder-style tree."""
    if not path.is_dir():
        return []
    subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    top_level = [f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")]
    if not subs or top_level:
        return []
    return [d for d in subs if image_files(d)]


def _npz_labels(path: Path, n: int) -> np.ndarray | None:
    """``labels`` of a single .npz, checked against its ``n`` samples."""
    if not (path.is_file() and path.suffix.lower() == ".npz"):
        return None
    with np.load(path, allow_pickle=False) as z:
        if "labels" not in z.files:
            return None
        labels = z["labels"]
    if not np.issubdtype(labels.dtype, np.integer):
        msg = f"--finetune-data {path}: 'labels' are {labels.dtype}, expected integer class indices"
        raise FinetuneError(msg)
    if labels.ndim != 1 or len(labels) != n:
        msg = (f"--finetune-data {path}: 'labels' has shape {'x'.join(map(str, labels.shape))}, "
               f"expected one label per sample ({n})")
        raise FinetuneError(msg)
    if labels.min() < 0:
        msg = f"--finetune-data {path}: 'labels' holds negative values; use class indices 0..K-1"
        raise FinetuneError(msg)
    return labels.astype(np.int64)
