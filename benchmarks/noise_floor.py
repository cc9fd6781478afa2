"""How much top-1 agreement an INT8 classifier can be asked for: the FP32 model's own noise floor.

Top-1 agreement with FP32 counts every evaluation input alike, but on some inputs FP32's
top two classes are so close that an imperceptible change of the input flips its own
decision. This adds Gaussian noise of half an 8-bit pixel step (in the model's normalized
units: 0.5 / 255 / std per channel) to every evaluation input, in several seeded draws,
and calls an input *stable* when FP32's top-1 survives every draw. It then prints each
artifact's agreement on all inputs, on the stable ones and on the unstable ones, for
edgeopt's INT8 artifacts and the peers (built as ``peers.py`` builds them, same
calibration data). The metric the product reports is still agreement on all inputs.

    python benchmarks/noise_floor.py [--model mobilenet-v2] [--draws 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from _timing import outputs, runner
from peers import build
from rich.console import Console
from rich.table import Table


def noisy_inputs(inputs: list[dict], std: np.ndarray, rng) -> list[dict]:
    """``inputs`` plus Gaussian noise of half an 8-bit pixel step, per channel (NCHW)."""
    sigma = (0.5 / 255 / std).astype(np.float32).reshape(1, -1, 1, 1)
    return [{k: (v + rng.standard_normal(v.shape, dtype=np.float32) * sigma).astype(v.dtype)
             for k, v in x.items()} for x in inputs]


def stable_inputs(fp32_run, inputs: list[dict], std: np.ndarray, draws: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """FP32's top-1 per input, a mask of the inputs whose top-1 survives every noise draw,
    and FP32's agreement with itself in each draw."""
    top = outputs(fp32_run, inputs).argmax(1)
    rng = np.random.default_rng(seed)
    stable = np.ones(len(top), bool)
    per_draw = []
    for _ in range(draws):
        flipped = outputs(fp32_run, noisy_inputs(inputs, std, rng)).argmax(1) != top
        stable &= ~flipped
        per_draw.append(float(1 - flipped.mean()))
    return top, stable, per_draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet-v2")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    os.environ.setdefault("EDGEOPT_QUIET", "1")
    console = Console(stderr=True)
    from edgeopt.reference_models import UnknownReferenceModel, get_reference

    try:
        metric = get_reference(args.model).metric
    except UnknownReferenceModel as e:
        msg = f"error: {e}"
        raise SystemExit(msg) from None
    if metric != "top1_agreement":
        msg = f"error: {args.model} is scored by {metric}; this benchmark is for classifiers"
        raise SystemExit(msg)
    with tempfile.TemporaryDirectory() as tmp:
        ref, rows, _ = build(args.model, Path(tmp), console)
        std = np.asarray(ref.preprocessing["std"], np.float32)
        inputs = ref.evaluation_set().inputs
        fp32_row = next(r for r in rows if r.what == "FP32" and r.runtime == "onnxruntime")
        console.log(f"{args.model}: FP32 under {args.draws} draws of input noise")
        top, stable, per_draw = stable_inputs(runner(fp32_row.path, "onnxruntime", args.threads),
                                              inputs, std, args.draws, args.seed)
        # each artifact against the FP32 model on its own runtime, as peers.py scores them
        tops = {r.runtime: outputs(runner(r.path, r.runtime, args.threads), inputs).argmax(1)
                for r in rows if r.what == "FP32" and r.runtime != "onnxruntime"}
        tops["onnxruntime"] = top
        table = Table(title=f"{args.model}: top-1 agreement with FP32 on {len(top)} evaluation "
                            f"inputs; {int(stable.sum())} stable under {args.draws} draws of "
                            f"half-pixel-step noise")
        for col in ("artifact", "runtime", "all", f"stable ({int(stable.sum())})",
                    f"unstable ({int((~stable).sum())})"):
            table.add_column(col, justify="left" if col in {"artifact", "runtime"} else "right")
        table.add_row("FP32 + noise, mean over draws", "onnxruntime",
                      f"{np.mean(per_draw):.4f}", "1.0000", "—")
        for row in rows:
            if row.what == "FP32":
                continue
            console.log(f"{args.model}: {row.what} ({row.runtime})")
            got = (outputs(runner(row.path, row.runtime, args.threads), inputs).argmax(1)
                   == tops[row.runtime])
            table.add_row(row.what, row.runtime, f"{got.mean():.4f}",
                          f"{got[stable].mean():.4f}",
                          f"{got[~stable].mean():.4f}" if (~stable).any() else "—")
        Console(width=120).print(table)


if __name__ == "__main__":
    main()
