"""The benchmark protocol, after OpenVINO benchmark_app, onnxruntime_perf_test and MLPerf.

Each repeat runs in a fresh process (``python -m edgeopt.runtimes._worker``): load and
compile are timed, then the first inference alone, then warm-up, then synchronous batch-1
runs. Once a minimum count and a minimum time are met, the runs stop as soon as the p50 is
known: its bootstrap 95% confidence interval lies within ``ci_pct`` percent of it (checked
on a geometric schedule, so the check costs little), or at the cap (``max_seconds``,
``max_iterations``). ``ci_pct`` 0 is the fixed-length protocol: stop once the minimums are
met. The child's peak RSS is the run's peak memory, unpolluted by whatever the parent
process holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeopt.runtimes.errors import (
    AdapterUnavailable,
    InvalidProtocol,
    ModelLoadFailed,
    RuntimeAdapterError,
    short_reason,
)

UNSTABLE_CV = 0.05
# Why a repeat stopped: its p50's interval was tight, it hit the cap, or (ci_pct 0) it ran
# the fixed minimum count and time.
STOP_REASONS = ("ci", "cap", "fixed")
BOOTSTRAP_RESAMPLES = 300
_BOOTSTRAP_CELLS = 2_000_000      # resampled values held at once while bootstrapping
# Set by edgeopt's qemu runner (e.g. "qemu-aarch64:cortex-a76"): figures taken under
# emulation are labelled so, never passed off as the emulated device's speed.
EMULATED_ENV = "EDGEOPT_EMULATED"


@dataclass(frozen=True)
class BenchProtocol:
    """How a model is timed; the recipe's ``bench`` section.

    Per repeat (a fresh process): ``warmup`` untimed runs, then timed runs until at least
    ``min_iterations`` runs and ``min_seconds`` are done and the p50's bootstrap 95%
    interval is within ``ci_pct`` percent of it; ``max_seconds`` and ``max_iterations``
    cap a repeat whatever its interval. ``ci_pct`` 0 (or None): stop at the minimums, the
    fixed-length protocol (edgeopt's earlier default: 100 runs, 3 s, 3 repeats).
    """

    warmup: int = 10
    min_iterations: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 3.0
    repeats: int = 2
    threads: int | None = None
    ci_pct: float | None = 2.0
    max_iterations: int | None = 100_000

    def __post_init__(self) -> None:
        problems = []
        if self.warmup < 0:
            problems.append(f"--warmup {self.warmup} must be >= 0")
        if self.min_iterations < 1:
            problems.append(f"--bench-iterations {self.min_iterations} must be >= 1")
        if self.min_seconds < 0:
            problems.append(f"--bench-seconds {self.min_seconds} must be >= 0")
        if self.max_seconds < self.min_seconds:
            problems.append(f"--bench-max-seconds {self.max_seconds} is below --bench-seconds")
        if self.max_iterations is not None and self.max_iterations < self.min_iterations:
            problems.append(f"max_iterations {self.max_iterations} is below --bench-iterations")
        if self.ci_pct is not None and not 0 <= self.ci_pct < 100:
            problems.append(f"--bench-ci {self.ci_pct} must be a percentage in [0, 100) "
                            "(0: fixed length)")
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
    p50_ci95_ms: tuple[float, float] | None = None
    stopped: str | None = None                  # "cap" if any repeat hit it, else "ci"/"fixed"
    repeat_stopped: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["repeat_p50_ms"] = list(self.repeat_p50_ms)
        data["repeat_stopped"] = list(self.repeat_stopped)
        if self.p50_ci95_ms is not None:
            data["p50_ci95_ms"] = list(self.p50_ci95_ms)
        return data


# ------------------------------------------------------------------ the adaptive stop

def p50_ci95(times_ms: np.ndarray | Sequence[np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
             seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the median of ``times_ms`` (seeded: the same timings give
    the same interval). A list of arrays (one per repeat) is resampled within each array,
    so every repeat keeps its weight."""
    groups = ([np.asarray(times_ms, dtype=np.float64)] if isinstance(times_ms, np.ndarray)
              or not len(times_ms) or np.isscalar(times_ms[0])
              else [np.asarray(g, dtype=np.float64) for g in times_ms])
    groups = [g for g in groups if g.size]
    if not groups:
        msg = "no timings to take an interval of"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    n = sum(g.size for g in groups)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    medians = []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        sample = np.concatenate([g[rng.integers(0, g.size, size=(rows, g.size))]
                                 for g in groups], axis=1)
        medians.append(np.median(sample, axis=1))
    lo, hi = np.percentile(np.concatenate(medians), [2.5, 97.5])
    return float(lo), float(hi)


def ci_within(times_ms: np.ndarray | Sequence[float], pct: float) -> bool:
    """Whether the p50's bootstrap 95% interval lies within ``pct`` percent of the p50."""
    t = np.asarray(times_ms, dtype=np.float64)
    p50 = float(np.median(t))
    lo, hi = p50_ci95(t)
    return max(p50 - lo, hi - p50) <= p50 * pct / 100


def timed_runs(run: Callable[[], object], protocol: BenchProtocol,
               clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], str]:
    """Time ``run()`` (after warm-up) under ``protocol``: the times in ms and why it stopped
    (one of :data:`STOP_REASONS`). The interval is checked once the minimums are met, then
    after every further 10% of runs, so checking adds at most a few percent of runs."""
    times: list[float] = []
    next_check = 0
    begin = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        times.append((t1 - t0) * 1000)
        n, elapsed = len(times), t1 - begin
        if n >= protocol.min_iterations and elapsed >= protocol.min_seconds:
            if not protocol.ci_pct:
                return times, "fixed"
            if n >= next_check:
                if ci_within(times, protocol.ci_pct):
                    return times, "ci"
                next_check = n + max(10, n // 10)
        if elapsed >= protocol.max_seconds or (protocol.max_iterations is not None
                                               and n >= protocol.max_iterations):
            return times, "cap"


def summarize(times_ms: np.ndarray | Sequence[np.ndarray], repeat_p50: list[float],
              load_ms: float, first_ms: float, peak_rss_mb: float | None, setup: dict,
              repeat_stopped: Sequence[str] = ()) -> BenchResult:
    repeats = ([np.asarray(times_ms, dtype=np.float64)] if isinstance(times_ms, np.ndarray)
               else [np.asarray(g, dtype=np.float64) for g in times_ms])
    t = np.concatenate(repeats)
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
        p50_ci95_ms=tuple(r(v) for v in p50_ci95(repeats)),
        stopped=_overall_stop(repeat_stopped), repeat_stopped=tuple(repeat_stopped),
    )


def _overall_stop(reasons: Sequence[str]) -> str | None:
    if not reasons:
        return None
    return "cap" if "cap" in reasons else reasons[-1]


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
    repeat_p50, loads, firsts, peaks, stops = [], [], [], [], []
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
            stops.append(out["stopped"])
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
    result = summarize(times, repeat_p50, float(np.median(loads)), float(np.median(firsts)),
                       peak, setup, stops)
    return replace(result, label="emulated") if emulated else result


def _run_worker(job: dict) -> dict:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "edgeopt.runtimes._worker"],
                          input=json.dumps(job), capture_output=True, text=True, env=env,
                          timeout=job["protocol"]["max_seconds"] * 3 + 600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        msg = f"benchmark worker for {job['adapter']} failed: {short_reason(tail[0])}"
        raise RuntimeAdapterError(msg)
    out = json.loads(lines[-1])
    if "error" in out:
        kind = {"ModelLoadFailed": ModelLoadFailed,
                "AdapterUnavailable": AdapterUnavailable}.get(out["error_type"], RuntimeAdapterError)
        raise kind(out["error"])
    return out
