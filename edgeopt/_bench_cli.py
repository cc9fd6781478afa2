"""`edgeopt bench MODEL --device ID`: measured latency of one model file on a device.

Needs only a runtime (onnxruntime or openvino), numpy and pyyaml: no torch, no nncf.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgeopt.errors import UsageError

FORMATS = {".onnx": "onnx", ".xml": "openvino-ir"}


def _random_inputs(specs, shapes) -> dict[str, np.ndarray]:
    """Benchmark inputs: values do not change latency for these models, shapes do."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        shape = shapes.get(spec.name) if isinstance(shapes, dict) else shapes
        if shape is None:
            if any(not isinstance(d, int) or d <= 0 for d in spec.shape):
                dims = ",".join(str(d) for d in spec.shape)
                msg = (f"input '{spec.name}' has dynamic shape [{dims}]; "
                       "pass --input-shape with concrete dimensions")
                raise UsageError(msg)
            shape = tuple(spec.shape)
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.integer):
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = np.ones(shape, dtype=bool)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


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


def run_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgeopt._tables import bench_table, console_width
    from edgeopt._targets import resolve_targets
    from edgeopt.runtimes import BenchProtocol, get_adapter

    model = Path(args.model)
    fmt = FORMATS.get(model.suffix.lower())
    if fmt is None:
        msg = f"cannot benchmark '{model}': expected a .onnx or .xml (OpenVINO IR) file"
        raise UsageError(msg)
    if not model.is_file():
        msg = f"cannot benchmark '{model}': no such file"
        raise UsageError(msg)
    if model.stat().st_size == 0:
        msg = f"cannot benchmark '{model}': the file is empty (0 bytes)"
        raise UsageError(msg)
    protocol = BenchProtocol(warmup=args.warmup, min_iterations=args.bench_iterations,
                             min_seconds=args.bench_seconds, repeats=args.bench_repeats,
                             threads=args.threads)
    runtimes = tuple(dict.fromkeys(args.runtimes or ("onnxruntime", "openvino")))
    targets = resolve_targets(tuple(args.devices or ("host-cpu",)), runtimes, fmt)
    console = Console(stderr=True, quiet=args.quiet)
    shapes = _parse_shapes(args.input_shape)
    results = []
    for target in targets:
        adapter = get_adapter(target.adapter)
        availability = adapter.available()
        row = {"device": target.label, "adapter": target.adapter, "runtime": target.runtime,
               "model": str(model)}
        if not availability.ok:
            row["bench"] = {"label": "unavailable", "reason": availability.reason}
            console.print(f"[yellow]{target.label} via {target.adapter}: not available here "
                          f"({availability.reason})[/yellow]")
            results.append(row)
            continue
        loaded = adapter.load(model, target.unit_obj)
        feeds = _random_inputs(loaded.inputs, shapes)
        with console.status(f"benchmarking on {target.label} via {target.adapter}"):
            result = adapter.benchmark(model, feeds, protocol, target.unit_obj)
        row["bench"] = result.to_dict()
        results.append(row)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        Console(width=console_width()).print(bench_table(results))
    measured = [r for r in results if r["bench"].get("label") == "measured"]
    return 0 if measured else 2
