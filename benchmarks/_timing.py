"""Shared by the benchmarks: one runner per runtime, and interleaved timing.

Interleaving runs a burst of every artifact in turn, round after round (in a new
seeded order each round), so the machine's noise falls on all of them alike; compare them by
ratios measured in the same run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def ort_runner(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle sessions must not spin: with many sessions in one process, their spinning thread
    # pools take the cores from the one being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def ov_runner(path: Path, threads: int):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda feeds: np.array(request.infer(feeds)[compiled.outputs[0]])


def runner(path: Path, runtime: str, threads: int):
    return (ort_runner if runtime == "onnxruntime" else ov_runner)(path, threads)


def outputs(run, inputs) -> np.ndarray:
    """The first output of ``run`` for each input dict, flattened, one row per input."""
    return np.stack([np.asarray(run(x)).reshape(-1) for x in inputs])


def interleave(runs: list, feeds: dict, rounds: int, burst: int,
               warmup: int = 10) -> tuple[list[list[float]], list[list[float]]]:
    """Times (ms) of every run, and each run's p50 per round."""
    for run in runs:
        for _ in range(warmup):
            run(feeds)
    times: list[list[float]] = [[] for _ in runs]
    round_p50: list[list[float]] = [[] for _ in runs]
    order = np.random.default_rng(0)
    for _ in range(rounds):
        # a new order every round (seeded), so no artifact always follows the same one
        for i in order.permutation(len(runs)):
            run = runs[i]
            burst_times = []
            for _ in range(burst):
                start = time.perf_counter()
                run(feeds)
                burst_times.append((time.perf_counter() - start) * 1000)
            times[i] += burst_times
            round_p50[i].append(float(np.median(burst_times)))
    return times, round_p50


def fp32_models(name: str, out: Path):
    """The reference model ``name`` and its FP32 ONNX and OpenVINO IR, built by the
    pipeline under ``out`` (no quantization, a token benchmark)."""
    import edgeopt
    from edgeopt.reference_models import get_reference

    edgeopt.optimize(f"ref:{name}", out=out, quantize=False, bench=edgeopt.runtimes.BenchProtocol(
        warmup=0, min_iterations=1, min_seconds=0.0, repeats=1))
    return get_reference(name), out / f"{name}.fp32.onnx", out / f"{name}.fp32.xml"
