"""Running a model over samples: the outputs every step compares against each other."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

__all__ = ["SpilledOutputs", "each_output", "run_all", "run_spilled", "stack_first", "torch_outputs"]

Progress = Callable[[int, int], None] | None
Samples = Sequence[dict[str, np.ndarray]]


def each_output(loaded, samples: Samples, update: Progress = None) -> Iterator[list[np.ndarray]]:
    """Every output of ``loaded.run`` for each sample, in sample order, as they come: through
    ``loaded.run_many`` where the loaded model has it (a few samples in flight at once,
    the same outputs), one ``run`` at a time otherwise."""
    many = getattr(loaded, "run_many", None)
    runs = many(samples) if many is not None else (loaded.run(feeds) for feeds in samples)
    for i, outs in enumerate(runs):
        if update is not None:
            update(i + 1, len(samples))
        yield outs


def run_all(loaded, samples: Samples, update: Progress = None) -> list[list[np.ndarray]]:
    """Every output of ``loaded.run`` for each sample (:func:`each_output`)."""
    return list(each_output(loaded, samples, update))


class SpilledOutputs(Sequence):
    """Every output of every sample, on disk (``calibrate.spill``), read back one sample
    at a time as a list of arrays: memory holds one sample, whatever the sample count."""

    def __init__(self, outputs: Iterable[Sequence[np.ndarray]] = ()) -> None:
        from edgeopt.calibrate.spill import SpilledSamples

        self._store = SpilledSamples()
        for outs in outputs:
            self.append(outs)

    def append(self, outs: Sequence[np.ndarray]) -> None:
        self._store.append({str(j): np.asarray(o) for j, o in enumerate(outs)})

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        sample = self._store[i]
        return [sample[str(j)] for j in range(len(sample))]


def run_spilled(loaded, samples: Samples, update: Progress = None) -> SpilledOutputs:
    """:func:`run_all`, its outputs kept on disk as they come."""
    return SpilledOutputs(each_output(loaded, samples, update))


def stack_first(outputs: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
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
