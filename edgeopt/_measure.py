"""One model on one device target: measured where the device is here, else estimated.

Shared by `edgeopt bench` and `edgeopt optimize`. Every figure carries its label:
``measured`` (ran on this device), ``emulated`` (ran under qemu: outputs checked, timings
never the device's), ``estimated`` (roofline from the device profile, with an error band),
or no figure at all: ``unavailable`` / ``unsupported`` with the reason. Imports only
numpy and edgeopt.runtimes, so it works in the runtime-only install.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeopt.runtimes.errors import (
    AdapterUnavailable,
    DeviceProfileError,
    RuntimeAdapterError,
    StaticShapesRequired,
)


class NotMeasured(RuntimeAdapterError):
    """--require-measured, and a target that cannot be measured here."""


def _estimate(model: Path, target, runtime: str) -> dict:
    try:
        from edgeopt.runtimes.estimate import estimate
    except ImportError:
        return {"label": "unavailable", "reason": "no estimator in this install"}
    try:
        return estimate(model, target.profile_obj, target.unit_obj, runtime)
    except (RuntimeAdapterError, DeviceProfileError, ImportError) as e:
        return {"label": "unavailable", "reason": f"no estimate either: {e}"}


def _static_shape_problem(adapter, model: Path, shapes: dict | None) -> str | None:
    """An NPU's static-shape demand, checked even when the NPU is not here."""
    check = getattr(adapter, "check_static_shapes", None)
    if check is None or not getattr(adapter, "static_shapes", False):
        return None
    try:
        check(model, shapes)
    except StaticShapesRequired as e:
        return str(e)
    except Exception:  # the model cannot even be read: the measured path reports it
        return None
    return None


def target_availability(target):
    """The adapter's own check, after the device itself: a figure measured on this machine
    is the device's only when the device is this machine."""
    from edgeopt.runtimes import Availability, get_adapter

    if target.absent:
        return Availability(False, target.absent)
    return get_adapter(target.adapter).available(target.unit_obj)


