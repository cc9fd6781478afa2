"""INT8 on a CPU whose int8 kernels saturate: edgeopt's guard against the runtimes' own fixes.

On x86-64 with AVX2 but no VNNI, ONNX Runtime's and OpenVINO's U8S8 kernels add each pair
of neighbouring products into a saturating int16 (calibrate/saturation.py). For each
artifact this prints the metric twice: run with the integer kernels on this CPU, and run
with the same quantized values in float arithmetic (ONNX Runtime with graph optimizations
off; OpenVINO with low-precision transformations off), which is what a CPU that does not
saturate (VNNI, ARM) computes up to requantization rounding. Peers: ONNX Runtime's
``quantize_static`` with its defaults, with ``reduce_range`` (7-bit weights) and with uint8
weights (U8U8), the two fixes its documentation suggests; NNCF with its defaults
(``OverflowFix.FIRST_LAYER``) and with ``OverflowFix.ENABLE``. p50 is interleaved within
each runtime, as a ratio to the first row of that runtime.

    python benchmarks/saturation.py [--models mobilenet-v2 minilm] [--rounds 15]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from _timing import fp32_models, interleave, outputs, runner
from rich.console import Console
from rich.table import Table


def cpu_line() -> str:
    import platform

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    vnni = sorted(f for f in flags if "vnni" in f)
    return (f"{platform.machine()}, AVX2 {'yes' if 'avx2' in flags else 'no'}, "
            f"VNNI {', '.join(vnni) if vnni else 'no'}")


def _float_runner(path: Path, runtime: str, threads: int):
    """The artifact's quantized values in float arithmetic (no integer kernels)."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
        "LP_TRANSFORMS_MODE": False})
    return lambda feeds: np.array(compiled(feeds)[compiled.outputs[0]])


def build(name: str, work: Path, console: Console) -> tuple[object, list[tuple]]:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeopt.calibrate import QuantConfig, quantize_for_openvino, quantize_onnx_for_ort
    from edgeopt.calibrate.quantize import CalibrationReader, activation_stats

    ref, fp32_onnx, fp32_xml = fp32_models(name, work / name)
    calib = ref.calibration_set()
    rows = [("FP32", "onnxruntime", fp32_onnx)]
    prep = work / f"{name}.prep.onnx"
    quant_pre_process(str(fp32_onnx), str(prep), skip_symbolic_shape=True)
    for label, reduce, weights in (("ORT quantize_static", False, QuantType.QInt8),
                                   ("ORT quantize_static reduce_range", True, QuantType.QInt8),
                                   ("ORT quantize_static U8U8", False, QuantType.QUInt8)):
        console.log(f"{name}: {label}")
        path = work / f"{name}.ort-{reduce}-{weights.name}.onnx"
        quantize_static(str(prep), str(path), CalibrationReader(calib, None), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=reduce, activation_type=QuantType.QUInt8,
                        weight_type=weights, calibrate_method=CalibrationMethod.MinMax)
        rows.append((label, "onnxruntime", path))
    stats = activation_stats(fp32_onnx, calib)
    for guard in (False, True):
        label = f"edgeopt, guard {'on' if guard else 'off'}"
        console.log(f"{name}: {label} (ONNX Runtime)")
        config = QuantConfig(saturation_guard=guard)
        q = quantize_onnx_for_ort(fp32_onnx, work / f"{name}.edgeopt-{guard}.onnx", calib, config,
                                  stats=stats)
        rows.append((label, "onnxruntime", q.path))
    rows.append(("FP32", "openvino", fp32_xml))
    for label, fix in (("NNCF defaults", None), ("NNCF OverflowFix.ENABLE", OverflowFix.ENABLE)):
        console.log(f"{name}: {label}")
        path = work / f"{name}.nncf-{fix}.xml"
        extra = {"advanced_parameters": AdvancedQuantizationParameters(overflow_fix=fix)} if fix else {}
        model = nncf.quantize(ov.Core().read_model(str(fp32_xml)), nncf.Dataset(calib),
                              subset_size=len(calib), **extra)
        ov.save_model(model, str(path), compress_to_fp16=False)
        rows.append((label, "openvino", path))
    for guard in (False, True):
        label = f"edgeopt, guard {'on' if guard else 'off'}"
        console.log(f"{name}: {label} (OpenVINO)")
        q = quantize_for_openvino(fp32_xml, work / f"{name}.edgeopt-{guard}.xml", calib,
                                  QuantConfig(saturation_guard=guard), stats=stats,
                                  fp32_onnx=fp32_onnx)
        rows.append((label, "openvino", q.path))
    return ref, rows


def measure(name: str, ref, rows: list[tuple], rounds: int, threads: int) -> Table:
    eval_set = ref.evaluation_set()
    fp32 = {rt: outputs(runner(p, rt, threads), eval_set.inputs)
            for what, rt, p in rows if what == "FP32"}
    table = Table(title=f"{name}: INT8 on this CPU ({cpu_line()}), {len(eval_set.inputs)} "
                        f"evaluation inputs")
    for col in ("artifact", "runtime", f"{ref.metric}, int8 kernels",
                f"{ref.metric}, float arithmetic", "p50 ms", "p50 / first of runtime"):
        table.add_column(col, justify="left" if col in {"artifact", "runtime"} else "right")
    for runtime in ("onnxruntime", "openvino"):
        mine = [r for r in rows if r[1] == runtime and r[0] != "FP32"]
        runs = [runner(p, rt, threads) for _, rt, p in mine]
        times, _ = interleave(runs, eval_set.inputs[0], rounds, 20)
        for (what, rt, path), run, t in zip(mine, runs, times, strict=True):
            kernels = ref.score(outputs(run, eval_set.inputs), eval_set, fp32[rt])
            simulated = ref.score(outputs(_float_runner(path, rt, threads), eval_set.inputs),
                                  eval_set, fp32[rt])
            table.add_row(what, rt, f"{kernels:.4f}", f"{simulated:.4f}",
                          f"{np.median(t):.3f}", f"{np.median(t) / np.median(times[0]):.3f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet-v2", "minilm"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    os.environ.setdefault("EDGEOPT_QUIET", "1")
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ref, rows = build(name, Path(tmp), console)
            Console(width=160).print(measure(name, ref, rows, args.rounds, args.threads))


if __name__ == "__main__":
    main()
