"""Samples decoded once and kept on disk: memory holds one sample at a time, not the set.

Calibration and evaluation pass over their samples several times (statistics, each
quantizer, the reference, each artifact's evaluation). Decoding an image again on every
pass costs time; keeping every decoded sample costs memory that grows with the sample
count. :class:`SpilledSamples` decodes each sample once, as it arrives, writes its arrays
to an anonymous temporary file (gone when the object is, or the process ends), and reads
one back whenever it is asked for: a ``Sequence`` of input dicts, like a list.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["SpilledSamples", "spill"]

# (name, dtype, shape, offset in the file, bytes) of each array of one sample
_Entry = list[tuple[str, str, tuple[int, ...], int, int]]


class SpilledSamples(Sequence):
    """Input dicts kept in a temporary file, read back one at a time."""

    def __init__(self, samples: Iterable[Mapping[str, np.ndarray]] = ()) -> None:
        self._file = tempfile.TemporaryFile(prefix=f"edgeopt-{os.getpid()}-samples-")
        self._index: list[_Entry] = []
        self._size = 0
        for sample in samples:
            self.append(sample)

    def append(self, sample: Mapping[str, np.ndarray]) -> None:
        entry: _Entry = []
        for name, value in sample.items():
            a = np.asarray(value)
            a = a if a.flags.c_contiguous else a.copy(order="C")   # keeps 0-d arrays 0-d
            data = memoryview(a).cast("B") if a.size else b""
            os.pwrite(self._file.fileno(), data, self._size)
            entry.append((name, a.dtype.str, a.shape, self._size, a.nbytes))
            self._size += a.nbytes
        self._index.append(entry)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._read(j) for j in range(*i.indices(len(self)))]
        return self._read(range(len(self))[i])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self._read(i)

    def __add__(self, other):        # like a list: a list of both, read back
        return [*self, *other]

    def __radd__(self, other):
        return [*other, *self]

    def __reduce__(self):            # to another process: as the samples themselves
        return (SpilledSamples, (list(self),))

    def __repr__(self) -> str:
        return f"SpilledSamples({len(self)} samples, {self._size} bytes on disk)"

    def _read(self, i: int) -> dict[str, np.ndarray]:
        sample = {}
        for name, dtype, shape, offset, nbytes in self._index[i]:
            a = np.empty(shape, dtype=np.dtype(dtype))
            if nbytes:
                got = os.preadv(self._file.fileno(), [memoryview(a).cast("B")], offset)
                if got != nbytes:
                    msg = f"spilled sample {i}: read {got} of {nbytes} bytes"
                    raise OSError(msg)
            sample[name] = a
        return sample


def spill(samples: Iterable[Mapping[str, np.ndarray]]) -> SpilledSamples:
    """``samples`` (consumed one at a time) as a :class:`SpilledSamples`; one already
    spilled is returned as it is."""
    return samples if isinstance(samples, SpilledSamples) else SpilledSamples(samples)
