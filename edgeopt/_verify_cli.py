"""`edgeopt verify bundle.zip [--device ID]`: prove a bundle on the device it will run on.

1. the zip is checked before anything is extracted (paths, links, duplicates, sizes);
2. every file matches the manifest's sha256, and no file is there that it does not list;
3. the model loads with the target's adapter, the reference inputs run, and every output is
   within the manifest's tolerance of the outputs stored at build time;
4. unless --no-bench, the model is benchmarked (the usual protocol and labels).

Exit 0: verified; 1: the bundle failed a check (one line says which file/output and why);
2: not a bundle, or no device here can run it. Needs only a runtime (onnxruntime or
openvino), numpy and pyyaml: no onnx, torch, nncf or rich.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from edgeopt.errors import UsageError, short_reason

VERIFY_FAILED = 1


class _Failed(Exception):
    """One check failed; the message is the line the user sees."""


def run_verify(args: argparse.Namespace) -> int:
    from edgeopt._cli_parser import bench_protocol
    from edgeopt._output import Output
    from edgeopt.bundle import (
        REFERENCE,
        BundleRejected,
        check_files,
        extract_private,
        open_bundle,
        read_reference,
    )

    protocol = bench_protocol(args)
    out = Output(quiet=args.quiet)
    path = Path(args.bundle)
    result: dict = {"bundle": path.name, "ok": False, "devices": []}
    try:
        with open_bundle(path) as bundle:
            manifest = bundle.manifest
            contents = check_files(bundle)
            result.update({"target": manifest.get("target"), "files_checked": len(contents)})
            model = manifest["model"]
            if not isinstance(model, dict) or not isinstance(model.get("files"), list) or \
                    model.get("file") not in model["files"]:
                msg = f"{path.name}: the manifest's model entry does not name one of its files"
                raise _Failed(msg)
            missing = [f for f in [*model["files"], REFERENCE] if f not in contents]
            if missing:
                msg = (f"{path.name}: {missing[0]}, named by the manifest, is not among "
                       "its checksummed files")
                raise _Failed(msg)
            arrays = read_reference(bundle)
            targets = _targets(tuple(args.devices or ("host-cpu",)), model, out)
            folder = extract_private(bundle, model["files"])
        try:
            for target in targets:
                row = _verify_on(target, folder / model["file"], manifest, arrays)
                result["devices"].append(row)
                _say(out, row, model["file"])
                if not args.no_bench:
                    row["bench"] = _bench(target, folder / model["file"], manifest, arrays,
                                          protocol, out, table=not args.json)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    except (BundleRejected, _Failed) as e:
        result["error"] = str(e)
        _emit(args, result, out)
        sys.stderr.write(f"edgeopt: verify failed: {e}\n")
        return VERIFY_FAILED
    result["ok"] = True
    _emit(args, result, out)
    return 0


def _targets(devices: tuple[str, ...], model: dict, out) -> list:
    """The device targets here that run the bundle's format; none is an error (exit 2)."""
    from edgeopt._measure import target_availability
    from edgeopt._targets import resolve_targets
    from edgeopt.backends import get_backend, runtime_names

    runtime, fmt = model.get("runtime"), model.get("format")
    if runtime not in runtime_names():
        msg = f"the bundle's runtime {runtime!r} is not one edgeopt verify runs"
        raise UsageError(msg)
    adapters = get_backend(runtime).bundle_adapters.get(fmt)
    targets = [t for t in resolve_targets(devices, (runtime,))
               if adapters is None or t.adapter in adapters]
    present, absent = [], []
    for t in targets:
        availability = target_availability(t)
        (present if availability.ok else absent).append((t, availability.reason))
    if not present:
        reasons = "; ".join(f"{t.label} via {t.adapter}: {r}" for t, r in absent) or \
            f"no {fmt} adapter on {', '.join(devices)}"
        msg = (f"no device here can run this {fmt} bundle ({reasons}); run edgeopt verify on "
               "the device itself")
        raise UsageError(msg)
    for t, reason in absent:
        out.warn(f"{t.label} via {t.adapter}: not here ({reason}); skipped")
    return [t for t, _ in present]


