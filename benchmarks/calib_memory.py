"""Peak memory of calibration: edgeopt's statistics vs ONNX Runtime's calibrator.

edgeopt keeps, per tensor, exact min/max, per-sample sums and a fixed-size reservoir, and
reads samples one at a time; ONNX Runtime's MinMax calibrator (what quantize_static runs)
keeps every intermediate output of every sample until it computes the ranges. Each
measurement runs in a fresh process and reports that process's peak RSS (VmHWM) and its
growth over the RSS just before calibration starts (model and runtime loaded, no samples).

    python benchmarks/calib_memory.py [--model minilm] [--samples 100 1000]

Samples are the model's calibration set, cycled when more are asked than it holds: memory
depends on how many samples pass, not on which. The set comes as edgeopt keeps it (decoded
once, on disk, read back one sample at a time: calibrate/spill.py), for both calibrators.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _samples(model: str, n: int):
    from edgeopt.reference_models import get_reference

    ref = get_reference(model)
    base = ref.calibration_set(min(n, ref._max_calib or n))
    return islice(cycle(base), n), len(base)


def child(way: str, model: str, onnx_path: str, n: int) -> None:
    """One measurement, in this (fresh) process; prints a JSON line."""
    import onnxruntime  # noqa: F401  (loaded before the baseline, like the model)

    samples, held = _samples(model, n)
    before = _vm("VmRSS")
    start = time.perf_counter()
    if way == "edgeopt":
        from edgeopt.calibrate.stats import collect_stats

        collect_stats(Path(onnx_path), samples, total=n)
    else:
        from onnxruntime.quantization import CalibrationMethod, create_calibrator

        class Reader:
            def __init__(self, it):
                self.it = iter(it)

            def get_next(self):
                return next(self.it, None)

        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(Path(onnx_path), None,
                                           augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                           calibrate_method=CalibrationMethod.MinMax)
            calibrator.collect_data(Reader(samples))
            calibrator.compute_data()
    seconds = time.perf_counter() - start
    print(json.dumps({"way": way, "n": n, "held": held, "before_mb": before,
                      "peak_mb": _vm("VmHWM"), "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--child", nargs=3, metavar=("WAY", "ONNX", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, onnx_path, n = args.child
        child(way, args.model, onnx_path, int(n))
        return

    import edgeopt

    console = Console(width=160)
    with tempfile.TemporaryDirectory(prefix="edgeopt-mem-") as tmp:
        out = Path(tmp) / "fp32"
        edgeopt.optimize(f"ref:{args.model}", out=out, quantize=False, runtimes=("onnxruntime",),
                         bench=edgeopt.runtimes.BenchProtocol(warmup=0, min_iterations=1,
                                                              min_seconds=0.0, repeats=1))
        onnx_path = out / f"{args.model}.fp32.onnx"
        results = []
        for n in args.samples:
            for way in ("edgeopt", "onnxruntime"):
                console.log(f"{way}: {n} samples")
                done = subprocess.run([sys.executable, __file__, "--model", args.model,
                                       "--child", way, str(onnx_path), str(n)],
                                      capture_output=True, text=True, check=True)
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    held = sorted({r["held"] for r in results})
    t = Table(title=f"{args.model}: calibration peak memory (fresh process each; at most "
                    f"{held[-1]} distinct samples, cycled beyond)")
    for col in ("calibration", "samples", "RSS before MB", "peak RSS MB", "growth MB", "seconds"):
        t.add_column(col, justify="left" if col == "calibration" else "right")
    for r in results:
        name = "edgeopt collect_stats" if r["way"] == "edgeopt" else "ONNX Runtime MinMax calibrator"
        t.add_row(name, str(r["n"]), f"{r['before_mb']:.0f}", f"{r['peak_mb']:.0f}",
                  f"{r['peak_mb'] - r['before_mb']:.0f}", f"{r['seconds']:.1f}")
    console.print(t)


if __name__ == "__main__":
    main()
