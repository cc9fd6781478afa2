"""Where a search's trials run: in this process (``local``) or as Ray tasks (``ray``).

A trial is built by :func:`build_trial` (``edgeopt.optimize`` on its recipe, without
benchmarks) into the shared work folder, then timed by :func:`measure_latency` on each
device that is here. Builds run in parallel on Ray, each with its share of the cores
(``EDGEOPT_THREADS``, torch's threads); a measured benchmark holds its physical device, a
Ray resource of one unit (``edgeopt-device:ID``), so two never share a device, and it runs
once the running builds have ended, with none started beside it, so no build shares the
CPU with it either.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from edgeopt.errors import UsageError
from edgeopt.runtimes.errors import short_reason

__all__ = ["LocalExecutor", "RayExecutor", "build_trial", "device_resource", "estimate_latency",
           "import_ray", "make_executor", "measure_latency", "warm"]


def device_resource(device: str) -> str:
    """The Ray resource a measured benchmark on ``device`` (an ID, not ID:UNIT) holds."""
    return f"edgeopt-device:{device.split(':')[0]}"


@contextlib.contextmanager
def _trial_env(job: dict):
    """The build's working folder, thread cap and stdout (libraries' progress) for its log."""
    saved_env, saved_cwd = os.environ.get("EDGEOPT_THREADS"), os.getcwd()
    threads = job.get("threads")
    torch_threads = None
    if threads:
        os.environ["EDGEOPT_THREADS"] = str(threads)
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    os.chdir(job["cwd"])
    log = open(job["log"], "a", encoding="utf-8")  # noqa: SIM115
    saved_fd = os.dup(1)
    os.dup2(log.fileno(), 1)
    try:
        with contextlib.redirect_stdout(log):
            yield
    finally:
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        log.close()
        os.chdir(saved_cwd)
        if threads:
            import torch

            torch.set_num_threads(torch_threads)
            if saved_env is None:
                os.environ.pop("EDGEOPT_THREADS", None)
            else:
                os.environ["EDGEOPT_THREADS"] = saved_env


def build_trial(job: dict) -> dict:
    """Build one trial: ``job`` has ``number``, ``recipe`` (a dict), ``out``, ``cwd``,
    ``log`` and ``threads``. Returns the outcome, or ``status: failed`` with the reason."""
    import warnings

    from edgeopt.errors import user_errors
    from edgeopt.pipeline import optimize
    from edgeopt.recipe import Recipe

    started = time.perf_counter()
    outcome = {"number": job["number"], "status": "failed"}
    with _trial_env(job), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            recipe = Recipe.from_dict(job["recipe"]).override(benchmark=False)
            report = optimize(recipe=recipe, out=job["out"], overwrite=True)
        except Exception as e:  # a trial that cannot build is recorded, the search goes on
            kind = "" if isinstance(e, user_errors()) else f"{type(e).__name__}: "
            outcome["error"] = short_reason(kind + " ".join(str(e).split()))
            outcome["build_s"] = round(time.perf_counter() - started, 3)
            return outcome
    outcome.update(_artifact_figures(report, recipe, Path(job["out"])))
    outcome["build_s"] = round(time.perf_counter() - started, 3)
    return outcome


def _artifact_figures(report, recipe, out: Path) -> dict:
    """The trial's artifact: its runtime's INT8 one (FP32 when quantization is off)."""
    precision = "int8" if recipe.quant.enabled else "fp32"
    runtime = recipe.runtimes[0]
    record = next(r for r in report.artifacts
                  if r.runtime == runtime and r.precision == precision)
    return {"status": "ok", "runtime": runtime, "precision": precision,
            "artifact": str(out / record.path), "format": record.format,
            "size_bytes": record.size_bytes, "sha256": record.sha256,
            "metric_name": record.accuracy["metric"], "metric": record.accuracy["value"],
            "artifact_status": record.status}


def measure_latency(job: dict) -> dict:
    """Benchmark one artifact on one device here: ``job`` has ``artifact``, ``device``
    (ID:UNIT), ``runtime`` and ``protocol`` (a BenchProtocol's fields)."""
    from edgeopt._measure import run_target
    from edgeopt._targets import resolve_targets
    from edgeopt.runtimes import BenchProtocol

    target = resolve_targets((job["device"],), (job["runtime"],))[0]
    row = run_target(target, Path(job["artifact"]), None, BenchProtocol(**job["protocol"]))
    return _latency(row["bench"])


def estimate_latency(artifact: str, device: str, runtime: str, basis: dict | None) -> dict:
    """The device profile's estimate for ``artifact`` (an ONNX file), with a pinned basis."""
    from edgeopt._targets import resolve_targets
    from edgeopt.runtimes.estimate import estimate

    target = resolve_targets((device,), (runtime,))[0]
    return _latency(estimate(Path(artifact), target.profile_obj, target.unit_obj, runtime,
                             basis=basis))


def _latency(bench: dict) -> dict:
    keep = ("label", "p50_ms", "low_ms", "high_ms", "cv", "reason")
    return {k: bench[k] for k in keep if bench.get(k) is not None}


def warm() -> str:
    """Import what a build imports (once per process); returns where edgeopt came from."""
    import edgeopt.pipeline
    from edgeopt.backends import get_backend, runtime_names

    for runtime in runtime_names():
        get_backend(runtime).available()
    import torch  # noqa: F401

    return str(Path(edgeopt.pipeline.__file__).parent)


class LocalExecutor:
    """Trials one after another in this process, each with every core: a submitted
    trial is built when its result is asked for."""

    name = "local"

    def __init__(self, measure_fn: Callable[[dict], dict] = measure_latency) -> None:
        self._measure = measure_fn
        self._jobs: dict[int, dict] = {}

    def warm(self) -> None:
        warm()

    def submit(self, job: dict) -> None:
        self._jobs[job["number"]] = job

    def result(self, number: int) -> dict:
        return build_trial(self._jobs.pop(number))

    def building(self) -> bool:
        return False

    def drain(self) -> None:
        pass

    def measure(self, jobs: list[dict]) -> list[dict]:
        return [self._measure(job) for job in jobs]

    def close(self) -> None:
        pass


class RayExecutor:
    """Builds as Ray tasks of ``cpus_per_trial`` cores each, started in trial order as
    workers free up (at most one per worker at a time); measured benchmarks as tasks that
    hold their device's resource, with no build running."""

    name = "ray"

    def __init__(self, address: str | None = None, devices: tuple[str, ...] = (),
                 cpus_per_trial: int = 1,
                 measure_fn: Callable[[dict], dict] = measure_latency,
                 work: Path | None = None,
                 build_fn: Callable[[dict], dict] = build_trial) -> None:
        import tempfile
        from collections import deque

        ray = import_ray()
        resources = {device_resource(d): 1 for d in dict.fromkeys(devices)}
        # Ray puts the driver's working folder first on every worker's sys.path: started
        # from a source checkout, its edgeopt/ would shadow the installed one. Workers get
        # the work folder instead (trial jobs carry the user's folder for data paths).
        neutral = Path(work) if work is not None else Path(tempfile.gettempdir())
        neutral.mkdir(parents=True, exist_ok=True)
        saved = os.getcwd()
        os.chdir(neutral)
        try:
            self._init(ray, address, resources)
        finally:
            os.chdir(saved)
        self._ray, self.cpus_per_trial = ray, cpus_per_trial
        self._build = ray.remote(num_cpus=cpus_per_trial, max_retries=0)(build_fn)
        self._measure = ray.remote(num_cpus=0, max_retries=0)(measure_fn)
        self._warm = ray.remote(num_cpus=cpus_per_trial)(warm)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_trial)
        self._queue: deque = deque()                 # submitted, not started
        self._running: dict = {}                     # ObjectRef -> job
        self._done: dict[int, dict] = {}             # number -> outcome

    @staticmethod
    def _init(ray, address: str | None, resources: dict[str, int]) -> None:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            missing = [r for r in resources if r not in ray.cluster_resources()]
            if missing:
                ray.shutdown()
                msg = (f"the Ray cluster at {address} has no {', '.join(missing)} resource: "
                       f"start the node that is the device with ray start --resources "
                       f"'{{\"{missing[0]}\": 1}}'")
                raise UsageError(msg)
        else:
            ray.init(num_cpus=os.cpu_count(), resources=resources, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False)

    def warm(self) -> None:
        here = warm()
        found = set(self._ray.get([self._warm.remote() for _ in range(self.workers)]))
        if found != {here}:
            msg = (f"Ray workers import edgeopt from {', '.join(sorted(found))}, not {here} "
                   "as this process does: install the same edgeopt on every node")
            raise UsageError(msg)

    def submit(self, job: dict) -> None:
        self._queue.append({**job, "threads": self.cpus_per_trial})
        self._start()

    def _start(self) -> None:
        while self._queue and len(self._running) < self.workers:
            job = self._queue.popleft()
            self._running[self._build.remote(job)] = job

    def _collect(self) -> None:
        """Wait for the next build to end; record its outcome (a dead worker: failed)."""
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        for ref in ready:
            job = self._running.pop(ref)
            try:
                self._done[job["number"]] = self._ray.get(ref)
            except self._ray.exceptions.RayError as e:   # a worker died: the trial failed
                reason = short_reason(" ".join(str(e).split()))
                self._done[job["number"]] = {"number": job["number"], "status": "failed",
                                             "error": f"Ray task failed: {reason}"}

    def result(self, number: int) -> dict:
        self._start()
        while number not in self._done:
            self._collect()
            self._start()
        return self._done.pop(number)

    def building(self) -> bool:
        return bool(self._running)

    def drain(self) -> None:
        """Let the running builds end and start none (a benchmark is next)."""
        while self._running:
            self._collect()

    def measure(self, jobs: list[dict]) -> list[dict]:
        refs = [self._measure.options(resources={device_resource(job["device"]): 1})
                .remote(job) for job in jobs]
        return self._ray.get(refs)

    def close(self) -> None:
        self._ray.shutdown()


def import_ray():
    try:
        import ray
    except ImportError as e:
        msg = "--executor ray needs the ray extra: pip install 'edgeopt[ray]'"
        raise UsageError(msg) from e
    return ray


def make_executor(name: str, address: str | None, devices: tuple[str, ...],
                  work: Path | None = None):
    """The executor ``--executor`` names; ``devices`` are those measured here."""
    if name == "ray":
        return RayExecutor(address, devices, work=work)
    if address:
        msg = "--ray-address applies to --executor ray"
        raise UsageError(msg)
    return LocalExecutor()
