"""Quantization-aware fine-tuning (`--qat-epochs`) against post-training INT8 on mobilenet-v2.

`edgeopt.optimize` builds the FP32 ONNX and the post-training INT8 artifact for ONNX
Runtime; from the same FP32 file, INT8 artifacts fine-tuned for `--epochs` epochs (int8
weights only, and weights with the activation scales) on the reference model's fine-tuning
crops, as `edgeopt optimize --qat-epochs N` does. A third fine-tuned artifact is trained
only on crops of the photos not named by `--hold-out` (the evaluation crops come from the
same eight photos as the training crops; this row shows what the fine-tuning does on
photos it never saw). Columns, on the 300 evaluation crops (disjoint from calibration and
fine-tuning crops): top-1 agreement with FP32 (all crops, and the held-out photos' crops),
mean KL of the INT8 softmax to FP32's, logit SQNR, and p50 in ONNX Runtime, interleaved in
one run, as a ratio of the post-training artifact's.

    python benchmarks/qat.py [--epochs 6] [--hold-out china flower] [--rounds 20]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import interleave, runner
from _timing import outputs as stacked
from rich.console import Console
from rich.table import Table

NAME = "mobilenet-v2"


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def build(work: Path, epochs: int, hold_out: list[str], console: Console) -> list[tuple]:
    import edgeopt
    from edgeopt.calibrate.quantize import QuantConfig, quantize_onnx_for_ort
    from edgeopt.reference_models import get_reference
    from edgeopt.reference_models import mobilenet_v2 as m
    from edgeopt.runtimes import BenchProtocol

    console.log("FP32 and post-training INT8 (edgeopt optimize)")
    edgeopt.optimize(f"ref:{NAME}", out=work, runtimes=("onnxruntime",), bench=BenchProtocol(
        warmup=0, min_iterations=1, min_seconds=0.0, repeats=1))
    fp32, ptq = work / f"{NAME}.fp32.onnx", work / f"{NAME}.int8-ort.onnx"
    ref = get_reference(NAME)
    calib = ref.calibration_set()
    tune, _labels = ref.finetune_set()
    names = m.photo_names()
    held = [names.index(h) for h in hold_out]
    kept = [s for s, p in zip(tune, m.crop_photos(len(tune), m.FINETUNE_SEED), strict=True)
            if p not in held]
    rows = [("FP32", fp32, 0.0, ""), ("post-training INT8 (default)", ptq, 0.0, "")]
    jobs = [(f"QAT {epochs} epochs, int8 weights", tune, False),
            (f"QAT {epochs} epochs, weights + activation scales", tune, True),
            (f"QAT {epochs} epochs, weights + scales, without {'/'.join(hold_out)}", kept, True)]
    for what, samples, ranges in jobs:
        console.log(f"{what} ({len(samples)} crops)")
        path = work / f"{NAME}.qat{len(rows)}.onnx"
        start = time.perf_counter()
        q = quantize_onnx_for_ort(fp32, path, calib,
                                  QuantConfig(qat_epochs=epochs, qat_ranges=ranges),
                                  qat_samples=samples, qat_note="the fine-tuning crops")
        note = next(n for n in q.notes if n.startswith("quantization-aware"))
        rows.append((what, path, time.perf_counter() - start, note))
    return rows


def score(rows: list[tuple], hold_out: list[str], rounds: int, threads: int) -> list[dict]:
    from edgeopt.reference_models import get_reference
    from edgeopt.reference_models import mobilenet_v2 as m

    eval_set = get_reference(NAME).evaluation_set()
    photos = m.crop_photos(len(eval_set.inputs), m.EVAL_SEED)
    held = np.isin(photos, [m.photo_names().index(h) for h in hold_out])
    outputs = []
    for _what, path, _s, _n in rows:
        run = runner(path, "onnxruntime", threads)
        outputs.append(stacked(run, eval_set.inputs))
    fp32 = outputs[0]
    p = np.exp(_log_softmax(fp32))
    runs = [runner(path, "onnxruntime", threads) for _w, path, _s, _n in rows]
    _times, round_p50 = interleave(runs, eval_set.inputs[0], rounds=rounds, burst=10)
    p50 = [float(np.median(r)) for r in round_p50]
    out = []
    for (what, _path, seconds, note), y, t in zip(rows, outputs, p50, strict=True):
        same = y.argmax(axis=1) == fp32.argmax(axis=1)
        kl = float((p * (_log_softmax(fp32) - _log_softmax(y))).sum(axis=1).mean())
        noise = float(((fp32 - y) ** 2).sum())
        out.append({"artifact": what, "agreement": float(same.mean()),
                    "agreement_held_out": float(same[held].mean()), "held_out_n": int(held.sum()),
                    "kl": kl, "sqnr_db": 10 * np.log10((fp32 ** 2).sum() / noise) if noise else None,
                    "p50_ms": t, "p50_vs_ptq": t / p50[1], "build_s": seconds, "note": note})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hold-out", nargs="+", default=["china", "flower"],
                        help="photos the third fine-tuned artifact never trains on")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="write the artifacts here, not a temp dir")
    args = parser.parse_args()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    os.environ.setdefault("EDGEOPT_QUIET", "1")
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        rows = build(work, args.epochs, args.hold_out, console)
        records = score(rows, args.hold_out, args.rounds, args.threads)
    held_n = records[0]["held_out_n"]
    table = Table(title=f"{NAME}: post-training INT8 vs quantization-aware fine-tuning, "
                        f"ONNX Runtime CPU, {args.threads} threads, 300 evaluation crops")
    for col in ("artifact", "top-1 agreement", f"on {'/'.join(args.hold_out)} ({held_n})",
                "KL to FP32", "logit SQNR dB", "p50 ms", "p50 / post-training", "build s"):
        table.add_column(col, justify="left" if col == "artifact" else "right")
    for r in records:
        table.add_row(r["artifact"], f"{r['agreement']:.4f}", f"{r['agreement_held_out']:.4f}",
                      f"{r['kl']:.4f}", "—" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}",
                      f"{r['p50_ms']:.3f}", f"{r['p50_vs_ptq']:.3f}", f"{r['build_s']:.0f}")
    Console(width=200).print(table)
    for r in records[2:]:
        Console(width=200).print(f"{r['artifact']}: {r['note']}")


if __name__ == "__main__":
    main()
