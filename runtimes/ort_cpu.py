"""ONNX Runtime, CPU execution provider."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeopt.runtimes import _many
from edgeopt.runtimes.base import Availability, TensorSpec
from edgeopt.runtimes.errors import AdapterUnavailable, ModelLoadFailed, first_line

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def physical_cores() -> int:
    """Default inference threads: the physical cores, or ``EDGEOPT_THREADS`` where set (a
    process that shares the cores with others, e.g. one of several parallel builds)."""
    capped = os.environ.get("EDGEOPT_THREADS", "")
    if capped.isdigit() and int(capped) > 0:
        return int(capped)
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
    # A one-thread session of the same model, for run_many (None: runs one at a time).
    single_thread: Callable[[], object] | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)

    def run_many(self, samples: Sequence[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]:
        """The outputs of every sample, in order: one thread per core, each running whole
        samples on a one-thread session of the model (made here, dropped after), which
        keeps the cores busier than one session's threads on one sample at a time. The
        same kernels: the outputs are those of :meth:`run`."""
        count = min(_many.workers(), len(samples))
        if self.single_thread is None or count < 2 or len(samples) < _many.MANY_MIN:
            yield from _many.one_at_a_time(self.run, samples)
            return
        session = self.single_thread()
        yield from _many.threaded(lambda feeds: session.run(None, feeds), samples, count)


class OrtSessionAdapter:
    """An ONNX Runtime adapter for one execution provider (subclasses set the EP)."""

    name: ClassVar[str] = "ort-cpu"
    runtime: ClassVar[str] = "onnxruntime"
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    provider: ClassVar[str] = "CPUExecutionProvider"

    def available(self, unit=None) -> Availability:
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

    def _session(self, model: Path, unit, threads: int | None, options=None):
        availability = self.available(unit)
        if not availability.ok:
            msg = f"{self.name}: {availability.reason}"
            raise AdapterUnavailable(msg)
        import onnxruntime as ort

        options = options or ort.SessionOptions()
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
        return session, options, load_ms

    def load(self, model: Path, unit=None, threads: int | None = None,
             shapes: dict | None = None) -> OrtLoaded:
        session, options, load_ms = self._session(model, unit, threads)
        # Other providers than the CPU EP keep their own threads: they run one at a time.
        single = ((lambda: self._session(model, unit, 1)[0])
                  if self.provider == "CPUExecutionProvider" else None)
        return OrtLoaded(session, _specs(session.get_inputs()), _specs(session.get_outputs()),
                         load_ms, {"threads": options.intra_op_num_threads,
                                   "providers": session.get_providers(),
                                   "inference_precision": "as in the graph"}, single)

    def node_assignment(self, model: Path, unit=None, shapes: dict | None = None) -> dict:
        """Node name -> (operator, execution provider), as ONNX Runtime ran them.

        ONNX Runtime assigns each node to the first provider that claims it and gives the
        rest to the CPU EP without a word; its profiler records who ran each node, so one
        profiled run with zero inputs tells the assignment, all of it.
        """
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="edgeopt-assign-") as tmp:
            options = ort.SessionOptions()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "profile")
            session, _, _ = self._session(model, unit, None, options)
            feeds = {}
            for spec in _specs(session.get_inputs()):
                dims = (shapes or {}).get(spec.name) or tuple(
                    d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
                feeds[spec.name] = np.zeros(dims, dtype=np.dtype(spec.dtype))
            try:
                session.run(None, feeds)
            except Exception as e:
                msg = f"{self.name} cannot run {Path(model).name}: {first_line(e)}"
                raise ModelLoadFailed(msg) from e
            events = json.loads(Path(session.end_profiling()).read_text())
        assignment = {}
        for event in events:
            args = event.get("args") or {}
            if event.get("cat") == "Node" and "provider" in args:
                node = event["name"].removesuffix("_kernel_time")
                assignment[node] = (args.get("op_name", "?"), args["provider"])
        return assignment

    def benchmark(self, model: Path, inputs: dict[str, np.ndarray], protocol, unit=None,
                  progress=None):
        from edgeopt.runtimes.bench import run_benchmark

        return run_benchmark(self, model, inputs, protocol, unit, progress)

    def unsupported_ops(self, model: Path, shapes: dict | None = None, unit=None) -> list[str]:
        """Every node ONNX Runtime gave to another provider than this adapter's, by name.

        All of them, not the first; a model the provider takes none of raises
        AdapterUnavailable, since nothing of it would run on the device.
        """
        if self.provider == "CPUExecutionProvider":
            return []       # the fallback itself: every node it is given runs on it
        assignment = self.node_assignment(model, unit, shapes)
        elsewhere = sorted(f"{node} ({op} on {provider})"
                           for node, (op, provider) in assignment.items()
                           if provider != self.provider)
        if assignment and len(elsewhere) == len(assignment):
            msg = (f"{self.name}: ONNX Runtime ran none of {Path(model).name}'s "
                   f"{len(assignment)} nodes on {self.provider} (all fell back to "
                   f"{', '.join(sorted({p for _, p in assignment.values()}))}); "
                   "no figure is reported for a device that did not run")
            raise AdapterUnavailable(msg)
        return elsewhere


class OrtCpu(OrtSessionAdapter):
    name: ClassVar[str] = "ort-cpu"


class OrtArm(OrtSessionAdapter):
    """ONNX Runtime's CPU EP on an ARM CPU (its MLAS kernels use NEON, dot-product, i8mm)."""

    name: ClassVar[str] = "ort-arm"

    def available(self, unit=None) -> Availability:
        from edgeopt.runtimes.ov_devices import arm_problem

        problem = arm_problem(self.name)
        return Availability(False, problem) if problem else super().available(unit)
