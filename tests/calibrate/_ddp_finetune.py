"""Fine-tune a tiny BatchNorm CNN on sklearn digits, alone or under torchrun.

``python _ddp_finetune.py OUT.pt`` (or ``python -m torch.distributed.run --nproc-per-node 2
_ddp_finetune.py OUT.pt``): rank 0 saves ``{"state": state_dict, "epochs": records,
"world_size": N}`` to OUT.pt. test_finetune.py imports ``tiny_net`` and ``digits_data``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

N_TRAIN = 320


def digits(n: int = 400) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The first ``n`` 8x8 digits as batch-1 {"input": 1x1x8x8 float32} samples, labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] / 16.0).astype(np.float32)[:, None]
    return [{"input": a[None]} for a in x], d.target[:n].astype(np.int64)


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(512, 10))


def digits_data(labelled: bool = True, n_train: int = N_TRAIN):
    """``n_train`` training and 80 validation digits, with labels or without (distillation)."""
    from edgeopt.calibrate.finetune import FinetuneData

    inputs, labels = digits(n_train + 80)
    return FinetuneData(inputs[:n_train], labels[:n_train] if labelled else None,
                        inputs[n_train:], labels[n_train:] if labelled else None, "digits")


def main(out: str) -> None:
    from edgeopt.calibrate.finetune import (
        FinetuneConfig,
        finetune,
        is_main_process,
        shutdown_distributed,
    )

    model = tiny_net()
    # 330 samples: the last global batch (10) is incomplete and dropped in both runs
    data = digits_data(n_train=330)
    result = finetune(model, data, FinetuneConfig(epochs=2, lr=3e-3, batch_size=32),
                      input_names=["input"])
    if is_main_process():
        torch.save({"state": model.state_dict(), "epochs": result.epochs,
                    "world_size": result.world_size}, out)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
