"""`edgeopt search`'s build phase on the local executor against Ray, on this machine.

The same search (digits-cnn, host-cpu, estimated latency, fixed seed, 16 trials by default)
runs with ``--executor local`` and ``--executor ray``, alternating, each in a child process
with its own empty step cache, so no build is reused from another run. For each it prints
the build phase (the seconds spent building trials, from search.json) and whether the two
pareto.json files are byte-identical. For local builds it also prints the cores they kept
busy on average (their CPU seconds over the build phase's wall time): builds in parallel
on N cores can be at most N / that times faster, so this is the ceiling of Ray's speedup
here, whatever the executor does. For Ray it prints how many builds ran at once on average
(the trials' build seconds over the build phase). Both runs estimate latency from one host
basis, measured by the first (each has its own step cache, but two measurements of the
host's bandwidth would make every estimate, and pareto.json, differ).

    python benchmarks/search_executors.py [--trials 16] [--rounds 1] [--model ref:digits-cnn]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import cpu_name
from rich.console import Console
from rich.table import Table

BASIS = "search-host-basis.json"


def run(executor: str, model: str, trials: int, folder: Path) -> dict:
    out, cache = folder / executor, folder / f"cache-{executor}"
    env = {**os.environ, "EDGEOPT_CACHE_DIR": str(cache)}
    # Both runs estimate from one host basis (the first run measures it): two measurements
    # of the host's bandwidth under load differ, and so would every estimate.
    basis = folder / BASIS
    if basis.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(basis, cache / BASIS)
    argv = [sys.executable, "-m", "edgeopt", "search", model, "--device", "host-cpu",
            "--trials", str(trials), "--seed", "0", "--latency", "estimated",
            "--executor", executor, "--out", str(out), "--work-dir", str(folder / f"w-{executor}")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        msg = f"{executor} search failed: {last}"
        raise SystemExit(msg)
    if not basis.is_file():
        shutil.copyfile(cache / BASIS, basis)
    summary = json.loads((out / "search.json").read_text())
    with (out / "trials.csv").open(newline="") as f:
        summary["trial_build_s"] = sum(float(r["build_s"] or 0) for r in csv.DictReader(f))
    summary["pareto_bytes"] = (out / "pareto.json").read_bytes()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ref:digits-cnn")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    console = Console()
    cores = os.cpu_count() or 1
    console.print(f"CPU: {cpu_name()}, {cores} cores; {args.model}, {args.trials} trials, "
                  f"estimated latency, seed 0; load average {os.getloadavg()[0]:.1f} at start")
    table = Table(title="build phase, local vs ray (alternating, fresh caches)")
    for col in ("round", "local s", "local cores busy", "ceiling on N cores", "ray s",
                "ray builds at once", "local / ray", "pareto.json identical"):
        table.add_column(col, justify="right")
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="edgeopt-executors-") as tmp:
            order = ("local", "ray") if r % 2 == 0 else ("ray", "local")
            got = {ex: run(ex, args.model, args.trials, Path(tmp)) for ex in order}
        local, ray = got["local"], got["ray"]
        busy = local.get("build_cores_in_use")
        table.add_row(str(r + 1), f"{local['build_phase_s']:.1f}",
                      f"{busy:.2f}" if busy else "?",
                      f"{cores / busy:.2f}x" if busy else "?", f"{ray['build_phase_s']:.1f}",
                      f"{ray['trial_build_s'] / ray['build_phase_s']:.2f}",
                      f"{local['build_phase_s'] / ray['build_phase_s']:.2f}x",
                      "yes" if local["pareto_bytes"] == ray["pareto_bytes"] else "NO")
    console.print(table)
    console.print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
