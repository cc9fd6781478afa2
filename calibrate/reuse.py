"""What builds of the same model share, computed once per process.

Weighing a default (edgeopt/tradeoffs.py) builds the ONNX Runtime artifact again without
it, right after the main build, on the same FP32 model, samples and statistics; a search
builds it once per trial, and the sensitivity probe once more. Their first stages are the
same: ONNX Runtime's pre-processing, the depthwise equalization with the statistics of the
equalized model, when only the refinement settings differ (the saturation guard, the
rounding), ONNX Runtime's QDQ graph itself, and the weight rounding's input second
moments (input_moments.py), which do not depend on the build at all. Those stages are
kept here, keyed by the content they come from (the FP32 file's digest, the samples'
digest, the settings that decide them), as serialized bytes (the moments as read-only
arrays) in a small LRU bounded by entry count and bytes; every build parses its own copy,
so a build from the memo is byte for byte the build without it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["Memo", "clear", "digest", "file_digest", "memo", "samples_digest"]

# a model's entries: its source facts, its equalized base, a QDQ graph per set of FP32
# nodes (the main build and the stem variant), the rounding's input moments
# (input_moments.py), a finished build and its per-layer SQNR per setting (which
# OpenVINO's QDQ route converts); room for them all, so no build evicts one its sibling
# needs
MAX_ENTRIES = 16
MAX_BYTES = 256 << 20        # a few models of ResNet-50 size


class Memo:
    """A thread-safe LRU of values with a stated size, bounded by count and total size."""

    def __init__(self, entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._entries, self._max_bytes = entries, max_bytes
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable):
        """The value stored under ``key``, or None."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value, size: int) -> None:
        """Keep ``value`` (``size`` bytes), dropping the least recently used entries to stay
        within the bounds; a value larger than the whole bound is not kept."""
        with self._lock:
            self._items.pop(key, None)
            if size > self._max_bytes:
                return
            self._items[key] = (value, size)
            while (len(self._items) > self._entries
                   or sum(s for _, s in self._items.values()) > self._max_bytes):
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


_MEMO = Memo()


def memo() -> Memo:
    """The process's memo of ONNX Runtime build stages."""
    return _MEMO


def clear() -> None:
    """Forget every kept stage (the next build computes everything)."""
    _MEMO.clear()


def file_digest(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def _update(h, array: np.ndarray) -> None:
    if not array.flags.c_contiguous:
        array = array.copy(order="C")          # (ascontiguousarray would make 0-d 1-d)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.reshape(-1).view(np.uint8))          # any dtype, any shape, 0-d or empty


def samples_digest(samples: Iterable[Mapping[str, np.ndarray]]) -> str:
    """Content digest of samples (names, dtypes, shapes and values, in order)."""
    h = hashlib.blake2b()
    for sample in samples:
        for name in sorted(sample):
            h.update(name.encode() + b"\0")
            _update(h, np.asarray(sample[name]))
        h.update(b"\1")
    return h.hexdigest()


def digest(*parts) -> str:
    """Digest of plain values (str, numbers, tuples, lists, dicts) and numpy arrays."""
    h = hashlib.blake2b()

    def feed(value) -> None:
        if isinstance(value, np.ndarray):
            _update(h, value)
        elif isinstance(value, dict):
            h.update(b"{")
            for key in sorted(value):
                feed(key)
                feed(value[key])
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for item in value:
                feed(item)
            h.update(b"]")
        else:
            h.update(f"{type(value).__name__}:{value!r};".encode())

    for part in parts:
        feed(part)
    return h.hexdigest()
