"""How far mobilenet-v2's INT8 top-1 agreement moves with the calibration draw.

The same ONNX Runtime quantization is built from several equally valid calibration sets,
overlapping subsets of the reference model's 100 calibration crops: as shipped (the stem
FP32), with the stem quantized too (`--int8-stem`, the default before), and with the first
convolution alone in FP32 (`--keep-first-fp32 --int8-stem`). Each artifact is scored by
top-1 agreement with FP32 on the 300 evaluation crops, and by the mean KL divergence of its
softmax to FP32's there (a steadier figure than agreement on this crop set). The spread is
the noise any single figure on this crop set carries; differences between configurations smaller than it are not
differences. A second table shows why: the evaluation crops are hard, many with FP32's top
two logits close together, and the shipped artifact's flips (all 100 calibration crops)
binned by that margin.

    python benchmarks/int8_spread.py [--subset 90] [--draws 3] [--calibrators minmax,kmeans,mse]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from _timing import ort_runner, outputs
from rich.console import Console
from rich.table import Table

NAME = "mobilenet-v2"


def _kl(reference: np.ndarray, quantized: np.ndarray) -> float:
    """Mean KL divergence of the quantized softmax from the reference softmax."""
    def log_softmax(x):
        x = x.astype(np.float64) - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    p = log_softmax(reference)
    return float(np.mean(np.sum(np.exp(p) * (p - log_softmax(quantized)), axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=90, help="calibration crops per draw")
    parser.add_argument("--draws", type=int, default=3, help="subsets, each shifted by 5 crops")
    parser.add_argument("--calibrators", default="",
                        help="comma-separated calibrators to add as columns (e.g. minmax,kmeans)")
    args = parser.parse_args()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    os.environ.setdefault("EDGEOPT_QUIET", "1")
    from edgeopt.calibrate import QuantConfig, quantize_onnx_for_ort
    from edgeopt.calibrate.calibrators import CALIBRATORS
    from edgeopt.convert import export_onnx
    from edgeopt.reference_models import get_reference

    console = Console(stderr=True)
    reference = get_reference(NAME)
    inputs = reference.evaluation_set().inputs
    calib = reference.calibration_set()
    if args.subset + 5 * (args.draws - 1) > len(calib):
        parser.error(f"{args.draws} draws of {args.subset} need more than the {len(calib)} "
                     "calibration crops")
    configs = {"shipped": QuantConfig(), "--int8-stem": QuantConfig(fp32_stem=False),
               "--keep-first-fp32 --int8-stem": QuantConfig(keep_first_fp32=True, fp32_stem=False)}
    for calibrator in filter(None, args.calibrators.split(",")):
        if calibrator not in CALIBRATORS:
            parser.error(f"unknown calibrator '{calibrator}' (known: {', '.join(CALIBRATORS)})")
        configs[f"--calibrator {calibrator}"] = QuantConfig(calibrator=calibrator)
    draws = [(f"crops {lo}-{lo + args.subset - 1}", calib[lo:lo + args.subset])
             for lo in range(0, 5 * args.draws, 5)]
    draws.append((f"all {len(calib)} (as shipped)", calib))
    scores: dict[str, list[float]] = {name: [] for name in configs}
    kls: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / f"{NAME}.fp32.onnx"
        export_onnx(reference.build(), (torch.zeros(reference.input_shape),), fp32,
                    input_names=(reference.input_name,))

        def logits(path: Path) -> np.ndarray:
            return outputs(ort_runner(path, 2), inputs)

        reference_logits = logits(fp32)
        truth = reference_logits.argmax(axis=1)
        for what, samples in draws:
            for name, config in configs.items():
                console.log(f"{name}, calibrated on {what}")
                q = quantize_onnx_for_ort(fp32, Path(tmp) / "int8.onnx", samples, config)
                quantized = logits(q.path)
                flipped = quantized.argmax(axis=1) != truth
                scores[name].append(float(1 - flipped.mean()))
                kls[name].append(_kl(reference_logits, quantized))
                if name == "shipped" and samples is calib:
                    shipped_flips = flipped
                    worst_error = np.abs(quantized - reference_logits).max(axis=1)
    table = Table(title=f"{NAME}: ONNX Runtime INT8 top-1 agreement / KL to FP32 on "
                        f"{len(inputs)} evaluation crops, by calibration draw")
    table.add_column("calibration")
    for name in configs:
        table.add_column(name, justify="right")
    for i, (what, _samples) in enumerate(draws):
        table.add_row(what, *(f"{scores[name][i]:.4f} / {kls[name][i]:.4f}" for name in configs))
    table.add_row("mean (std)", *(f"{np.mean(v):.4f} ({np.std(v):.4f}) / {np.mean(kls[name]):.4f}"
                                  for name, v in scores.items()))
    Console(width=160).print(table)

    top2 = np.sort(reference_logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    bins = Table(title="FP32 top-1 minus top-2 logit, and the shipped INT8 artifact's flips")
    for column in ("FP32 margin", "crops", "flipped"):
        bins.add_column(column, justify="right")
    edges = [0.0, 0.1, 0.25, 0.5, 1.0, np.inf]
    for lo, hi in zip(edges, edges[1:], strict=False):
        inside = (margin >= lo) & (margin < hi)
        bins.add_row(f"{lo:g} - {hi:g}", str(int(inside.sum())), str(int(shipped_flips[inside].sum())))
    Console(width=160).print(bins)
    q1, q2, q3 = np.quantile(worst_error, [0.25, 0.5, 0.75])
    print(f"shipped INT8, largest logit error per crop: quartiles {q1:.3f} / {q2:.3f} / {q3:.3f}")


if __name__ == "__main__":
    main()
