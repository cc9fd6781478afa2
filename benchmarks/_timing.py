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


def cpu_name() -> str:
    """This machine's CPU model, as edgeopt's host profile reads it."""
    from edgeopt.runtimes.devices import detect_host

    return detect_host()["name"]


def resnet50():
    """A ResNet-50 (torchvision's layout: bottlenecks 3-4-6-3, stride on the 3x3) with
    random weights, in eval mode. torchvision is not needed."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, c_in: int, width: int, stride: int) -> None:
            super().__init__()
            c_out = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(), nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
            self.down = None
            if stride != 1 or c_in != c_out:
                self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                      nn.MaxPool2d(3, 2, 1)]
            c_in = 64
            for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(blocks):
                    layers.append(Bottleneck(c_in, width, stride if i == 0 else 1))
                    c_in = width * 4
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    torch.manual_seed(0)
    model = ResNet50()
    with torch.no_grad():   # BatchNorm statistics that keep activations in a sane range
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 0.6)
    return model.eval()
