"""`edgeopt search` on the command line: its flags, and flags -> SearchSettings -> search."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

_DATA = ("input_shape", "calib", "calib_samples", "preprocess", "eval", "eval_samples", "metric")


def add_search_flags(p: argparse.ArgumentParser) -> None:
    """The search's own flags (the model, --recipe, data and benchmark flags are shared)."""
    p.add_argument("--device", action="append", dest="devices", metavar="ID[:UNIT]",
                   help="device to optimize p50 latency on (repeatable; default host-cpu): "
                        "measured where it is here, estimated from its profile elsewhere")
    p.add_argument("--runtime", action="append", dest="runtimes", metavar="RUNTIME",
                   help="runtimes trials may pick (repeatable; default: the space's)")
    p.add_argument("--out", type=Path, required=True,
                   help="search folder: study.db, trials.csv, pareto.json, plots, best/")
    p.add_argument("--trials", type=int, default=16, help="finished trials to reach (default 16)")
    p.add_argument("--space", metavar="FILE",
                   help="search space YAML (default: the model kind's, see docs/search.md)")
    p.add_argument("--sampler", default="nsga2", choices=("nsga2", "tpe", "random", "grid"),
                   help="Optuna sampler: nsga2 (default) or tpe (multi-objective), random or "
                        "grid (small spaces)")
    p.add_argument("--seed", type=int, help="sampler seed (with --latency estimated: the "
                                            "same trials and pareto.json on any executor)")
    p.add_argument("--batch", type=int, default=4,
                   help="trials in flight: trial N is asked once trial N-BATCH is told, and "
                        "Ray builds them as workers free up (default 4; part of what a seed "
                        "reproduces)")
    p.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local (default): trials in this process; ray: builds as parallel "
                        "Ray tasks (pip install 'edgeopt[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="an existing Ray cluster (default: start a local Ray instance)")
    p.add_argument("--work-dir", type=Path,
                   help="trial builds, shared by every Ray worker (default OUT/work)")
    p.add_argument("--latency", default="measured", choices=("measured", "estimated"),
                   help="measured where the device is here, else estimated (default); "
                        "estimated: every figure from the device profiles (deterministic)")
    g = p.add_argument_group("constraints (the chosen recipe in best/ meets them)")
    g.add_argument("--max-accuracy-drop", metavar="X",
                   help="metric drop from the FP32 model: absolute (0.01) or relative (1%%)")
    g.add_argument("--max-latency-ms", action="append", metavar="DEVICE=MS",
                   help="p50 limit on a device, e.g. rpi5=20 (repeatable)")
    g.add_argument("--max-size-mb", type=float, metavar="MB", help="artifact size limit")
    p.add_argument("--resume", action="store_true",
                   help="continue the search in --out (study.db): finished trials are kept")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run_search(args: argparse.Namespace) -> int:
    from edgeopt._cli_parser import BENCH_FLAGS, bench_protocol
    from edgeopt.pipeline import resolve_recipe
    from edgeopt.recipe import Recipe, load_recipe
    from edgeopt.search.run import SearchSettings, search

    base = load_recipe(args.recipe) if args.recipe else Recipe()
    flat = {k: getattr(args, k) for k in _DATA if getattr(args, k, None) is not None}
    for key in ("devices", "runtimes"):
        if getattr(args, key, None):
            flat[key] = tuple(dict.fromkeys(getattr(args, key)))
    if any(getattr(args, flag, None) is not None for flag in BENCH_FLAGS):
        flat["bench"] = bench_protocol(args, base.bench)
    recipe = resolve_recipe(args.model, base, **flat)
    settings = SearchSettings(
        recipe=recipe, out=args.out, trials=args.trials, space=args.space,
        sampler=args.sampler, seed=args.seed, batch=args.batch, executor=args.executor,
        ray_address=args.ray_address, work_dir=args.work_dir, latency=args.latency,
        max_accuracy_drop=args.max_accuracy_drop,
        max_latency_ms=tuple(args.max_latency_ms or ()), max_size_mb=args.max_size_mb,
        resume=args.resume, quiet=args.quiet)
    with _libraries_to_stderr():
        summary = search(settings)
    return 0 if summary["best_trial"] is not None else 3


@contextlib.contextmanager
def _libraries_to_stderr():
    """What libraries print on stdout (NNCF's bars) goes to stderr with the progress."""
    try:
        err = sys.stderr.fileno()
        sys.stdout.flush()
        saved = os.dup(1)
    except (AttributeError, OSError, ValueError):   # captured streams (tests): leave them
        yield
        return
    os.dup2(err, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
