"""edgeopt's INT8 artifacts side by side with the runtimes' own quantization scripts.

For each reference model, from the same FP32 model and the same calibration samples:
  (1) ONNX Runtime's quantize_static after quant_pre_process (QDQ, per-channel, U8S8, MinMax)
  (2) NNCF quantize with its defaults, run in OpenVINO
  (3) edgeopt with each calibrator: mean-minmax (the default), minmax, kmeans
mobilenet-v2 runs on the labelled ImageNet photos when shared/data/imagenet-500 is beside
the repository (calibration on every 4th photo, evaluation on the other 375, top-1 against
the labels and agreement with FP32), else on the bundled-photo crops (it says which).
Timing is interleaved: every round runs a burst of each artifact in turn, so machine noise
falls on all of them alike. Speed is compared as ratios within this one run: the ratio of
the p50s over all rounds, and the median of the per-round ratios (robust to a noisy round).

    python benchmarks/peers.py [--models digits-cnn mobilenet-v2 minilm] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _timing import fp32_models, interleave, outputs, runner
from rich.console import Console
from rich.table import Table

PEER = {"onnxruntime": "ORT quantize_static", "openvino": "NNCF defaults"}
CALIBRATORS = ("mean-minmax", "minmax", "kmeans")
DEFAULT = "mean-minmax"


@dataclass
class Row:
    what: str
    runtime: str
    path: Path
    choices: list[str] = field(default_factory=list)   # what edgeopt's run kept / dropped
    run: object = None
    metric: float = float("nan")
    extra: dict = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)


def _size(path: Path) -> int:
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return sum(f.stat().st_size for f in files)


def _choice(t: dict) -> str:
    """A weighed default, in a few words: ``fp32-stem: dropped (gain -0.0053)``."""
    if "not_weighed" in t:
        return f"{t['choice']}: {'kept' if t['kept'] else 'not built'}"
    return f"{t['choice']}: {'kept' if t['kept'] else 'dropped'} (gain {t['gain']:+.4f})"


def build(name: str, work: Path, console: Console) -> tuple[object, list[Row], dict]:
    """FP32 artifacts via the pipeline, then every INT8 artifact from the same FP32 files."""
    import logging

    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import edgeopt
    from edgeopt.calibrate.calibrators import compute_ranges, sqnr_gain_db
    from edgeopt.calibrate.quantize import CalibrationReader, activation_stats

    logging.getLogger("nncf").setLevel(logging.ERROR)
    ref, fp32_onnx, fp32_xml = fp32_models(name, work / name)
    calib = ref.calibration_set()
    rows = [Row("FP32", "onnxruntime", fp32_onnx), Row("FP32", "openvino", fp32_xml)]

    console.log(f"{name}: ONNX Runtime quantize_static")
    prep = work / f"{name}.prep.onnx"
    quant_pre_process(str(fp32_onnx), str(prep), skip_symbolic_shape=True)
    ort_peer = work / f"{name}.ort-quantize_static.onnx"
    quantize_static(str(prep), str(ort_peer), CalibrationReader(calib, None), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    rows.append(Row(PEER["onnxruntime"], "onnxruntime", ort_peer))

    console.log(f"{name}: NNCF defaults")
    nncf_peer = work / f"{name}.nncf-default.xml"
    quantized = nncf.quantize(ov.Core().read_model(str(fp32_xml)), nncf.Dataset(calib),
                              subset_size=len(calib))
    ov.save_model(quantized, str(nncf_peer), compress_to_fp16=False)
    rows.append(Row(PEER["openvino"], "openvino", nncf_peer))

    stats = activation_stats(fp32_onnx, calib)
    gains = {}
    for calibrator in CALIBRATORS:
        # edgeopt's artifacts as a user gets them: the whole pipeline, its defaults and the
        # choices it weighed on this machine (stem, saturation guard), timing left to here
        console.log(f"{name}: edgeopt {calibrator} (edgeopt.optimize)")
        out = work / f"edgeopt-{calibrator}"
        report = edgeopt.optimize(f"ref:{name}", out=out, overwrite=True, benchmark=False,
                                  calibrator=calibrator)
        for a in report.artifacts:
            if a.precision == "int8":
                rows.append(Row(f"edgeopt {calibrator}", a.runtime, out / a.path,
                                choices=[_choice(t) for t in report.tradeoffs
                                         if t["runtime"] == a.runtime]))
        values = list(sqnr_gain_db(stats, compute_ranges(stats, calibrator)).values())
        gains[calibrator] = (float(np.mean(values)), float(np.min(values)),
                             int(sum(v > 1e-9 for v in values)), len(values))
    return ref, rows, gains


def measure(ref, rows: list[Row], rounds: int, burst: int, threads: int) -> None:
    eval_set = ref.evaluation_set()
    feeds = eval_set.inputs[0]
    for row in rows:
        row.run = runner(row.path, row.runtime, threads)
        outs = outputs(row.run, eval_set.inputs)
        row.outputs = outs
    fp32 = {r.runtime: r.outputs for r in rows if r.what == "FP32"}
    for row in rows:
        row.metric = ref.score(row.outputs, eval_set, fp32[row.runtime])
        extra = getattr(ref, "extra_metrics", None)
        row.extra = dict(extra(row.outputs, fp32[row.runtime])) if callable(extra) else {}
        if eval_set.labels is not None:     # labelled data: agreement beside top-1
            row.extra["agreement"] = float(np.mean(
                row.outputs.reshape(len(row.outputs), -1).argmax(axis=1)
                == fp32[row.runtime].reshape(len(row.outputs), -1).argmax(axis=1)))
    times, round_p50 = interleave([r.run for r in rows], feeds, rounds, burst)
    for row, t, p in zip(rows, times, round_p50, strict=True):
        row.times, row.round_p50 = t, p


def table(name: str, ref, rows: list[Row]) -> Table:
    extra_keys = sorted({k for r in rows for k in r.extra})
    t = Table(title=f"{name}: INT8 side by side (one run, interleaved timing, "
                    f"{len(rows[0].round_p50)} rounds)")
    for col in ("artifact", "runtime", "size KB", "p50 ms", "p90 ms", "vs FP32", ref.metric,
                *extra_keys, "p50 / peer p50", "per-round ratio", "weighed defaults"):
        t.add_column(col, justify="left" if col in {"artifact", "runtime", "weighed defaults"}
                     else "right")
    by = {(r.what, r.runtime): r for r in rows}
    for r in rows:
        p50 = float(np.median(r.times))
        base = float(np.median(by[("FP32", r.runtime)].times))
        peer = by[(PEER[r.runtime], r.runtime)]
        ratio = per_round = ""
        if r.what.startswith("edgeopt"):
            ratio = f"{p50 / float(np.median(peer.times)):.3f}"
            per_round = f"{np.median(np.array(r.round_p50) / np.array(peer.round_p50)):.3f}"
        t.add_row(r.what, r.runtime, f"{_size(r.path) / 1024:.0f}", f"{p50:.3f}",
                  f"{np.percentile(r.times, 90):.3f}", f"{base / p50:.2f}x", f"{r.metric:.4f}",
                  *[f"{r.extra[k]:.4f}" if k in r.extra else "" for k in extra_keys],
                  ratio, per_round, "; ".join(r.choices))
    return t


def gains_table(name: str, gains: dict) -> Table:
    t = Table(title=f"{name}: SQNR of each quantized activation on the calibration data "
                    "(its reservoir sample), against minmax's range")
    for col in ("calibrator", "mean gain dB", "worst tensor dB", "tensors improved"):
        t.add_column(col, justify="left" if col == "calibrator" else "right")
    for calibrator, (mean, worst, improved, total) in gains.items():
        t.add_row(calibrator, f"{mean:+.2f}", f"{worst:+.2f}", f"{improved} / {total}")
    return t


def main() -> None:
    from edgeopt.reference_models import list_references

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=[m for m in ("digits-cnn", "mobilenet-v2", "minilm")
                                 if m in list_references()])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    console = Console(width=200)
    with tempfile.TemporaryDirectory(prefix="edgeopt-peers-") as tmp:
        for name in args.models:
            ref, rows, gains = build(name, Path(tmp), console)
            measure(ref, rows, args.rounds, args.burst, args.threads)
            console.print(f"{name}: {ref.description}")
            console.print(table(name, ref, rows))
            console.print(gains_table(name, gains))


if __name__ == "__main__":
    main()