def _verify_on(target, model_path: Path, manifest: dict, arrays: dict) -> dict:
    """Run the reference inputs on ``target``; raise _Failed on any difference."""
    from edgeopt.runtimes import get_adapter
    from edgeopt.runtimes.errors import RuntimeAdapterError

    name = model_path.name
    try:
        loaded = get_adapter(target.adapter).load(model_path, target.unit_obj)
    except RuntimeAdapterError as e:
        msg = (f"{name} does not load on {target.label} via {target.adapter}: {e}")
        raise _Failed(msg) from e
    _check_signature(name, "input", loaded.inputs, manifest["inputs"])
    _check_signature(name, "output", loaded.outputs, manifest["outputs"])
    feeds_by_sample = _samples(manifest, arrays, loaded)
    tolerances = manifest["tolerance"].get("outputs") or {}
    rows = []
    for j, spec in enumerate(loaded.outputs):
        tol = tolerances.get(spec.name)
        key = f"output.{j}"
        if not tol or key not in arrays:
            msg = (f"{name}: no reference or tolerance for output '{spec.name}'")
            raise _Failed(msg)
        rows.append({"name": spec.name, "max_abs_diff": 0.0, "min_cosine": 1.0,
                     "allowed_max_abs_diff": tol["max_abs_diff"],
                     "allowed_min_cosine": tol["min_cosine"], "worst_sample": 0,
                     **({"argmax": {**tol["argmax"], "rows": 0, "changed": 0}}
                        if tol.get("argmax") else {})})
    for i, feeds in enumerate(feeds_by_sample):
        try:
            outputs = loaded.run(feeds)
        except Exception as e:
            msg = (f"{name} fails to run reference sample {i} on {target.label}: "
                   f"{short_reason(e, 200)}")
            raise _Failed(msg) from e
        for j, row in enumerate(rows):
            _compare(name, row, np.asarray(outputs[j]), arrays[f"output.{j}"][i], i)
    for row in rows:
        _check_row(name, row, target.label)
    return {"device": target.label, "adapter": target.adapter, "runtime": target.runtime,
            "samples": len(feeds_by_sample), "outputs": rows}


