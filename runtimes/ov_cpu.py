"""OpenVINO, CPU plugin."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeopt.runtimes import _many
from edgeopt.runtimes.base import Availability, TensorSpec
from edgeopt.runtimes.errors import (
    AdapterUnavailable,
    ModelLoadFailed,
    StaticShapesRequired,
    first_line,
    short_reason,
)


def _specs(ports) -> tuple[TensorSpec, ...]:
    specs = []
    for i, port in enumerate(ports):
        names = port.get_names()
        name = port.get_any_name() if names else f"output_{i}"
        dtype = port.get_element_type().to_dtype().name
        shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
        specs.append(TensorSpec(name, dtype, shape))
    return tuple(specs)


@dataclass
class OvLoaded:
    compiled: object
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    load_ms: float
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._request = self.compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(scalars_as_tensors(feeds))
        return [np.array(result[out]) for out in self.compiled.outputs]

    def run_many(self, samples: Sequence[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]:
        """The outputs of every sample, in order, through one infer request per core of
        this compiled model, started without waiting: the plugin runs a sample while
        Python copies the last one's outputs and feeds the next. The same compiled model,
        so the outputs are those of :meth:`run`."""
        count = min(_many.workers(), len(samples))
        if count < 2:
            yield from _many.one_at_a_time(self.run, samples)
            return
        yield from _many.pipelined(self.compiled, samples, count, scalars_as_tensors)


def scalars_as_tensors(feeds: dict[str, np.ndarray]) -> dict:
    """``feeds`` with each 0-d array as an ``openvino.Tensor`` of shape []: given as an
    array, OpenVINO's Python layer makes a 0-d input shape [1] on a fresh request, and a
    model that takes a scalar then refuses it."""
    if not any(np.ndim(v) == 0 for v in feeds.values()):
        return feeds
    import openvino as ov

    return {k: ov.Tensor(np.array(v)) if np.ndim(v) == 0 else v
            for k, v in feeds.items()}


def plugin_error(error: BaseException) -> str:
    """The line of an OpenVINO exception that says what went wrong, not where it was thrown."""
    line = re.sub(r'"[^"]*/([^"/]+\.so[^"]*)"', r'"\1"', str(error))
    return short_reason(line or type(error).__name__)


def dynamic_inputs(ov_model) -> list[str]:
    """``name [dims]`` of every model input whose shape is not fully static."""
    return [f"{port.get_any_name()} {port.get_partial_shape()}"
            for port in ov_model.inputs if port.get_partial_shape().is_dynamic]


class OvDeviceAdapter:
    """An OpenVINO adapter for one device plugin (subclasses set the device)."""

    name: ClassVar[str] = "ov-cpu"
    runtime: ClassVar[str] = "openvino"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "openvino-ir")
    device: ClassVar[str] = "CPU"
    # Float layers run in FP32 where the plugin would otherwise pick bf16/f16 on its own;
    # None keeps the device's native precision (GPU: f16), which the result then records.
    precision_hint: ClassVar[str | None] = "f32"
    static_shapes: ClassVar[bool] = False
    hardware_hint: ClassVar[str] = ""

    def platform_problem(self) -> str | None:
        """Why this machine cannot have the device at all, before asking OpenVINO."""
        return None

    def available(self, unit=None) -> Availability:
        problem = self.platform_problem()
        if problem:
            return Availability(False, problem)
        try:
            import openvino as ov
        except ImportError:
            return Availability(False, "openvino is not installed (pip install openvino)")
        core = ov.Core()
        try:
            # Loads the plugin: a missing plugin or driver library fails here, by name.
            found = core.get_property(self.device, "AVAILABLE_DEVICES")
        except Exception as e:
            return Availability(False, f"OpenVINO's {self.device} plugin cannot load: "
                                       f"{plugin_error(e)}")
        if self.device != "CPU" and not [d for d in found if d is not None]:
            hint = f"; {self.hardware_hint}" if self.hardware_hint else ""
            return Availability(False, f"OpenVINO's {self.device} plugin loaded but enumerated "
                                       f"no {self.device} device{hint}")
        return Availability(True)

    def version(self) -> str:
        import openvino as ov

        return ov.get_version()

    def _read(self, core, model: Path):
        model = Path(model)
        if model.suffix.lower() == ".xml" and not model.with_suffix(".bin").is_file():
            msg = (f"{model.name} has no {model.with_suffix('.bin').name} beside it; "
                   "OpenVINO IR needs both files")
            raise ModelLoadFailed(msg)
        try:
            return core.read_model(str(model))
        except Exception as e:
            msg = f"{self.name} cannot read {model.name}: {first_line(e)}"
            raise ModelLoadFailed(msg) from e

    def prepare(self, ov_model, model: Path, shapes: dict | None):
        """Fix the inputs to ``shapes`` (name -> dims) where given; devices that need static
        shapes refuse a model that keeps a dynamic one, naming every such input."""
        if shapes:
            known = {p.get_any_name() for p in ov_model.inputs}
            fixed = {k: list(v) for k, v in shapes.items() if k in known}
            if fixed:
                try:
                    ov_model.reshape(fixed)
                except Exception as e:
                    msg = f"{self.name} cannot reshape {Path(model).name}: {plugin_error(e)}"
                    raise ModelLoadFailed(msg) from e
        if self.static_shapes:
            dynamic = dynamic_inputs(ov_model)
            if dynamic:
                msg = (f"{self.name}: {self.device} needs static input shapes; "
                       f"{Path(model).name} has dynamic {', '.join(dynamic)}: pass "
                       "--input-shape NAME=d0,d1,... for each (or export with fixed shapes)")
                raise StaticShapesRequired(msg)
        return ov_model

    def check_static_shapes(self, model: Path, shapes: dict | None = None) -> None:
        """The static-shape check alone, without the device: see ``prepare``."""
        import openvino as ov

        self.prepare(self._read(ov.Core(), model), model, shapes)

    def load(self, model: Path, unit=None, threads: int | None = None,
             shapes: dict | None = None) -> OvLoaded:
        availability = self.available(unit)
        if not availability.ok:
            msg = f"{self.name}: {availability.reason}"
            raise AdapterUnavailable(msg)
        import openvino as ov

        core = ov.Core()
        start = time.perf_counter()
        ov_model = self.prepare(self._read(core, model), model, shapes)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        capped = os.environ.get("EDGEOPT_THREADS", "")   # a build sharing the cores
        threads = threads or (int(capped) if capped.isdigit() and int(capped) > 0 else None)
        if threads and self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        # The CPU plugin runs float layers in bf16 on CPUs with avx512_bf16/AMX unless told
        # otherwise: FP32 artifacts, and the layers an INT8 artifact keeps in FP32, run as
        # FP32, so the figures are what the artifact's precision says.
        if self.precision_hint:
            config["INFERENCE_PRECISION_HINT"] = self.precision_hint
        try:
            compiled = core.compile_model(ov_model, self.device, config)
        except Exception as e:
            msg = f"{self.name} cannot compile {Path(model).name}: {plugin_error(e)}"
            raise ModelLoadFailed(msg) from e
        load_ms = (time.perf_counter() - start) * 1000
        info = {"device": self.device, "full_device_name": _device_name(core, self.device)}
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS"):
            try:
                value = compiled.get_property(key)
                info[key.lower()] = value.to_string() if hasattr(value, "to_string") else value
            except Exception:  # not every plugin has every property
                pass
        info["inference_precision"] = info.pop("inference_precision_hint", None)
        threads_used = info.pop("inference_num_threads", None)
        info["threads"] = int(threads_used) if threads_used not in (None, "") else None
        return OvLoaded(compiled, _specs(compiled.inputs), _specs(compiled.outputs), load_ms, info)

    def benchmark(self, model: Path, inputs: dict[str, np.ndarray], protocol, unit=None,
                  progress=None):
        from edgeopt.runtimes.bench import run_benchmark

        return run_benchmark(self, model, inputs, protocol, unit, progress)

    def unsupported_ops(self, model: Path, shapes: dict | None = None) -> list[str]:
        """Every operation the device's plugin cannot run (``Core.query_model``), not the first."""
        import openvino as ov

        core = ov.Core()
        ov_model = self.prepare(self._read(core, model), model, shapes)
        try:
            supported = core.query_model(ov_model, self.device)
        except Exception as e:
            msg = f"{self.name} cannot query {Path(model).name}: {plugin_error(e)}"
            raise AdapterUnavailable(msg) from e
        return sorted({f"{op.get_friendly_name()} ({op.get_type_name()})"
                       for op in ov_model.get_ops()
                       if op.get_friendly_name() not in supported
                       and op.get_type_name() not in {"Parameter", "Result", "Constant"}})


def _device_name(core, device: str) -> str | None:
    try:
        return str(core.get_property(device, "FULL_DEVICE_NAME"))
    except Exception:  # not every plugin reports it
        return None


class OvCpu(OvDeviceAdapter):
    name: ClassVar[str] = "ov-cpu"
