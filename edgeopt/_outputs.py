"""Running a model over samples: the outputs every step compares against each other."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["run_all", "stack_first", "torch_outputs"]

Progress = Callable[[int, int], None] | None
Samples = Sequence[dict[str, np.ndarray]]


def run_all(loaded, samples: Samples, update: Progress = None) -> list[list[np.ndarray]]:
    """Every output of ``loaded.run`` for each sample."""
    outs = []
    for i, feeds in enumerate(samples):
        outs.append(loaded.run(feeds))
        if update is not None:
            update(i + 1, len(samples))
    return outs


def stack_first(outputs: list[list[np.ndarray]]) -> np.ndarray:
    """The first output of every sample, one flattened row each."""
    return np.concatenate([o[0].reshape(1, -1) for o in outputs], axis=0)


def torch_outputs(module, input_names: Sequence[str], samples: Samples,
                  update: Progress = None) -> list[list[np.ndarray]]:
    """Every output of a PyTorch module for each sample (inputs in ``input_names`` order)."""
    import torch

    from edgeopt.convert import run_torch

    outs = []
    for i, sample in enumerate(samples):
        outs.append(run_torch(module, tuple(torch.from_numpy(sample[n]) for n in input_names)))
        if update is not None:
            update(i + 1, len(samples))
    return outs
