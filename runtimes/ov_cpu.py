"""OpenVINO, CPU plugin."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeopt.runtimes.base import Availability, TensorSpec, first_line
from edgeopt.runtimes.errors import AdapterUnavailable, ModelLoadFailed


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
        result = self._request.infer(feeds)
        return [np.array(result[out]) for out in self.compiled.outputs]


class OvDeviceAdapter:
    """An OpenVINO adapter for one device plugin (subclasses set the device)."""

    name: ClassVar[str] = "ov-cpu"
    runtime: ClassVar[str] = "openvino"
    formats: ClassVar[tuple[str, ...]] = ("onnx", "openvino-ir")
    device: ClassVar[str] = "CPU"

    def available(self) -> Availability:
        try:
            import openvino as ov
        except ImportError:
            return Availability(False, "openvino is not installed (pip install openvino)")
        devices = ov.Core().available_devices
        if not any(d.split(".")[0] == self.device for d in devices):
            return Availability(False, f"OpenVINO sees no {self.device} device "
                                       f"(available: {', '.join(devices) or 'none'})")
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

    def load(self, model: Path, unit=None, threads: int | None = None) -> OvLoaded:
        availability = self.available()
        if not availability.ok:
            msg = f"{self.name}: {availability.reason}"
            raise AdapterUnavailable(msg)
        import openvino as ov

        core = ov.Core()
        start = time.perf_counter()
        ov_model = self._read(core, model)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        # The CPU plugin runs float layers in bf16 on CPUs with avx512_bf16/AMX unless told
        # otherwise: FP32 artifacts, and the layers an INT8 artifact keeps in FP32, run as
        # FP32, so the figures are what the artifact's precision says.
        config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            compiled = core.compile_model(ov_model, self.device, config)
        except Exception as e:
            msg = f"{self.name} cannot compile {Path(model).name}: {first_line(e)}"
            raise ModelLoadFailed(msg) from e
        load_ms = (time.perf_counter() - start) * 1000
        info = {"device": self.device}
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

    def unsupported_ops(self, model: Path) -> list[str]:
        import openvino as ov

        core = ov.Core()
        ov_model = self._read(core, model)
        supported = core.query_model(ov_model, self.device)
        return sorted({f"{op.get_friendly_name()} ({op.get_type_name()})"
                       for op in ov_model.get_ops() if op.get_friendly_name() not in supported})


class OvCpu(OvDeviceAdapter):
    name: ClassVar[str] = "ov-cpu"