def run_target(target, model: Path, feeds: dict[str, np.ndarray] | None, protocol, *,
               shapes: dict | None = None, require_measured: bool = False,
               emulate: bool = False,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Benchmark ``model`` on ``target`` (a ``_targets.Target``); a row for the report.

    ``feeds`` are the benchmark inputs (None: made from the loaded model's inputs and
    ``shapes``). Raises NotMeasured under ``require_measured`` when the target is absent.
    """
    from edgeopt.backends import get_backend
    from edgeopt.runtimes import get_adapter

    adapter = get_adapter(target.adapter)
    given = shapes
    shapes = shapes if isinstance(shapes, dict) else None   # a bare shape: the one input
    row = {"device": target.label, "adapter": target.adapter, "runtime": target.runtime,
           "model": str(model)}
    availability = target_availability(target)
    shape_problem = _static_shape_problem(adapter, model, shapes)
    if shape_problem:
        row["static_shapes"] = shape_problem
    if availability.ok:
        try:
            unsupported = adapter.unsupported_ops(model, shapes)
        except AdapterUnavailable as e:
            availability = type(availability)(False, str(e))
            unsupported = []
    if availability.ok:
        if unsupported:
            row["unsupported_ops"] = unsupported
        if unsupported and get_backend(target.runtime).compiles_whole:
            # The runtime compiles a model for one device or not at all.
            row["bench"] = {"label": "unsupported",
                            "reason": f"{len(unsupported)} operations the device cannot run: "
                                      + ", ".join(unsupported)}
        else:
            if feeds is None:
                loaded = adapter.load(model, target.unit_obj, protocol.threads, shapes)
                feeds = random_inputs(loaded.inputs, given)
            result = adapter.benchmark(model, feeds, protocol, target.unit_obj, progress)
            row["bench"] = result.to_dict()
            if unsupported:
                row["bench"]["fallback_nodes"] = len(unsupported)
    else:
        row["unavailable"] = availability.reason
        if require_measured:
            msg = (f"--require-measured: {target.label} via {target.adapter} cannot be "
                   f"measured here ({availability.reason})")
            raise NotMeasured(msg)
        row["bench"] = _estimate(model, target, target.runtime)
        row["bench"].setdefault("reason", f"not measured: {availability.reason}")
    if emulate and getattr(target.unit_obj, "qemu_cpu", None):
        row["emulation"] = _emulate(model, target, feeds, given)
    return row


def _emulate(model: Path, target, feeds, shapes) -> dict:
    qemu_cpu = getattr(target.unit_obj, "qemu_cpu", None)
    if not qemu_cpu:
        return {"label": "unavailable",
                "reason": f"{target.label} is not an ARM CPU with a qemu model in its profile"}
    from edgeopt.backends import get_backend, runtime_names

    backend = get_backend(target.runtime)
    if backend.emulation_adapter is None:
        can = [get_backend(r).label for r in runtime_names() if get_backend(r).emulation_adapter]
        return {"label": "unavailable",
                "reason": f"emulation runs {' or '.join(can)} (the sysroot has no {backend.label})"}
    try:
        from edgeopt.runtimes.emulation import emulate, emulation_available
    except ImportError:
        return {"label": "unavailable", "reason": "no emulation support in this install"}
    availability = emulation_available()
    if not availability.ok:        # asked for emulation: never an estimate in its place
        msg = f"--emulate needs the ARM emulation toolchain: {availability.reason}"
        raise AdapterUnavailable(msg)
    if feeds is None:
        feeds = random_inputs(backend.load(model).inputs, shapes)
    return emulate(model, feeds, qemu_cpu, adapter=backend.emulation_adapter)


MAX_INPUT_BYTES = 1 << 30      # one benchmark input, allocated in memory


def _check_shape(spec, shape: tuple) -> None:
    """``--input-shape`` against the model's own input, before anything is allocated."""
    from edgeopt.errors import UsageError

    dims = ",".join(str(d) for d in shape)
    model_dims = ",".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in spec.shape)
    if any(not isinstance(d, int) or d <= 0 for d in shape):
        msg = f"--input-shape {dims}: dimensions must be positive (e.g. 1,3,224,224)"
        raise UsageError(msg)
    fixed = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, int) and d > 0]
    if len(shape) != len(spec.shape) or any(shape[i] != d for i, d in fixed):
        msg = (f"--input-shape {dims} does not fit input '{spec.name}' of shape "
               f"[{model_dims}]; pass the shape the model takes")
        raise UsageError(msg)
    size = int(np.prod(shape, dtype=object)) * np.dtype(spec.dtype).itemsize
    if size > MAX_INPUT_BYTES:
        msg = (f"--input-shape {dims}: input '{spec.name}' would take {size / 2**30:,.1f} GiB, "
               f"over the {MAX_INPUT_BYTES >> 30} GiB a benchmark input may use")
        raise UsageError(msg)


def random_inputs(specs, shapes) -> dict[str, np.ndarray]:
    """Benchmark inputs: values do not change latency for these models, shapes do."""
    from edgeopt.errors import UsageError

    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        shape = shapes.get(spec.name) if isinstance(shapes, dict) else shapes
        if shape is None:
            if any(not isinstance(d, int) or d <= 0 for d in spec.shape):
                dims = ",".join(str(d) for d in spec.shape)
                msg = (f"input '{spec.name}' has dynamic shape [{dims}]; "
                       "pass --input-shape with concrete dimensions")
                raise UsageError(msg)
            shape = tuple(spec.shape)
        _check_shape(spec, tuple(shape))
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.integer):
            feeds[spec.name] = np.asarray(rng.integers(0, 2, size=shape), dtype=dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = np.ones(shape, dtype=bool)
        else:
            feeds[spec.name] = np.asarray(rng.standard_normal(shape), dtype=dtype)
    return feeds
