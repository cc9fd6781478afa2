"""ONNX Runtime, CPU execution provider."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeopt.runtimes.base import Availability, TensorSpec, first_line
from edgeopt.runtimes.errors import AdapterUnavailable, ModelLoadFailed

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def check_providers(session, wanted: str) -> None:
    """ONNX Runtime silently falls back to the CPU EP when another EP cannot start: check
    the session really uses the provider asked for, so no CPU figure is passed off as it."""
    used = session.get_providers()
    if wanted not in used:
        msg = (f"ONNX Runtime did not start {wanted} (session uses {', '.join(used)}); "
               "no figure is reported for a device that did not run")
        raise AdapterUnavailable(msg)


def _specs(values) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(v.name, _ORT_TYPES.get(v.type, v.type),
                            tuple(d if isinstance(d, int) else str(d) for d in v.shape))
                 for v in values)


@dataclass
class OrtLoaded:
    session: object
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    load_ms: float
    info: dict = field(default_factory=dict)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


class OrtSessionAdapter:
    """An ONNX Runtime adapter for one execution provider (subclasses set the EP)."""

    name: ClassVar[str] = "ort-cpu"
    runtime: ClassVar[str] = "onnxruntime"
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    provider: ClassVar[str] = "CPUExecutionProvider"

    def available(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError:
            return Availability(False, "onnxruntime is not installed (pip install onnxruntime)")
        if self.provider not in ort.get_available_providers():
            return Availability(False, f"{self.provider} is not in this onnxruntime build "
                                       f"(has {', '.join(ort.get_available_providers())})")
        return Availability(True)

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def provider_options(self, unit) -> dict:
        return {}

    def load(self, model: Path, unit=None, threads: int | None = None) -> OrtLoaded:
        availability = self.available()
        if not availability.ok:
            msg = f"{self.name}: {availability.reason}"
            raise AdapterUnavailable(msg)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        start = time.perf_counter()
        try:
            session = ort.InferenceSession(
                str(model), options, providers=[(self.provider, self.provider_options(unit))])
        except Exception as e:
            msg = f"{self.name} cannot load {Path(model).name}: {first_line(e)}"
            raise ModelLoadFailed(msg) from e
        load_ms = (time.perf_counter() - start) * 1000
        check_providers(session, self.provider)
        return OrtLoaded(session, _specs(session.get_inputs()), _specs(session.get_outputs()),
                         load_ms, {"threads": options.intra_op_num_threads,
                                   "providers": session.get_providers(),
                                   "inference_precision": "as in the graph"})

    def benchmark(self, model: Path, inputs: dict[str, np.ndarray], protocol, unit=None,
                  progress=None):
        from edgeopt.runtimes.bench import run_benchmark

        return run_benchmark(self, model, inputs, protocol, unit, progress)

    def unsupported_ops(self, model: Path) -> list[str]:
        # The CPU EP implements every standard ONNX operator; a load failure names the rest.
        try:
            self.load(model)
        except ModelLoadFailed as e:
            return [str(e)]
        return []


class OrtCpu(OrtSessionAdapter):
    name: ClassVar[str] = "ort-cpu"
