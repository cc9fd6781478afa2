"""The evaluation passes one sample at a time vs ``run_many`` (runtimes/_many.py).

Takes the artifacts of an ``edgeopt optimize`` run (its ``--out`` folder) and the model's
held-out evaluation inputs (as the pipeline prepares them: for ``ref:NAME``, the labelled
photos or texts of the reference set), and runs every artifact over all of them both
ways, interleaved round after round on its host adapter (ort-cpu for ``.onnx``, ov-cpu for
``.xml``). Prints each way's median seconds, their ratio, and whether the two ways gave
bit-identical outputs (so the same accuracy figures).

    EDGEOPT_IMAGENET_DIR=... python benchmarks/eval_passes.py --model ref:mobilenet-v2 \\
        --run-dir OUT [--calib-samples 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from _timing import cpu_name
from rich.console import Console
from rich.table import Table


def one_at_a_time(loaded, inputs) -> list:
    return [loaded.run(feeds) for feeds in inputs]


def many(loaded, inputs) -> list:
    from edgeopt._outputs import run_spilled

    return list(run_spilled(loaded, inputs))


def same(a: list, b: list) -> bool:
    return all(np.array_equal(x, y) for sa, sb in zip(a, b, strict=True)
               for x, y in zip(sa, sb, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ref:mobilenet-v2")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--calib-samples", type=int, default=100)    # as the run had
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from edgeopt._source import load_source, prepare
    from edgeopt.pipeline import resolve_recipe
    from edgeopt.runtimes import get_adapter
    from edgeopt.runtimes._many import workers

    recipe = resolve_recipe(args.model, calib_samples=args.calib_samples)
    inputs = prepare(recipe, load_source(recipe)).eval_inputs
    files = sorted(args.run_dir.glob("*.onnx")) + sorted(args.run_dir.glob("*.xml"))
    loaded = {f: get_adapter("ort-cpu" if f.suffix == ".onnx" else "ov-cpu").load(f)
              for f in files}
    ways = {"one at a time": one_at_a_time, "run_many": many}
    seconds = {(f, w): [] for f in files for w in ways}
    identical = {}
    rng = np.random.default_rng(0)
    for _ in range(args.rounds):
        for f in rng.permutation(len(files)):
            runs = {}
            for w in rng.permutation(list(ways)):
                start = time.perf_counter()
                runs[w] = ways[w](loaded[files[f]], inputs)
                seconds[files[f], w].append(time.perf_counter() - start)
            identical[files[f]] = identical.get(files[f], True) and same(*runs.values())

    table = Table(title=f"{args.model}: {len(inputs)} evaluation samples, {args.rounds} "
                        f"interleaved rounds, {workers()} workers; {cpu_name()}, "
                        f"load average {os.getloadavg()[0]:.2f}")
    table.add_column("artifact", no_wrap=True)
    for column in ("one at a time s", "run_many s", "ratio", "outputs identical"):
        table.add_column(column)
    for f in files:
        a, b = (statistics.median(seconds[f, w]) for w in ways)
        table.add_row(f.name, f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}", str(identical[f]))
    Console().print(table)


if __name__ == "__main__":
    main()
