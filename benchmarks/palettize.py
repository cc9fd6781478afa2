"""K-means weight palettization on the reference models: size against the metric.

For each model, `edgeopt.optimize` builds the FP32 ONNX and the INT8 artifact for ONNX
Runtime; from the FP32 file, palettized models (4 and 8 bits, one table per output channel
and per group of channels) and the baseline of uniform 4-bit blockwise weights at the same
granularities; from the INT8 file, its int8 codes palettized to 4 bits. Columns: file size,
zipped size (deflate level 9, as a bundle stores it), ratio of the FP32 file to each, and the
model's metric in ONNX Runtime and in OpenVINO (mobilenet-v2: top-1 agreement with FP32 on
the evaluation crops; minilm: Pearson on the Lee corpus, and mean embedding cosine to FP32).

    python benchmarks/palettize.py [--models mobilenet-v2 minilm] [--groups 1 8] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _timing import outputs, runner
from rich.console import Console
from rich.table import Table


@dataclass
class Row:
    what: str
    path: Path
    report: dict = field(default_factory=dict)
    seconds: float = 0.0
    metric: dict = field(default_factory=dict)        # runtime -> value
    extra: dict = field(default_factory=dict)         # runtime -> {name: value}


def _agreement_on_calibration(name: str, fp32: Path, threads: int):
    """evaluate(path) for the accuracy budget: top-1 agreement with FP32 in ONNX Runtime on
    the calibration crops, so the budget is not fitted on the evaluation set."""
    from edgeopt.reference_models import get_reference

    samples = get_reference(name).calibration_set()

    def top1(path: Path) -> np.ndarray:
        run = runner(path, "onnxruntime", threads)
        return outputs(run, samples).argmax(axis=1)

    reference = top1(fp32)
    return lambda path: float(np.mean(top1(path) == reference))


def build(name: str, work: Path, groups: list[int], console: Console, magnitude: bool,
          budget: float | None = None, threads: int = 2) -> tuple[list[Row], Path]:
    import edgeopt
    from edgeopt.calibrate.palettize import palettize_onnx, uniform_blockwise_onnx
    from edgeopt.reference_models import get_reference
    from edgeopt.runtimes import BenchProtocol

    out = work / name
    console.log(f"{name}: FP32 and INT8 (edgeopt optimize)")
    edgeopt.optimize(f"ref:{name}", out=out, runtimes=("onnxruntime",), bench=BenchProtocol(
        warmup=0, min_iterations=1, min_seconds=0.0, repeats=1))
    fp32, int8 = out / f"{name}.fp32.onnx", out / f"{name}.int8-ort.onnx"
    rows = [Row("FP32", fp32), Row("INT8 (ORT QDQ)", int8)]
    jobs = []
    for bits in (4, 8):
        for g in groups:
            jobs.append((f"palettized {bits}-bit, group {g}", palettize_onnx, fp32, bits, g, {}))
    if magnitude:
        jobs.append((f"palettized 4-bit, group {groups[-1]}, w² importance", palettize_onnx,
                     fp32, 4, groups[-1], {"importance": "magnitude"}))
    if budget is not None and get_reference(name).metric == "top1_agreement":
        evaluate = _agreement_on_calibration(name, fp32, threads)
        jobs.append((f"palettized 4-bit, group {groups[-1]}, max drop {budget:g}", palettize_onnx,
                     fp32, 4, groups[-1], {"evaluate": evaluate, "max_accuracy_drop": budget}))
    for g in groups:
        jobs.append((f"uniform 4-bit blockwise, group {g}", uniform_blockwise_onnx, fp32, 4, g, {}))
    jobs.append((f"INT8 + palettized 4-bit codes, group {groups[-1]}", palettize_onnx, int8, 4,
                 groups[-1], {}))
    for what, fn, source, bits, g, kwargs in jobs:
        console.log(f"{name}: {what}")
        path = out / f"{name}.{len(rows)}.onnx"
        start = time.perf_counter()
        report = fn(source, path, bits, g, **kwargs)
        rows.append(Row(what, path, report, time.perf_counter() - start))
    return rows, fp32


def score(name: str, rows: list[Row], threads: int, console: Console) -> None:
    from edgeopt.reference_models import get_reference

    ref = get_reference(name)
    eval_set = ref.evaluation_set()
    for runtime in ("onnxruntime", "openvino"):
        fp32_out = None
        for row in rows:
            try:
                run = runner(row.path, runtime, threads)
            except Exception as e:    # say what failed, keep the other rows
                console.log(f"{name}: {row.what} does not load in {runtime}: {str(e)[:300]}")
                continue
            outs = outputs(run, eval_set.inputs)
            if fp32_out is None:
                fp32_out = outs                          # FP32 is the first row
            row.metric[runtime] = ref.score(outs, eval_set, fp32_out)
            row.extra[runtime] = ref.extra_metrics(outs, fp32_out)


def records(rows: list[Row]) -> list[dict]:
    from edgeopt.calibrate.pruning import deflated_size

    base = rows[0].path.stat().st_size
    out = []
    for r in rows:
        size = r.path.stat().st_size
        layers = r.report.get("layers", [])
        out.append({
            "artifact": r.what, "size_kb": size / 1024,
            "zip_kb": deflated_size([r.path]) / 1024, "ratio": base / size,
            "layers": f"{r.report['palettized_layers']}/{len(layers)}" if layers else "",
            "sqnr": (float(np.median([x["weight_sqnr_db"] for x in layers
                                      if x["weight_sqnr_db"] is not None])) if layers else None),
            "seconds": r.seconds,
            "ort": r.metric.get("onnxruntime"), "ov": r.metric.get("openvino"),
            "cos": r.extra.get("onnxruntime", {}).get("embedding_cosine_to_fp32"),
        })
    return out


def _f(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


COLUMNS = ("artifact", "file KB", "zip KB", "FP32 file / file", "layers palettized",
           "median weight SQNR dB", "build s")


def table(name: str, metric: str, data: list[dict]) -> Table:
    t = Table(title=f"{name}: weight palettization (metric: {metric}, evaluation set)")
    for col in (*COLUMNS, f"{metric} ORT", f"{metric} OV", "cosine to FP32 (ORT)"):
        t.add_column(col, justify="left" if col == "artifact" else "right")
    for r in data:
        t.add_row(r["artifact"], f"{r['size_kb']:.0f}", f"{r['zip_kb']:.0f}", f"{r['ratio']:.2f}x",
                  r["layers"], _f(r["sqnr"], ".1f"), f"{r['seconds']:.1f}" if r["seconds"] else "",
                  _f(r["ort"], ".4f"), _f(r["ov"], ".4f"), _f(r["cos"], ".4f"))
    return t


def markdown(name: str, metric: str, data: list[dict]) -> str:
    head = (f"{name} | file KB | zip KB | FP32 file / file | layers palettized | median weight "
            f"SQNR dB | {metric} ORT | {metric} OV | cosine to FP32")
    lines = [head, "|".join(["---"] * 9)]
    for r in data:
        lines.append(f"{r['artifact']} | {r['size_kb']:.0f} | {r['zip_kb']:.0f} | "
                     f"{r['ratio']:.2f}x | {r['layers'] or '—'} | {_f(r['sqnr'], '.1f')} | "
                     f"{_f(r['ort'], '.4f')} | {_f(r['ov'], '.4f')} | {_f(r['cos'], '.4f')}")
    return "\n".join("| " + line + " |" for line in lines)


def main() -> None:
    from edgeopt.reference_models import get_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet-v2", "minilm"])
    parser.add_argument("--groups", nargs="+", type=int, default=[1, 8],
                        help="output channels per table (a divisor of every layer's channels)")
    parser.add_argument("--magnitude", action="store_true",
                        help="also a row with squared-magnitude k-means importance")
    parser.add_argument("--budget", type=float,
                        help="also a 4-bit row fitted to this top-1 agreement drop (mobilenet)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument("--json", type=Path, help="also write the rows and reports here")
    args = parser.parse_args()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    console = Console(width=220)
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-palettize-") as tmp:
        for name in args.models:
            rows, _ = build(name, Path(tmp), args.groups, console, args.magnitude, args.budget,
                            args.threads)
            score(name, rows, args.threads, console)
            data = records(rows)
            metric = get_reference(name).metric
            results[name] = {"rows": data, "reports": {r.what: r.report for r in rows}}
            console.print(table(name, metric, data))
            for row in rows:
                if "metric_before" in row.report:
                    changed = [f"{x['name']}: {x['bits'] or 'FP32'}" for x in row.report["layers"]
                               if (x["kept_unpalettized"] or "").startswith(("sensitive", "kept"))]
                    console.print(f"{row.what}: calibration-crop agreement "
                                  f"{row.report['metric_after']:.4f} after "
                                  f"{row.report['evaluations']} evaluations; budget met: "
                                  f"{row.report['budget_met']}; more bits or FP32: "
                                  f"{', '.join(changed) or 'none'}")
            if args.markdown:
                console.print(markdown(name, metric, data), soft_wrap=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
