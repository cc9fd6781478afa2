"""`edgeopt bench MODEL --device ID`: latency of one model file on each device target.

Measured where the device is here; estimated from its profile where it is not (or an
error under --require-measured); with --emulate, ARM targets also run under qemu to check
their outputs. Needs only a runtime (onnxruntime or openvino), numpy and pyyaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeopt.errors import UsageError

FORMATS = {".onnx": "onnx", ".xml": "openvino-ir"}


def _parse_shapes(text: str | None):
    if text is None:
        return None
    try:
        if "=" not in text:
            return tuple(int(d) for d in text.split(","))
        return {name.strip(): tuple(int(d) for d in dims.split(","))
                for name, _, dims in (part.partition("=") for part in text.split(";"))}
    except ValueError as e:
        msg = f"--input-shape '{text}' is not a list of integers (e.g. 1,3,224,224)"
        raise UsageError(msg) from e


def _check_model(model: Path) -> str:
    fmt = FORMATS.get(model.suffix.lower())
    if fmt is None:
        msg = (f"cannot benchmark '{model}': expected a .onnx or .xml (OpenVINO IR) file, "
               "or a .zip bundle")
        raise UsageError(msg)
    if not model.is_file():
        msg = f"cannot benchmark '{model}': no such file"
        raise UsageError(msg)
    if model.stat().st_size == 0:
        msg = f"cannot benchmark '{model}': the file is empty (0 bytes)"
        raise UsageError(msg)
    return fmt


def _check_emulation() -> None:
    """Asked for emulation, the user gets it or this error: never an estimate instead."""
    try:
        from edgeopt.runtimes.emulation import emulation_available
    except ImportError as e:
        msg = "--emulate: this install has no emulation support (edgeopt.runtimes.emulation)"
        raise UsageError(msg) from e
    availability = emulation_available()
    if not availability.ok:
        msg = f"--emulate needs the ARM emulation toolchain: {availability.reason}"
        raise UsageError(msg)


def _bench_bundle(args: argparse.Namespace) -> int:
    """An app bundle is benchmarked as `edgeopt verify` does it: its checksums and
    reference outputs are checked first, so a figure is never one of a damaged model."""
    from edgeopt._verify_cli import run_verify

    given = [flag for flag, value in (("--runtime", args.runtimes),
                                      ("--input-shape", args.input_shape),
                                      ("--require-measured", args.require_measured),
                                      ("--emulate", args.emulate)) if value]
    if given:
        msg = (f"{', '.join(given)} do not apply to a bundle ({Path(args.model).name}): its "
               "manifest fixes the model, runtime and shapes; run it on the device itself")
        raise UsageError(msg)
    args.bundle, args.no_bench = args.model, False
    return run_verify(args)


def run_bench(args: argparse.Namespace) -> int:
    from edgeopt._cli_parser import bench_protocol
    from edgeopt._measure import NotMeasured, run_target
    from edgeopt._output import Output
    from edgeopt._targets import resolve_targets
    from edgeopt.backends import runtime_names

    model = Path(args.model)
    if model.suffix.lower() == ".zip":
        return _bench_bundle(args)
    fmt = _check_model(model)
    protocol = bench_protocol(args)
    runtimes = tuple(dict.fromkeys(args.runtimes or runtime_names()))
    targets = resolve_targets(tuple(args.devices or ("host-cpu",)), runtimes, fmt)
    out = Output(quiet=args.quiet)
    for note in targets.notes:
        out.warn(note)
    if args.emulate and not any(getattr(t.unit_obj, "qemu_cpu", None) for t in targets):
        out.warn("--emulate: none of these devices is an ARM CPU with a qemu model in its "
                 "profile (e.g. --device rpi5); nothing to emulate")
    elif args.emulate:
        _check_emulation()
    shapes = _parse_shapes(args.input_shape)
    results, refused = [], []
    for target in targets:
        with out.status(f"{target.label} via {target.adapter}"):
            try:
                row = run_target(target, model, None, protocol, shapes=shapes,
                                 require_measured=args.require_measured, emulate=args.emulate)
            except NotMeasured as e:
                refused.append(str(e))
                row = {"device": target.label, "adapter": target.adapter,
                       "runtime": target.runtime, "model": str(model),
                       "bench": {"label": "unavailable", "reason": str(e)}}
        _warn_row(out, target, row)
        results.append(row)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        out.bench_table(results)
    return _exit_code(results, refused)


def _warn_row(out, target, row: dict) -> None:
    """What the user should know about one target's row, as warnings."""
    if "static_shapes" in row:
        out.warn(row["static_shapes"])
    if row.get("unsupported_ops"):
        out.warn(f"{target.label} via {target.adapter}: {len(row['unsupported_ops'])} "
                 f"operations cannot run on the device: {', '.join(row['unsupported_ops'])}")
    if "unavailable" in row:
        out.warn(f"{target.label} via {target.adapter}: not present here "
                 f"({row['unavailable']})")


def _exit_code(results: list[dict], refused: list[str]) -> int:
    """2: a target refused, or no figure at all; 1: outputs under emulation differ."""
    for line in refused:
        sys.stderr.write(f"edgeopt: error: {line}\n")
    if refused:
        return 2
    emulated_bad = [r for r in results
                    if (r.get("emulation") or {}).get("within_tolerance") is False]
    if emulated_bad:
        for r in emulated_bad:
            sys.stderr.write(f"edgeopt: error: {r['device']}: outputs under emulation differ "
                             "from this machine's beyond tolerance\n")
        return 1
    figures = [r for r in results if r["bench"].get("p50_ms") is not None
               or r.get("emulation", {}).get("label") == "emulated"]
    return 0 if figures else 2
