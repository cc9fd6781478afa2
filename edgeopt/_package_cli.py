"""`edgeopt package RUN_DIR|MODEL --target T --out bundle.zip`: an app bundle."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

from edgeopt.errors import UsageError, short_reason


def run_package(args: argparse.Namespace) -> int:
    from edgeopt._output import Output
    from edgeopt.package import package_model, package_run

    source = Path(args.source)
    options = {"palettize": args.palettize, "group_size": args.group_size,
               "max_accuracy_drop": args.max_accuracy_drop}
    if args.palettize is not None and not 2 <= args.palettize <= 8:
        msg = f"--palettize {args.palettize}: bits must be 2..8"
        raise UsageError(msg)
    if args.palettize is None and (args.group_size is not None
                                   or args.max_accuracy_drop is not None):
        msg = "--group-size and --max-accuracy-drop apply to --palettize; add --palettize BITS"
        raise UsageError(msg)
    if args.group_size is not None and args.group_size < 1:
        msg = f"--group-size {args.group_size} must be >= 1"
        raise UsageError(msg)
    _check_out(Path(args.out))
    out = Output(quiet=args.quiet)
    # Python libraries (ONNX Runtime's tools, the palettizer) may print: stdout stays the
    # manifest's.
    sink = io.StringIO() if args.quiet else sys.stderr
    with out.status(f"packaging {source} for {args.target}"), contextlib.redirect_stdout(sink), \
            _model_errors(source):
        if source.is_dir():
            manifest = package_run(source, args.target, args.out, precision=args.precision,
                                   **options)
        elif source.is_file():
            if args.precision is not None:
                msg = "--precision picks an artifact of a run folder; a model file is as given"
                raise UsageError(msg)
            manifest = package_model(source, args.target, args.out, **options)
        else:
            hint = (f"; run 'edgeopt optimize {source} --package {args.target}'"
                    if ":" in str(source) else "")
            msg = f"cannot package '{source}': not a run folder or model file{hint}"
            raise UsageError(msg)
    if args.json:
        sys.stdout.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    elif not args.quiet:
        sys.stderr.write(summary(Path(args.out), manifest) + "\n")
    return 0


def _check_out(zip_path: Path) -> None:
    """``--out`` can be written (a probe: root passes every permission check) and is no
    folder; checked before any work."""
    import tempfile

    from edgeopt._outdir import _nearest_existing

    if zip_path.is_dir():
        msg = f"--out {zip_path} is a folder; name the .zip to write"
        raise UsageError(msg)
    base = _nearest_existing(zip_path.parent)
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgeopt-probe-", dir=base)
    except OSError as e:
        msg = f"--out {zip_path} cannot be written ({e.strerror or e}); choose a writable folder"
        raise UsageError(msg) from e
    import os

    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def _model_errors(source: Path):
    """ONNX's and protobuf's refusals of a model file (garbage bytes, external data outside
    the model's folder) are the user's file, not edgeopt's fault: one line, exit 2."""
    try:
        yield
    except Exception as e:
        kind = type(e).__module__ or ""
        if kind.startswith(("onnx", "google.protobuf")) or type(e).__name__ in (
                "DecodeError", "ValidationError"):
            msg = f"cannot package '{source}': not a readable ONNX model ({short_reason(e)})"
            raise UsageError(msg) from e
        raise


def summary(path: Path, manifest: dict) -> str:
    """A few lines on what the bundle holds."""
    model = manifest["model"]
    size = path.stat().st_size
    lines = [f"wrote {path} ({size / 1024:.0f} KB) for {manifest['target']}: {model['file']} "
             f"({model['format']}, {model['precision']}), "
             f"{manifest['reference']['samples']} reference samples"]
    for name, entry in manifest["files"].items():
        lines.append(f"  {name:<40} {entry['size'] / 1024:>9.1f} KB  {entry['sha256'][:16]}")
    for row in manifest.get("latency") or []:
        p50 = row.get("p50_ms")
        figure = f"p50 {p50:.3f} ms" if p50 is not None else row.get("reason", "no figure")
        lines.append(f"  latency {row['device']} ({row.get('adapter')}): {figure} "
                     f"[{row.get('label')}]")
    pal = manifest.get("palettization")
    if pal:
        lines.append(f"  palettized to {pal['bits']} bits"
                     + ("" if pal["evaluated"] else " (not evaluated: " + pal["why_not"] + ")"))
    return "\n".join(lines)
