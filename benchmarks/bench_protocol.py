"""The benchmark protocol, old against new: wall time and repeatability of the p50.

For mobilenet-v2 and digits-cnn, FP32 and INT8, on ONNX Runtime and OpenVINO (artifacts
built by ``edgeopt.optimize`` with ``benchmark=False``), each protocol benchmarks each
artifact ``--runs`` times back-to-back, interleaved (every round runs the protocols in a
new order per artifact, so the machine's noise falls on all of them alike):

- ``old``: the fixed protocol edgeopt had (100 runs and 3 s per repeat, 3 repeats);
- ``new``: the default now (adaptive: at least 50 runs and 1 s, then stop once the p50's
  bootstrap 95% interval is within +-2%, cap 3 s; 2 repeats);
- ``new-1``: the same with one repeat (one fresh process), to show what repeats buy.

Printed per artifact and protocol: the mean wall time of one benchmark (fresh processes,
load and warm-up included), the median of the runs' p50s, their spread (max/min - 1), and
how the repeats stopped; then the wall time of the 4 mobilenet-v2 artifacts together (the
benchmark part of ``edgeopt optimize ref:mobilenet-v2``). Timings are this machine's: the
CPU and the load average are printed with them.

    python benchmarks/bench_protocol.py [--runs 3] [--work DIR] [--models mobilenet-v2,digits-cnn]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

PROTOCOLS = {
    "old": dict(warmup=10, min_iterations=100, min_seconds=3.0, max_seconds=60.0, repeats=3,
                ci_pct=0),
    "new": {},
    "new-1": dict(repeats=1),
}


def cpu() -> str:
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx512_vnni", "avx2") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {'+'.join(isa) or 'no avx2'}"


def build(name: str, work: Path) -> list[tuple[str, str, Path]]:
    """(runtime, precision, path) of ``name``'s four artifacts, built without timing."""
    import edgeopt

    out = work / name
    if not (out / "report.json").is_file():
        edgeopt.optimize(f"ref:{name}", out=out, benchmark=False)
    import json

    report = json.loads((out / "report.json").read_text())
    return [(a["runtime"], a["precision"], out / a["path"]) for a in report["artifacts"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="back-to-back runs per protocol")
    parser.add_argument("--work", type=Path, default=None, help="where the artifacts go "
                        "(kept, and reused when there; default a temporary folder)")
    parser.add_argument("--models", default="mobilenet-v2,digits-cnn")
    args = parser.parse_args()

    from edgeopt._measure import random_inputs
    from edgeopt.backends import get_backend
    from edgeopt.runtimes import BenchProtocol, get_adapter

    work = args.work or Path(tempfile.mkdtemp(prefix="edgeopt-bench-protocol-"))
    artifacts = [(name, *a) for name in args.models.split(",") for a in build(name, work)]
    protocols = {k: replace(BenchProtocol(), **v) for k, v in PROTOCOLS.items()}
    load_before = os.getloadavg()
    results: dict[tuple[int, str], list[dict]] = {}
    order = np.random.default_rng(0)
    started = time.time()
    for _ in range(args.runs):
        for i, (_name, runtime, _precision, path) in enumerate(artifacts):
            adapter = get_adapter(get_backend(runtime).host_adapter)
            feeds = random_inputs(adapter.load(path).inputs, None)
            for key in order.permutation(list(protocols)):
                t0 = time.perf_counter()
                data = adapter.benchmark(path, feeds, protocols[key]).to_dict()
                data["wall_s"] = time.perf_counter() - t0
                results.setdefault((i, str(key)), []).append(data)
    load_after = os.getloadavg()

    print(f"CPU: {cpu()}; load average (1 min) {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; {args.runs} runs per protocol, interleaved, "
          f"{(time.time() - started) / 60:.1f} min in all\n")
    print("| model | runtime | prec | protocol | wall s per benchmark | p50 ms (median of runs) "
          "| p50 spread (max/min - 1) | p50 95% CI half-width | stopped (per repeat) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, (name, runtime, precision, _path) in enumerate(artifacts):
        for key in protocols:
            runs = results[(i, key)]
            p50 = np.array([r["p50_ms"] for r in runs])
            half = [100 * (r["p50_ci95_ms"][1] - r["p50_ci95_ms"][0]) / 2 / r["p50_ms"]
                    for r in runs]
            stops = {}
            for r in runs:
                for s in r["repeat_stopped"]:
                    stops[s] = stops.get(s, 0) + 1
            print(f"| {name} | {runtime} | {precision} | {key} | "
                  f"{np.mean([r['wall_s'] for r in runs]):.1f} | {np.median(p50):.3f} | "
                  f"{100 * (p50.max() / p50.min() - 1):.1f}% | ±{np.median(half):.1f}% | "
                  f"{', '.join(f'{s} {n}' for s, n in sorted(stops.items()))} |")
    print("\nBenchmark part for the 4 artifacts of each model (sum of mean wall times):\n")
    print("| model | " + " | ".join(protocols) + " |")
    print("|---|" + "---|" * len(protocols))
    for name in dict.fromkeys(a[0] for a in artifacts):
        sums = [sum(np.mean([r["wall_s"] for r in results[(i, key)]])
                    for i, a in enumerate(artifacts) if a[0] == name) for key in protocols]
        print(f"| {name} | " + " | ".join(f"{s:.1f} s" for s in sums) + " |")


if __name__ == "__main__":
    main()
