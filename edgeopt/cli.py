"""The `edgeopt` command line: optimize, prune, search, bench, devices, package, verify.

A user's mistake prints one line and exits 2; an internal failure exits 1; --debug adds
the traceback above that line and keeps the exit code. Human output goes to stderr, so `--json` keeps stdout clean.
``optimize`` and ``prune`` build a Recipe (flags override ``--recipe FILE``) and call the
same Python API the tests call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from edgeopt._cli_parser import BENCH_FLAGS, EXIT_USER_ERROR, bench_protocol, build_parser
from edgeopt.runtimes.errors import short_reason

__all__ = ["EXIT_INTERNAL", "EXIT_USER_ERROR", "bench_protocol", "build_parser", "main"]

EXIT_INTERNAL = 1
BUDGET_EXIT = 3                 # the run finished, but the accuracy budget was not met


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from edgeopt._outdir import process_temp
    from edgeopt.errors import user_errors

    # --debug adds the traceback before the same one line, and the same exit code
    try:
        with process_temp():
            return _dispatch(args)
    except user_errors() as e:
        _traceback(args.debug)
        sys.stderr.write(f"edgeopt: error: {_disk_full(e) or e}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("edgeopt: interrupted; nothing was left under a final name\n")
        return 130
    except Exception as e:
        _traceback(args.debug)
        line = _known_failure(e)
        if line:
            sys.stderr.write(f"edgeopt: error: {line}\n")
            return EXIT_USER_ERROR
        hint = "" if args.debug else " (rerun with --debug for the traceback)"
        sys.stderr.write(f"edgeopt: internal error: {type(e).__name__}: {short_reason(e)}"
                         f"{hint}\n")
        return EXIT_INTERNAL


def _traceback(debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _disk_full(error: BaseException) -> str | None:
    """A full disk anywhere in the error's chain, named as such (libraries say it their own
    way, or not at all)."""
    import errno

    for e in _chain(error):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            where = e.filename or "the output"
            return f"no space left on device writing {where}; free some space and rerun"
    return None


def _known_failure(error: BaseException) -> str | None:
    """A failure of the machine or of a file, not of edgeopt: one line, exit 2.

    A full disk anywhere in a step is named as such; other OS errors (a read-only or
    vanished folder) say which file and why.
    """
    full = _disk_full(error)
    if full:
        return full
    for e in _chain(error):
        if isinstance(e, MemoryError):
            return (f"out of memory ({short_reason(e) if str(e) else 'MemoryError'}); use "
                    "smaller inputs or fewer samples")
        if isinstance(e, OSError):
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            return f"{short_reason(e)}{where}" if not where or str(e.filename) not in str(e) \
                else short_reason(e)
    return None


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "optimize":
        return _optimize(args)
    if args.command == "prune":
        return _prune(args)
    if args.command == "bench":
        from edgeopt._bench_cli import run_bench

        return run_bench(args)
    if args.command == "run":
        from edgeopt._run_cli import run_model

        return run_model(args)
    if args.command == "search":
        from edgeopt.search._cli import run_search

        return run_search(args)
    if args.command == "package":
        from edgeopt._package_cli import run_package

        return run_package(args)
    if args.command == "verify":
        from edgeopt._verify_cli import run_verify

        return run_verify(args)
    if args.command == "devices" and args.devices_command == "calibrate":
        from edgeopt._calibrate_cli import run_calibrate

        return run_calibrate(args)
    from edgeopt._devices_cli import run_devices

    return run_devices(args)


# ------------------------------------------------------------------- flags -> recipe

_PRUNE = {"prune_mode": "mode", "prune_ratio": "ratio", "prune_importance": "importance",
          "finetune_data": "finetune_data", "epochs": "epochs", "lr": "lr",
          "weight_decay": "weight_decay", "batch_size": "batch_size"}
_DATA = ("name", "input_shape", "calib", "calib_samples", "preprocess", "eval", "eval_samples",
         "metric")
_OPTIMIZE = ("calibrator", "max_accuracy_drop", "max_fp32_nodes", "keep_first_fp32", "qat_epochs",
          "effort", "ov_int8", "palettize", "group_size", "require_measured", "cache_dir")
_NEGATED = {"int8_stem": "fp32_stem", "no_saturation_guard": "saturation_guard",
            "no_quantize": "quantize", "no_bench": "benchmark", "no_cache": "cache"}


def _prune_recipe(args: argparse.Namespace, base):
    """The recipe's prune section, with the given prune flags over ``base``."""
    from dataclasses import replace

    from edgeopt.errors import UsageError
    from edgeopt.recipe import PruneRecipe

    given = {field: getattr(args, flag) for flag, field in _PRUNE.items()
             if getattr(args, flag) is not None}
    if args.prune_ignore:
        given["ignore"] = tuple(n.strip() for item in args.prune_ignore
                                for n in item.split(",") if n.strip())
    if base is None and "mode" not in given:
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f, v in _PRUNE.items()
                              if v in given) or "--prune-ignore"
            msg = f"{flags} needs --prune-mode (magnitude-global, channels, ...)"
            raise UsageError(msg)
        return None
    return replace(base, **given) if base is not None else PruneRecipe(**given)


