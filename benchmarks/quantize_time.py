"""Time of edgeopt's ONNX Runtime INT8 quantize step against ``quantize_static``.

Same FP32 ONNX, same calibration samples, both ways:

- ``quantize_static``: ``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel
  S8 weights, U8 activations, MinMax), as ONNX Runtime documents it;
- edgeopt: ``quantize_onnx_for_ort`` with the default ``QuantConfig`` and no statistics
  handed in, so its own calibration pass (stats.py) is counted, with everything after it
  (equalization, the QDQ graph, saturation guard, weight rounding, bias correction, the
  per-layer SQNR the budget ranks by, the integer-kernel check).

Each quantization runs in a fresh process (imports and sample loading are not timed), in
the order A B A B ... so the machine's load falls on both alike. The shared FP32 export
and the samples are made once, first, and not counted.

    python benchmarks/quantize_time.py [--models mobilenet-v2 minilm resnet50]
                                       [--samples 100] [--repeats 2] [--effort default]

Models: the reference models (mobilenet-v2's calibration photos come from
``shared/data/imagenet-500`` when present), and ``resnet50``, a ResNet-50-sized CNN
(bottleneck blocks 3-4-6-3, 25.6M parameters) built here with random weights and fed
random normal inputs: random weights are fine for timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import cpu_name, resnet50

# ----------------------------------------------------------------------------- preparation

def prepare(name: str, n: int, work: Path) -> Path:
    """``work/NAME/`` with ``fp32.onnx`` and ``calib.npz`` (n samples); not timed."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "resnet50":
        import torch

        from edgeopt.convert.torch_to_onnx import export_onnx

        x = np.random.default_rng(0).standard_normal((n, 1, 3, 224, 224)).astype(np.float32)
        export_onnx(resnet50(), (torch.from_numpy(x[0]),), folder / "fp32.onnx",
                    input_names=("input",))
        samples = [{"input": s} for s in x]
    else:
        import edgeopt
        from edgeopt.reference_models import get_reference

        edgeopt.optimize(f"ref:{name}", out=folder / "build", quantize=False,
                         runtimes=("onnxruntime",), benchmark=False)
        (folder / "build" / f"{name}.fp32.onnx").replace(folder / "fp32.onnx")
        samples = get_reference(name).calibration_set(n)
    keys = sorted(samples[0])
    np.savez(folder / "calib.npz", **{f"{i}:{k}": s[k] for i, s in enumerate(samples)
                                      for k in keys})
    return folder


def load_samples(folder: Path) -> list[dict[str, np.ndarray]]:
    data = np.load(folder / "calib.npz")
    samples: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        index, name = key.split(":", 1)
        samples.setdefault(int(index), {})[name] = data[key]
    return [samples[i] for i in sorted(samples)]


# ----------------------------------------------------------------------------- children

def run_quantize_static(fp32: Path, out: Path, samples) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    prepped = out.with_name("prep.onnx")
    quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)


def run_edgeopt(fp32: Path, out: Path, samples, effort: str) -> None:
    from edgeopt.calibrate.quantize import QuantConfig, quantize_onnx_for_ort

    config = QuantConfig(effort=effort) if effort != "default" else QuantConfig()
    quantize_onnx_for_ort(fp32, out, samples, config)


def child(way: str, folder: Path, effort: str, profile: str | None) -> None:
    """One quantization in this fresh process; prints a JSON line with its seconds."""
    import onnxruntime.quantization  # noqa: F401  (imports are not timed)

    import edgeopt.calibrate.quantize  # noqa: F401

    samples = load_samples(folder)
    with tempfile.TemporaryDirectory(prefix="qtime-") as tmp:
        out = Path(tmp) / "int8.onnx"
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        start = time.perf_counter()
        if way == "ort":
            run_quantize_static(folder / "fp32.onnx", out, samples)
        else:
            run_edgeopt(folder / "fp32.onnx", out, samples, effort)
        seconds = time.perf_counter() - start
        if profiler is not None:
            import io
            import pstats

            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
            Path(profile).write_text(text.getvalue())
    print(json.dumps({"way": way, "seconds": seconds, "samples": len(samples)}))


def _spawn(way: str, folder: Path, effort: str, profile: str | None = None) -> float:
    cmd = [sys.executable, __file__, "--child", way, str(folder), "--effort", effort]
    if profile:
        cmd += ["--profile", profile]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"{way} on {folder.name} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet-v2", "minilm", "resnet50"])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="A B pairs per model")
    parser.add_argument("--effort", default="default", help="edgeopt's quant.effort")
    parser.add_argument("--work", help="keep the FP32 models and samples here (reused)")
    parser.add_argument("--profile", help="folder: write a cProfile summary of the "
                                          "first edgeopt run per model there")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.effort, args.profile)
        return
    with tempfile.TemporaryDirectory(prefix="qtime-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        rows = []
        for name in args.models:
            folder = work / name
            if not ((folder / "fp32.onnx").exists() and (folder / "calib.npz").exists()
                    and len(load_samples(folder)) == args.samples):
                print(f"preparing {name} (FP32 ONNX, {args.samples} samples; not timed)",
                      flush=True)
                folder = prepare(name, args.samples, work)
            times: dict[str, list[float]] = {"ort": [], "edgeopt": []}
            for r in range(args.repeats):
                for way in ("ort", "edgeopt"):
                    profile = None
                    if args.profile and way == "edgeopt" and r == 0:
                        Path(args.profile).mkdir(parents=True, exist_ok=True)
                        profile = str(Path(args.profile) / f"{name}.txt")
                    times[way].append(_spawn(way, folder, args.effort, profile))
                    print(f"  {name} {way}: {times[way][-1]:.1f} s", flush=True)
            rows.append((name, times))
    _table(rows, args)


def _table(rows, args) -> None:
    load = os.getloadavg()
    print(f"\nCPU: {cpu_name()} ({os.cpu_count()} logical cores); load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at the end")
    print(f"{args.samples} calibration samples, {args.repeats} interleaved pairs (fresh "
          f"process each), median seconds; edgeopt effort '{args.effort}'\n")
    head = (f"{'model':<14} {'quantize_static s':>18} {'edgeopt s':>10} {'ratio':>6}   "
            "runs (static | edgeopt | ratio per pair)")
    print(head)
    print("-" * len(head))
    for name, t in rows:
        a, b = statistics.median(t["ort"]), statistics.median(t["edgeopt"])
        runs = " | ".join(" ".join(f"{v:.1f}" for v in values) for values in (
            t["ort"], t["edgeopt"], [e / s for s, e in zip(t["ort"], t["edgeopt"], strict=True)]))
        print(f"{name:<14} {a:>18.1f} {b:>10.1f} {b / a:>5.2f}x   {runs}")


if __name__ == "__main__":
    main()
