"""The benchmark protocol, after OpenVINO benchmark_app, onnxruntime_perf_test and MLPerf.

Each repeat runs in a fresh process (``python -m edgeopt.runtimes._worker``): load and
compile are timed, then the first inference alone, then warm-up, then synchronous batch-1
runs until both a minimum count and a minimum time are met. The child's peak RSS is the
run's peak memory, unpolluted by whatever the parent process holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeopt.runtimes.errors import (
    AdapterUnavailable,
    InvalidProtocol,
    ModelLoadFailed,
    RuntimeAdapterError,
)

UNSTABLE_CV = 0.05
# Set by edgeopt's qemu runner (e.g. "qemu-aarch64:cortex-a76"): figures taken under
# emulation are labelled so, never passed off as the emulated device's speed.
EMULATED_ENV = "EDGEOPT_EMULATED"


@dataclass(frozen=True)
class BenchProtocol:
    warmup: int = 10
    min_iterations: int = 100
    min_seconds: float = 3.0
    max_seconds: float = 60.0
    repeats: int = 3
    threads: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.warmup < 0:
            problems.append(f"--warmup {self.warmup} must be >= 0")
        if self.min_iterations < 1:
            problems.append(f"--bench-iterations {self.min_iterations} must be >= 1")
        if self.min_seconds < 0:
            problems.append(f"--bench-seconds {self.min_seconds} must be >= 0")
        if self.max_seconds < self.min_seconds:
            problems.append(f"max_seconds {self.max_seconds} is below --bench-seconds")
        if self.repeats < 1:
            problems.append(f"--bench-repeats {self.repeats} must be >= 1")
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads {self.threads} must be >= 1")
        if problems:
            raise InvalidProtocol("; ".join(problems))


@dataclass(frozen=True)
class BenchResult:
    label: str
    iterations: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cv: float
    throughput_ips: float
    load_ms: float
    first_inference_ms: float
    peak_rss_mb: float | None
    repeat_p50_ms: tuple[float, ...]
    unstable: bool
    setup: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["repeat_p50_ms"] = list(self.repeat_p50_ms)
        return data


def summarize(times_ms: np.ndarray, repeat_p50: list[float], load_ms: float, first_ms: float,
              peak_rss_mb: float | None, setup: dict) -> BenchResult:
    t = np.asarray(times_ms, dtype=np.float64)
    mean = float(t.mean())
    cv = float(t.std() / mean) if mean > 0 else 0.0
    spread = (max(repeat_p50) - min(repeat_p50)) / min(repeat_p50) if min(repeat_p50) > 0 else 0
    r = lambda v: round(float(v), 4)  # noqa: E731
    return BenchResult(
        label="measured", iterations=int(t.size), min_ms=r(t.min()), mean_ms=r(mean),
        p50_ms=r(np.percentile(t, 50)), p90_ms=r(np.percentile(t, 90)),
        p99_ms=r(np.percentile(t, 99)), max_ms=r(t.max()), cv=r(cv),
        throughput_ips=r(1000.0 / mean), load_ms=r(load_ms), first_inference_ms=r(first_ms),
        peak_rss_mb=None if peak_rss_mb is None else r(peak_rss_mb),
        repeat_p50_ms=tuple(r(p) for p in repeat_p50),
        unstable=bool(cv > UNSTABLE_CV or spread > UNSTABLE_CV), setup=setup,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for part in [path, *([path.with_suffix(".bin")] if path.suffix == ".xml" else [])]:
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_benchmark(adapter, model: Path, inputs: dict[str, np.ndarray], protocol: BenchProtocol,
                  unit=None, progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """Benchmark ``model`` with ``adapter``: ``protocol.repeats`` fresh processes."""
    availability = adapter.available(unit)
    if not availability.ok:
        msg = f"{adapter.name}: {availability.reason}"
        raise AdapterUnavailable(msg)
    model = Path(model)
    times: list[np.ndarray] = []
    repeat_p50, loads, firsts, peaks = [], [], [], []
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        feeds = Path(tmp) / "inputs.npz"
        np.savez(feeds, **inputs)
        job = {"adapter": adapter.name, "model": str(model), "inputs": str(feeds),
               "protocol": asdict(protocol),
               "unit": {"id": getattr(unit, "id", None), "kind": getattr(unit, "kind", None)}}
        for repeat in range(protocol.repeats):
            if progress is not None:
                progress(repeat, protocol.repeats)
            out = _run_worker(job)
            run_times = np.asarray(out["times_ms"])
            times.append(run_times)
            repeat_p50.append(float(np.percentile(run_times, 50)))
            loads.append(out["load_ms"])
            firsts.append(out["first_inference_ms"])
            peaks.append(out["peak_rss_mb"])
            info = out["info"]
    if progress is not None:
        progress(protocol.repeats, protocol.repeats)
    setup = {
        "device": getattr(unit, "id", None), "adapter": adapter.name, "runtime": adapter.runtime,
        "runtime_version": adapter.version(), "threads": info.get("threads"),
        "inference_precision": info.get("inference_precision"), "model": model.name,
        "model_sha256": _sha256(model), "host_cpu": _cpu_model(),
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in inputs.items()},
        "protocol": asdict(protocol), "batch": 1, "streams": 1,
    }
    emulated = os.environ.get(EMULATED_ENV)
    if emulated:
        setup["emulated_by"] = emulated
    peak = max(p for p in peaks if p is not None) if any(p is not None for p in peaks) else None
    result = summarize(np.concatenate(times), repeat_p50, float(np.median(loads)),
                       float(np.median(firsts)), peak, setup)
    return replace(result, label="emulated") if emulated else result


def _run_worker(job: dict) -> dict:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "edgeopt.runtimes._worker"],
                          input=json.dumps(job), capture_output=True, text=True, env=env,
                          timeout=job["protocol"]["max_seconds"] * 3 + 600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        msg = f"benchmark worker for {job['adapter']} failed: {tail[0][:300]}"
        raise RuntimeAdapterError(msg)
    out = json.loads(lines[-1])
    if "error" in out:
        kind = {"ModelLoadFailed": ModelLoadFailed,
                "AdapterUnavailable": AdapterUnavailable}.get(out["error_type"], RuntimeAdapterError)
        raise kind(out["error"])
    return out