def _recipe(args: argparse.Namespace, *, keys: tuple[str, ...]):
    """``--recipe FILE`` (or the defaults), then every flag the user gave."""
    from edgeopt.pipeline import resolve_recipe
    from edgeopt.recipe import Recipe, load_recipe

    base = load_recipe(args.recipe) if args.recipe else Recipe()
    flat = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    flat.update({new: False for old, new in _NEGATED.items() if getattr(args, old, None)})
    for key in ("devices", "runtimes", "packages"):
        if getattr(args, key, None):
            flat[key] = tuple(dict.fromkeys(getattr(args, key)))
    flat["prune"] = _prune_recipe(args, base.prune)
    if any(getattr(args, flag, None) is not None for flag in BENCH_FLAGS):
        flat["bench"] = bench_protocol(args, base.bench)
    return resolve_recipe(args.model, base, **flat)


@contextlib.contextmanager
def _stdout_to_stderr(quiet: bool = False):
    """Library output (NNCF's progress bars, ONNX Runtime's quantizer) goes to stderr, so
    stdout stays the report's; with --quiet it goes nowhere."""
    sys.stdout.flush()
    saved = os.dup(1)
    sink = open(os.devnull, "w") if quiet else sys.stderr  # noqa: SIM115
    try:
        os.dup2(sink.fileno(), 1)
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if quiet:
            sink.close()


# ---------------------------------------------------------------------------- commands

def _optimize(args: argparse.Namespace) -> int:
    from edgeopt._progress import Steps
    from edgeopt.pipeline import default_out, optimize

    recipe = _recipe(args, keys=_DATA + _OPTIMIZE)
    out = args.out or default_out(recipe)
    steps = Steps(quiet=args.quiet)
    # Libraries (NNCF, ONNX Runtime's quantizer) print to stdout; with --json, stdout is
    # the report's alone, so everything else goes to stderr while the pipeline runs.
    with _stdout_to_stderr(args.quiet):
        report = optimize(recipe=recipe, out=out, steps=steps, overwrite=args.overwrite)
    data = report.to_dict()
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        from rich.console import Console

        from edgeopt._tables import artifacts_table, console_width

        console = Console(width=console_width())
        console.print(artifacts_table(data, console.width))
        steps.console.print(f"wrote {out}/report.json, report.md and recipe.yaml")
    budget = data.get("accuracy_budget")
    if budget and not budget["met"]:
        over = ", ".join(f"{rt} drop {b['drop']:.4f}" for rt, b in budget["runtimes"].items()
                         if not b["met"])
        sys.stderr.write(f"edgeopt: error: accuracy budget --max-accuracy-drop "
                         f"{recipe.quant.max_accuracy_drop} not met ({over} > allowed "
                         f"{budget['allowed_drop']:.4f} with {budget['stopped']})\n")
        return BUDGET_EXIT
    return 0


def _prune(args: argparse.Namespace) -> int:
    from edgeopt._progress import Steps
    from edgeopt.pruning import default_out, prune

    recipe = _recipe(args, keys=_DATA)
    out = args.out or default_out(recipe)
    steps = Steps(quiet=args.quiet or _rank() != 0)
    with _stdout_to_stderr(args.quiet):
        report = prune(recipe=recipe, out=out, steps=steps, overwrite=args.overwrite)
    if report is None:                  # a DDP rank other than 0: rank 0 reports
        return 0
    data = report.to_dict()
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        p = data["pruning"]
        onnx_art = data["artifacts"][0]
        steps.console.print(
            f"{onnx_art['path']}: MACs {p['macs_ratio']:.3f}x, params {p['params_ratio']:.3f}x, "
            f"zeros {p['artifact']['sparsity']:.1%}, {onnx_art['size_bytes'] / 1024:.0f} KB "
            f"({onnx_art['size_zipped_bytes'] / 1024:.0f} KB zipped), {p['metric']} "
            f"{onnx_art['accuracy']['value']:.4f}")
        steps.console.print(f"wrote {out}/report.json, report.md and recipe.yaml")
    return 0


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)
