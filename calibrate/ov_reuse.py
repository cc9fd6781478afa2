"""What the OpenVINO INT8 builds of one run have in common, made once per process.

A run builds the same model more than once: the build without the AVX2 saturation guard
that weighing compares against (``edgeopt.tradeoffs``) runs right after the main one, on
the same FP32 model and samples. The guard edits NNCF's quantized model after
``nncf.quantize``, so both builds start from the same NNCF run; they also read the same
FP32 ONNX and capture the same FP32 activations for the per-layer SQNR.

Each kind of result is kept once (the last one made), under a key of what decides it:
file contents by digest, the calibration samples by identity (the same object, which one
run passes to every build), and every setting that reaches the computation. A result
made from samples goes when they do (a run's spilled samples are weakly referenced;
samples that cannot be, such as a list, are held until the next result of the kind), so
nothing outlives the run that made it. :func:`clear` forgets them all.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from edgeopt.calibrate.reuse import digest as reuse_digest
from edgeopt.calibrate.reuse import file_digest as one_file_digest

__all__ = ["clear", "file_digest", "nncf_result", "reuse"]

# kind -> (key, a callable giving the samples object (or None), value)
_KEPT: dict[str, tuple[Hashable, Any, Any]] = {}


def clear() -> None:
    """Forget everything kept."""
    _KEPT.clear()


def file_digest(*paths: Path | str) -> str:
    """One digest of the bytes of ``paths``, in order (reuse.py's, per file)."""
    return reuse_digest(*(one_file_digest(path) for path in paths))


def model_digest(path: Path | str) -> str:
    """:func:`file_digest` of an OpenVINO model: the file, and the weights (.bin) beside it
    when it is IR."""
    weights = Path(path).with_suffix(".bin")
    return file_digest(path, weights) if weights.is_file() else file_digest(path)


def _kept(kind: str, key: Hashable, samples: Any) -> tuple[bool, Any]:
    found = _KEPT.get(kind)
    if found is not None and found[0] == key and found[1]() is samples:
        return True, found[2]
    _KEPT.pop(kind, None)                  # the old value goes before a new one is made
    return False, None


def _keep(kind: str, key: Hashable, samples: Any, value: Any) -> None:
    if samples is None:
        ref = _none
    else:
        try:
            ref = weakref.ref(samples, lambda _, kind=kind: _KEPT.pop(kind, None))
        except TypeError:                  # a list: held
            ref = functools.partial(_same, samples)
    _KEPT[kind] = (key, ref, value)


def _none() -> None:
    return None


def _same(samples: Any) -> Any:
    return samples


def reuse(kind: str, key: Hashable, make: Callable[[], Any], samples: Any = None) -> Any:
    """``make()``, or what it gave the last time ``kind`` was asked for with the same key
    and the same ``samples`` object. The value is shared: callers do not modify it."""
    hit, value = _kept(kind, key, samples)
    if hit:
        return value
    value = make()
    _keep(kind, key, samples, value)
    return value


def nncf_result(key: Hashable, samples: Any, quantize: Callable[[], tuple[Any, list[str]]]
                ) -> tuple[Any, list[str]]:
    """``quantize()`` -> (an ``openvino.Model``, notes), which the caller then edits in
    place; for the same key and samples again, a copy of that model as ``quantize``
    returned it, before any edit.

    ``Model.clone()`` gives every node its original's friendly name as an explicit name,
    while a node nobody named reports its process-wide counter name (which
    ``edgeopt.convert.canonical_names`` replaces by a stable one before saving); the
    copy's unnamed nodes are made to report their own counter names again, so a copy
    saves as the original would have."""
    hit, value = _kept("nncf", key, samples)
    if hit:
        model, unnamed, notes = value
        return _copy(model, unnamed), list(notes)
    model, notes = quantize()
    unnamed = frozenset(i for i, op in enumerate(model.get_ordered_ops())
                        if op.get_friendly_name() == op.get_name())
    _keep("nncf", key, samples, (model.clone(), unnamed, tuple(notes)))
    return model, notes


def _copy(model, unnamed: frozenset[int]):
    copy = model.clone()
    for i, op in enumerate(copy.get_ordered_ops()):
        if i in unnamed:
            op.set_friendly_name(op.get_name())
    return copy
