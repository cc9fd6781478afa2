"""Memory a step has freed, handed back before the next one grows.

The steps allocate and free large arrays (activations, statistics, compiled models). The
C allocator keeps most of what a step freed and serves the next step's allocations from
it only where they fit, so the process's resident size creeps up by the fragments of
every step before: on mobilenet-v2 the ONNX Runtime quantize step left ~180 MB resident
that it no longer used. :func:`release` collects Python's reference cycles (NNCF's and
torch's objects hold arrays in cycles) and asks glibc to return free heap pages to the
system (``malloc_trim``; nothing on other C libraries). :func:`let_go` drops what the
later steps no longer use.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
import sys
from collections.abc import Callable

__all__ = ["let_go", "map_large_arrays", "release"]

M_MMAP_THRESHOLD = -3          # glibc's mallopt parameter
LARGE = 256 * 1024             # bytes: blocks from this size get pages of their own


def release() -> None:
    """Collect garbage, then return the C heap's free pages to the system."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def map_large_arrays() -> None:
    """Serve every block of :data:`LARGE` bytes or more from pages of its own, returned
    to the system when it is freed (glibc). By default glibc raises that threshold to the
    size of the largest block freed so far (up to 32 MB), so after the first large array
    is freed, arrays of up to its size are carved from the heap, whose freed middle stays
    resident: an OpenVINO INT8 build on mobilenet-v2 grew ~150 MB that way."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, LARGE)


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(_libc(), "malloc_trim", None)      # glibc; musl has none


def let_go(state) -> None:
    """Forget what the run's later steps no longer use: the PyTorch model (and its example
    inputs) once the FP32 ONNX is written, as the later steps run the ONNX (a pruned run
    keeps it: its reference and fine-tuning are the model's), and the FP32 ONNX's session
    that made the reference outputs (its own evaluation loads it again, for the output
    names)."""
    source = state.prepared.source
    if state.fp32_onnx is not None and state.pruning is None and source.module is not None:
        state.module = None
        state.prepared.source = dataclasses.replace(source, module=None, example_inputs=())
    state.ref_runner = None
