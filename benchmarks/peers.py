"""edgeopt's INT8 artifacts side by side with the runtimes' own quantization scripts.

For each reference model, from the same FP32 model and the same calibration samples:
  (1) ONNX Runtime's quantize_static after quant_pre_process (QDQ, per-channel, U8S8, MinMax)
  (2) NNCF quantize with its defaults, run in OpenVINO
  (3) edgeopt (minmax), for ONNX Runtime and for OpenVINO
Timing is interleaved: every round runs a burst of each artifact in turn, so machine
noise falls on all of them alike; figures are compared as ratios within this one run.

    python benchmarks/peers.py [--models digits-cnn mobilenet-v2] [--rounds 20] [--burst 25]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def _ov_compiled(path: Path, threads: int):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda feeds: np.array(request.infer(feeds)[compiled.outputs[0]])


def build(name: str, work: Path) -> tuple[object, list[dict]]:
    """FP32 artifacts and edgeopt's INT8 via the pipeline, then the peers from the same FP32."""
    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import edgeopt
    from edgeopt.calibrate.quantize import _Reader
    from edgeopt.reference_models import get_reference

    ref = get_reference(name)
    out = work / name
    edgeopt.optimize(f"ref:{name}", out=out, bench=edgeopt.runtimes.BenchProtocol(
        warmup=0, min_iterations=1, min_seconds=0.0, repeats=1))
    calib = ref.calibration_set()
    fp32_onnx, fp32_xml = out / f"{name}.fp32.onnx", out / f"{name}.fp32.xml"
    prep = work / f"{name}.prep.onnx"
    quant_pre_process(str(fp32_onnx), str(prep), skip_symbolic_shape=True)
    ort_peer = work / f"{name}.ort-quantize_static.onnx"
    quantize_static(str(prep), str(ort_peer), _Reader(calib, None), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    nncf_peer = work / f"{name}.nncf-default.xml"
    core = ov.Core()
    quantized = nncf.quantize(core.read_model(str(fp32_xml)), nncf.Dataset(calib),
                              subset_size=len(calib))
    ov.save_model(quantized, str(nncf_peer), compress_to_fp16=False)
    rows = [
        ("FP32", "onnxruntime", fp32_onnx), ("ORT quantize_static", "onnxruntime", ort_peer),
        ("edgeopt minmax", "onnxruntime", out / f"{name}.int8-ort.onnx"),
        ("FP32", "openvino", fp32_xml), ("NNCF defaults", "openvino", nncf_peer),
        ("edgeopt minmax", "openvino", out / f"{name}.int8-ov.xml"),
    ]
    return ref, [{"what": w, "runtime": r, "path": p} for w, r, p in rows]


def measure(ref, rows: list[dict], rounds: int, burst: int, threads: int) -> None:
    eval_set = ref.evaluation_set()
    feeds = eval_set.inputs[0]
    for row in rows:
        run = (_ort_session if row["runtime"] == "onnxruntime" else _ov_compiled)(row["path"], threads)
        row["run"] = run
        outs = np.concatenate([run(x).reshape(1, -1) for x in eval_set.inputs])
        row["outputs"] = outs
        row["times"] = []
        for _ in range(10):
            run(feeds)
    fp32 = {r["runtime"]: r["outputs"] for r in rows if r["what"] == "FP32"}
    for row in rows:
        row["metric"] = ref.score(row["outputs"], eval_set, fp32[row["runtime"]])
    for _ in range(rounds):                     # interleaved timing
        for row in rows:
            for _ in range(burst):
                start = time.perf_counter()
                row["run"](feeds)
                row["times"].append((time.perf_counter() - start) * 1000)


def table(name: str, ref, rows: list[dict]) -> Table:
    t = Table(title=f"{name}: INT8 side by side (one run, interleaved timing)")
    for col in ("artifact", "runtime", "size KB", "p50 ms", "p90 ms", "speedup vs FP32",
                ref.metric, "edgeopt p50 / peer p50"):
        t.add_column(col, justify="left" if col in {"artifact", "runtime"} else "right")
    p50 = {(r["what"], r["runtime"]): float(np.percentile(r["times"], 50)) for r in rows}
    for r in rows:
        files = [r["path"]] + ([r["path"].with_suffix(".bin")] if r["path"].suffix == ".xml" else [])
        size = sum(f.stat().st_size for f in files)
        mine = p50[(r["what"], r["runtime"])]
        base = p50[("FP32", r["runtime"])]
        peer = "ORT quantize_static" if r["runtime"] == "onnxruntime" else "NNCF defaults"
        ratio = (f"{p50[('edgeopt minmax', r['runtime'])] / mine:.2f}"
                 if r["what"] == peer else "")
        t.add_row(r["what"], r["runtime"], f"{size / 1024:.0f}", f"{mine:.3f}",
                  f"{np.percentile(r['times'], 90):.3f}", f"{base / mine:.2f}x",
                  f"{r['metric']:.4f}", ratio)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits-cnn", "mobilenet-v2"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    console = Console(width=160)
    with tempfile.TemporaryDirectory(prefix="edgeopt-peers-") as tmp:
        for name in args.models:
            ref, rows = build(name, Path(tmp))
            measure(ref, rows, args.rounds, args.burst, args.threads)
            console.print(table(name, ref, rows))


if __name__ == "__main__":
    main()
