"""A small CNN trained on scikit-learn's digits, with its held-out test split as evaluation set.

The data (1,797 labelled 8x8 images, values 0..16) ships inside scikit-learn, so the model,
its calibration set and its accuracy are all reproducible offline. The weights are committed
next to this file; retrain them with::

    python -m edgeopt.reference_models.digits_cnn train

Training is deterministic (fixed seeds, deterministic algorithms, one thread) and does not
depend on the CPU's vector extensions: ``train`` runs in a process whose kernels are pinned
(``CPU_INDEPENDENT``: ATen's baseline kernels instead of its AVX2/AVX-512 ones, MKL's
conditional numerical reproducibility, oneDNN off), because the float sums of an AVX2 and an
AVX-512 kernel differ in the last bits and 40 epochs make that a different model. So running
it again, on any x86-64 machine, reproduces the committed state dict.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeopt.reference_models.base import ReferenceModel

MODULE = "edgeopt.reference_models.digits_cnn"   # also when run as __main__
WEIGHTS = Path(__file__).with_name("digits_cnn.pt")
SPLIT_SEED = 0          # permutation of the 1,797 samples into train/test
TRAIN_FRACTION = 0.7
CALIB_SEED = 1001       # which training samples make the calibration set
TRAIN_SEED = 0
# read when torch and MKL start, so set before the training process starts
CPU_INDEPENDENT = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
PIXEL_MAX = 16.0        # load_digits' images take integer values 0..16


# --- data ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _dataset() -> tuple[np.ndarray, np.ndarray]:
    """All images as float32 (N, 1, 8, 8) in [0, 1], and their digits; read-only."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / PIXEL_MAX).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=1)
def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test split: indices into ``load_digits()``, 70% / 30%."""
    n = len(_dataset()[1])
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_train = round(n * TRAIN_FRACTION)
    train, test = order[:n_train], order[n_train:]
    train.setflags(write=False)
    test.setflags(write=False)
    return train, test


def _calibration_images(n: int) -> np.ndarray:
    # Training images only (never the test split); a seeded order, so n=50 is a prefix of n=100.
    train, _ = split_indices()
    chosen = np.random.default_rng(CALIB_SEED).permutation(train)[:n]
    return _dataset()[0][chosen]


def _training_images() -> tuple[np.ndarray, np.ndarray]:
    # The whole train split with its labels: what fine-tuning after pruning trains on.
    train, _ = split_indices()
    images, labels = _dataset()
    return images[train], labels[train]


def _evaluation_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    _, test = split_indices()
    images, labels = _dataset()
    return images[test[:n]], labels[test[:n]]


# --- model -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _model_class():
    """The model class, made on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    # An nn.Module subclass rather than a bare nn.Sequential: NNCF pruning fails on the latter.
    class DigitsCNN(nn.Module):
        def __init__(self, num_classes: int = 10) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(32)
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.pool(self.relu(self.bn2(self.conv2(x))))
            x = self.relu(self.bn3(self.conv3(x)))
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return self.fc(x)

    # Reachable as edgeopt.reference_models.digits_cnn.DigitsCNN (module __getattr__ below),
    # so whole models pickle and deepcopy like any other.
    DigitsCNN.__module__ = MODULE
    DigitsCNN.__qualname__ = "DigitsCNN"
    return DigitsCNN


def __getattr__(name: str):
    if name == "DigitsCNN":
        return _model_class()
    msg = f"module {MODULE!r} has no attribute {name!r}"
    raise AttributeError(msg)


def build_digits_cnn():
    """An untrained DigitsCNN: (N, 1, 8, 8) in [0, 1] -> (N, 10) logits."""
    return _model_class()()


def pretrained_digits_cnn():
    """DigitsCNN with the committed weights, in eval mode."""
    import torch

    if not WEIGHTS.is_file():
        msg = (f"digits-cnn weights {WEIGHTS} are missing; "
               f"run 'python -m {MODULE} train' to make them")
        raise FileNotFoundError(msg)
    model = build_digits_cnn()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


# --- training --------------------------------------------------------------------------

def _accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(np.array(images)))
    return float((logits.argmax(1).numpy() == labels).mean())


def train(epochs: int = EPOCHS, seed: int = TRAIN_SEED) -> tuple[dict, float, float]:
    """Train DigitsCNN on the train split, deterministically.

    Returns:
        The state dict, and the train and test accuracy.
    """
    import torch

    images, labels = _dataset()
    train_idx, test_idx = split_indices()
    x = torch.from_numpy(np.array(images[train_idx]))
    y = torch.from_numpy(np.array(labels[train_idx]))

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    # One thread and deterministic kernels: float sums in a fixed order, same weights every run.
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False              # oneDNN picks its kernels by CPU
    try:
        torch.manual_seed(seed)
        model = build_digits_cnn()
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        shuffle = torch.Generator().manual_seed(seed)
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(epochs):
            model.train()
            for batch in torch.randperm(len(x), generator=shuffle).split(BATCH_SIZE):
                optimizer.zero_grad()
                loss_fn(model(x[batch]), y[batch]).backward()
                optimizer.step()
            schedule.step()
        model.eval()
        train_acc = _accuracy(model, images[train_idx], labels[train_idx])
        test_acc = _accuracy(model, images[test_idx], labels[test_idx])
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return state, train_acc, test_acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="Train the digits-cnn reference model.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("train", help=f"train and write the state dict (default {WEIGHTS.name})")
    cmd.add_argument("--out", type=Path, default=WEIGHTS, help="where to write the state dict")
    cmd.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in CPU_INDEPENDENT.items()):
        # the pinned kernels are chosen at start-up: train in a process started with them
        command = [sys.executable, "-m", MODULE, *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(command, env={**os.environ, **CPU_INDEPENDENT}).returncode

    import torch

    start = time.perf_counter()
    state, train_acc, test_acc = train(args.epochs)
    seconds = time.perf_counter() - start
    torch.save(state, args.out)
    train_n, test_n = (len(i) for i in split_indices())
    print(f"train accuracy {train_acc:.4f} ({train_n} samples), "
          f"test accuracy {test_acc:.4f} ({test_n} samples), {seconds:.1f} s")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


DIGITS_CNN = ReferenceModel(
    name="digits-cnn",
    description="small BatchNorm CNN on scikit-learn's 8x8 digits; accuracy on a held-out 30% split",
    input_name="input",
    input_shape=(1, 1, 8, 8),
    output_name="logits",
    metric="accuracy",
    preprocessing={
        "source": "sklearn.datasets.load_digits",
        "size": [8, 8],
        "scale": 1 / PIXEL_MAX,
        "range": [0.0, 1.0],
        "layout": "NCHW",
        "channel_order": "grayscale",
        "dtype": "float32",
    },
    calib_samples=100,
    eval_samples=539,   # the whole test split
    _build=pretrained_digits_cnn,
    _calibration=_calibration_images,
    _evaluation=_evaluation_images,
    _finetune=_training_images,
    _max_calib=1258,    # the train split
    _max_eval=539,
)


if __name__ == "__main__":
    sys.exit(main())