def _compare(name: str, row: dict, got: np.ndarray, want: np.ndarray, sample: int) -> None:
    """One output of one sample against the reference, into ``row``'s running figures."""
    from edgeopt.runtimes import output_diff

    if got.shape != want.shape:
        msg = (f"{name} output '{row['name']}' has shape {list(got.shape)}, the "
               f"reference {list(want.shape)} (sample {sample})")
        raise _Failed(msg)
    diff = output_diff(want, got)
    if not diff.max_abs_diff <= row["max_abs_diff"]:
        row["max_abs_diff"], row["worst_sample"] = diff.max_abs_diff, sample
    row["min_cosine"] = min(row["min_cosine"], diff.cosine)
    argmax = row.get("argmax")
    if argmax is None:
        return
    if not -want.ndim <= argmax["axis"] < want.ndim:
        msg = (f"{name}: the manifest's argmax axis {argmax['axis']} does not exist in output "
               f"'{row['name']}' of shape {list(want.shape)}")
        raise _Failed(msg)
    # rows along the class axis where the reference's best class leads the next by more
    # than the margin: there the device must pick the same class
    w = np.moveaxis(np.asarray(want, np.float64), argmax["axis"], -1)
    g = np.moveaxis(np.asarray(got, np.float64), argmax["axis"], -1)
    w, g = w.reshape(-1, w.shape[-1]), g.reshape(-1, g.shape[-1])
    if w.shape[-1] < 2:
        return
    top2 = np.sort(w, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > argmax["min_margin"]
    changed = decided & (np.argmax(w, axis=-1) != np.argmax(g, axis=-1))
    argmax["rows"] += int(decided.sum())
    if changed.any() and not argmax["changed"]:
        first = int(np.flatnonzero(changed)[0])
        argmax["first"] = {"sample": sample, "row": first, "class": int(np.argmax(g[first])),
                           "reference_class": int(np.argmax(w[first]))}
    argmax["changed"] += int(changed.sum())


def _check_row(name: str, row: dict, device: str) -> None:
    if not row["max_abs_diff"] <= row["allowed_max_abs_diff"] or \
            not row["min_cosine"] >= row["allowed_min_cosine"]:
        msg = (f"{name} output '{row['name']}' differs from the reference on {device}: "
               f"max |diff| {row['max_abs_diff']:.4g} (allowed {row['allowed_max_abs_diff']:.4g},"
               f" sample {row['worst_sample']}), cosine {row['min_cosine']:.6f} (allowed >= "
               f"{row['allowed_min_cosine']})")
        raise _Failed(msg)
    argmax = row.get("argmax")
    if argmax and argmax["changed"]:
        first = argmax["first"]
        msg = (f"{name} output '{row['name']}' picks another class than the reference on "
               f"{device} in {argmax['changed']} of {argmax['rows']} decided rows (sample "
               f"{first['sample']}, row {first['row']}: class {first['class']}, reference "
               f"{first['reference_class']}; rows whose best class leads by more than "
               f"{argmax['min_margin']:.3g})")
        raise _Failed(msg)


def _check_signature(name: str, kind: str, specs, expected: list[dict]) -> None:
    have = [(s.name, s.dtype) for s in specs]
    want = [(e.get("name"), e.get("dtype")) for e in expected]
    if have != want:
        msg = (f"{name} {kind}s {have} do not match the manifest's {want}")
        raise _Failed(msg)


def _samples(manifest: dict, arrays: dict, loaded) -> list[dict[str, np.ndarray]]:
    stacks = {}
    for i, spec in enumerate(loaded.inputs):
        key = f"input.{i}"
        if key not in arrays:
            msg = (f"reference.npz has no {key} for input '{spec.name}'")
            raise _Failed(msg)
        stacks[spec.name] = arrays[key]
    counts = {len(a) for a in stacks.values()}
    if len(counts) != 1 or counts == {0}:
        msg = ("reference.npz inputs do not hold the same number of samples")
        raise _Failed(msg)
    n = counts.pop()
    if n != manifest["reference"].get("samples"):
        msg = (f"reference.npz holds {n} samples, the manifest says "
               f"{manifest['reference'].get('samples')}")
        raise _Failed(msg)
    return [{name: np.asarray(stack[i], order="C") for name, stack in stacks.items()}
            for i in range(n)]


def _bench(target, model_path: Path, manifest: dict, arrays: dict, protocol, out,
           table: bool) -> dict:
    from edgeopt._measure import run_target

    feeds = {spec["name"]: np.asarray(arrays[f"input.{i}"][0], order="C")
             for i, spec in enumerate(manifest["inputs"])}
    with out.status(f"benchmark {model_path.name} on {target.label}"):
        row = run_target(target, model_path, feeds, protocol)
    row["model"] = model_path.name
    if table and not out.quiet:
        from edgeopt._output import bench_rows

        out.table("edgeopt verify: benchmark", *bench_rows([row]))
    return row["bench"]


def _say(out, row: dict, model_file: str) -> None:
    parts = [f"{o['name']}: max |diff| {o['max_abs_diff']:.3g} <= {o['allowed_max_abs_diff']:.3g}"
             f", cosine {o['min_cosine']:.6f}"
             + (f", same class on {o['argmax']['rows']} decided rows" if o.get("argmax") else "")
             for o in row["outputs"]]
    if not out.quiet:
        sys.stderr.write(f"{model_file} on {row['device']} via {row['adapter']}: "
                         f"{row['samples']} reference samples match ({'; '.join(parts)})\n")


def _emit(args, result: dict, out) -> None:
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif result["ok"] and not args.quiet:
        sys.stderr.write(f"{result['bundle']}: verified ({result['files_checked']} files match "
                         f"their checksums; outputs within tolerance on "
                         f"{', '.join(d['device'] for d in result['devices'])})\n")
