"""One backend per runtime, in one table: the only place the core learns what a runtime is.

A backend owns its runtime's artifact names, host adapter, quantizer, evaluator and
integer-kernel check (see :class:`~edgeopt.backends.base.Backend`). The pipeline, the CLI,
``bench``, ``verify`` and ``devices calibrate`` ask this registry and never spell a
runtime's name. Adding a runtime is one module plus one line in ``BACKENDS``.

Entries are resolved lazily, so importing this package (as ``edgeopt bench`` does on a
device with only a runtime installed) imports no runtime, torch or nncf.
"""

from __future__ import annotations

import importlib

from edgeopt.backends.base import Artifact, Backend, QuantJob, TargetSpec

__all__ = [
    "BACKENDS",
    "Artifact",
    "Backend",
    "QuantJob",
    "TargetSpec",
    "get_backend",
    "onnx_runner",
    "package_targets",
    "runtime_names",
]

# runtime -> "module:Class" (or a Backend instance, as tests register a fake one)
BACKENDS: dict[str, str | Backend] = {
    "onnxruntime": "edgeopt.backends.ort_backend:OrtBackend",
    "openvino": "edgeopt.backends.ov_backend:OvBackend",
}
_LOADED: dict[str, Backend] = {}


def runtime_names() -> tuple[str, ...]:
    """Every registered runtime, in registry order."""
    return tuple(BACKENDS)


def get_backend(runtime: str) -> Backend:
    entry = BACKENDS.get(runtime)
    if entry is None:
        msg = f"unknown runtime {runtime!r} (known: {', '.join(BACKENDS)})"
        raise KeyError(msg)
    if not isinstance(entry, str):
        return entry
    if runtime not in _LOADED:
        module, _, cls = entry.partition(":")
        _LOADED[runtime] = getattr(importlib.import_module(module), cls)()
    return _LOADED[runtime]


def onnx_runner() -> Backend:
    """The backend that runs plain ONNX on this host: it evaluates the FP32 export and
    checks every conversion step's parity against it."""
    for runtime in BACKENDS:
        backend = get_backend(runtime)
        if backend.format == "onnx":
            return backend
    msg = "no registered backend runs ONNX models"
    raise LookupError(msg)


def package_targets() -> dict[str, TargetSpec]:
    """Every app-bundle target (``android``, ``openvino``...) and the runtime it is for."""
    targets: dict[str, TargetSpec] = {}
    for runtime in BACKENDS:
        targets.update(get_backend(runtime).package_targets)
    return targets
