"""A bundle's reference inputs and outputs, verify's tolerance, and ``manifest.json``: what the
bundled model is, where it came from, and what it should compute. Used by
:mod:`edgeopt.package`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt import __version__
from edgeopt._package_source import BundleSource, TargetSpec, dist_version, no_paths
from edgeopt.bundle import REFERENCE, SCHEMA_VERSION
from edgeopt.convert.ort_format import OPS_CONFIG

REFERENCE_BYTES = 2 << 20        # reference inputs: a few samples, at most ~2 MB of them
REFERENCE_MAX_SAMPLES = 8
REFERENCE_SEED = 0
# Known class names by reference model; None: not available offline.
LABELS = {"digits-cnn": [str(d) for d in range(10)]}
LABEL_NOTES = {
    "mobilenet-v2": "ImageNet-1k class names are not available offline here; output index i is "
                    "class i of torchvision's ImageNet-1k order",
}
# verify's tolerance per output, by the precision of the bundled model. INT8 kernels differ
# between CPUs (x86 VNNI/AVX2 vs ARM dot-product): a rounding step here and there, compounding.
TOLERANCE = {
    "fp32": {"relative_max_abs_diff": 1e-3, "min_cosine": 0.9999},
    "int8": {"relative_max_abs_diff": 0.1, "min_cosine": 0.99},
}


# --- reference inputs and outputs ------------------------------------------------------

def _reference_count(specs) -> int:
    per_sample = sum(int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in s.shape]))
                     * np.dtype(s.dtype).itemsize for s in specs)
    return int(max(1, min(REFERENCE_MAX_SAMPLES, REFERENCE_BYTES // max(per_sample, 1))))


def _reference_inputs(source: BundleSource, specs) -> tuple[list[dict[str, np.ndarray]], str]:
    n = _reference_count(specs)
    report = source.report or {}
    inp = report.get("input") or {}
    spec = inp.get("spec") or ""
    if inp.get("kind") == "reference" and spec.startswith("ref:"):
        from edgeopt.reference_models import get_reference

        reference = get_reference(spec[4:])
        samples = reference.evaluation_set(n).inputs
        return ([{s.name: np.asarray(sample[s.name], dtype=s.dtype) for s in specs}
                 for sample in samples],
                f"the first {n} samples of {spec}'s evaluation set")
    shapes = {i["name"]: i["shape"] for i in inp.get("inputs") or []}
    preprocessing = inp.get("preprocessing") or {}
    rng = np.random.default_rng(REFERENCE_SEED)
    samples = [{s.name: _random_input(rng, s, shapes.get(s.name), preprocessing)
                for s in specs} for _ in range(n)]
    how = ("uniform pixels through the preprocessing (mean/std)" if "mean" in preprocessing
           else f"uniform in {preprocessing['range']}" if "range" in preprocessing
           else "standard normal (no preprocessing known)")
    return samples, (f"{n} seeded random inputs (seed {REFERENCE_SEED}): floats {how}; "
                     "integers 0/1; dynamic dimensions 1")


def _random_input(rng, spec, shape, preprocessing: dict) -> np.ndarray:
    dims = tuple(shape) if shape else tuple(d if isinstance(d, int) and d > 0 else 1
                                             for d in spec.shape)
    dtype = np.dtype(spec.dtype)
    if dtype == np.bool_:
        return np.ones(dims, dtype=bool)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2, size=dims).astype(dtype)
    if "mean" in preprocessing and "std" in preprocessing and len(dims) == 4:
        scale = float(preprocessing.get("scale", 1 / 255))
        pixels = rng.random(dims) * 255.0 * scale
        axis = 3 if str(preprocessing.get("layout", "nchw")).lower() == "nhwc" else 1
        shape = [1] * 4
        shape[axis] = -1
        mean = np.asarray(preprocessing["mean"], dtype=np.float64).reshape(-1)
        std = np.asarray(preprocessing["std"], dtype=np.float64).reshape(-1)
        if mean.size in (1, dims[axis]) and std.size in (1, dims[axis]):
            return ((pixels - mean.reshape(shape if mean.size > 1 else 1))
                    / std.reshape(shape if std.size > 1 else 1)).astype(dtype)
    if "range" in preprocessing:
        lo, hi = (float(v) for v in preprocessing["range"])
        return (lo + rng.random(dims) * (hi - lo)).astype(dtype)
    return rng.standard_normal(dims).astype(dtype)


def _reference_arrays(loaded, inputs, outputs) -> dict[str, np.ndarray]:
    """``input.I`` / ``output.J`` stacked over samples (names are in the manifest)."""
    arrays = {}
    for i, spec in enumerate(loaded.inputs):
        arrays[f"input.{i}"] = np.stack([feeds[spec.name] for feeds in inputs])
    for j, _ in enumerate(loaded.outputs):
        arrays[f"output.{j}"] = np.stack([np.asarray(out[j]) for out in outputs])
    return arrays


def tolerance_for(precision: str, outputs: list[list[np.ndarray]], specs) -> dict:
    """Per output: the largest |difference| allowed (relative to the output's peak) and the
    lowest cosine, for the bundled model's precision."""
    rule = TOLERANCE["int8" if precision == "int8" else "fp32"]
    per_output = {}
    for j, spec in enumerate(specs):
        values = np.concatenate([np.asarray(o[j], dtype=np.float64).reshape(-1) for o in outputs])
        peak = float(np.abs(values).max()) if values.size else 0.0
        per_output[spec.name] = {
            "max_abs_diff": float(f"{rule['relative_max_abs_diff'] * max(peak, 1.0):.6g}"),
            "min_cosine": rule["min_cosine"]}
    return {"rule": {"precision": precision, **rule,
                     "why": "max_abs_diff = relative_max_abs_diff x max(1, peak |output|); INT8 "
                            "kernels round differently across CPUs, FP32 only sums in another "
                            "order"},
            "outputs": per_output}


# --- the manifest ----------------------------------------------------------------------

def _labels(source: BundleSource) -> tuple[list[str] | None, str | None]:
    spec = ((source.report or {}).get("input") or {}).get("spec") or ""
    name = spec[4:] if spec.startswith("ref:") else None
    if name in LABELS:
        return LABELS[name], None
    if name in LABEL_NOTES:
        return None, LABEL_NOTES[name]
    return None, "class labels are not known to edgeopt for this model"


def _tensor_specs(specs) -> list[dict]:
    rows = []
    for s in specs:
        dynamic = {str(i): d for i, d in enumerate(s.shape) if not isinstance(d, int) or d < 0}
        rows.append({"name": s.name, "dtype": s.dtype,
                     "shape": [d if isinstance(d, int) else str(d) for d in s.shape],
                     "dynamic_axes": dynamic})
    return rows


LATENCY_NOTE = {
    "file": "beside the bundle: <bundle name>.latency.json (and the run's report.json)",
    "why": "timings vary from run to run; kept out of the bundle, so the same inputs give "
           "the same bundle bytes, and out of its checksums"}


def latency_path(bundle: Path) -> Path:
    """Where a bundle's latency figures go: ``NAME.latency.json`` beside ``NAME.zip``."""
    return bundle.with_name(f"{bundle.stem}.latency.json")


def _latency(source: BundleSource) -> list[dict]:
    keep = ("label", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "cv", "unstable",
            "low_ms", "high_ms", "reason", "calibration")
    rows = []
    for a in (source.report or {}).get("artifacts", []):
        if source.artifact is None or a.get("path") != source.artifact.get("path"):
            continue
        bench = a.get("bench") or {}
        setup = bench.get("setup") or {}
        rows.append({"device": a.get("device"), "adapter": a.get("adapter"),
                     **{k: bench[k] for k in keep if k in bench},
                     **({"runtime_version": setup["runtime_version"]}
                        if "runtime_version" in setup else {}),
                     **({"threads": setup["threads"]} if "threads" in setup else {})})
    return no_paths(rows)


def _metric(report: dict, artifact: dict) -> dict | None:
    """The source artifact's figure on the run's metric, as the report has it."""
    if not report:
        return None
    accuracy = dict(artifact.get("accuracy") or {})
    data = report.get("data") or {}
    return no_paths({"name": accuracy.pop("metric", data.get("metric")),
                      "evaluation": data.get("evaluation"), **accuracy})


def _manifest(source: BundleSource, target: str, spec: TargetSpec, loaded, model_files: list[str],
              conversion, precision: str, inputs, outputs, input_note: str, palettization,
              labels, label_note) -> dict:
    report = source.report or {}
    artifact = source.artifact or {}
    quant = artifact.get("quantization")
    notes = list(source.notes)
    if source.artifact is not None:
        notes.append(f"latency is the report's, measured/estimated on {artifact.get('path')} "
                     f"(the artifact this bundle was made from), with the report's label")
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "edgeopt-bundle",
        "target": target,
        "edgeopt": __version__,
        "libraries": {k: dist_version(k) for k in ("numpy", "onnx", *_runtime_distributions())},
        "run_libraries": report.get("libraries"),
        "source": source.origin,
        "model": {"file": model_files[0], "files": model_files, "format": spec.model_format,
                  "runtime": spec.runtime, "precision": precision,
                  "device_runtime": spec.device_note,
                  **({"ort_conversion": conversion} if conversion else {}),
                  **({"reduced_build_config": OPS_CONFIG,
                      "reduced_build": f"onnxruntime build.sh --minimal_build "
                                       f"--include_ops_by_config {OPS_CONFIG}"}
                     if conversion else {})},
        "inputs": _tensor_specs(loaded.inputs),
        "outputs": _tensor_specs(loaded.outputs),
        "preprocessing": no_paths((report.get("input") or {}).get("preprocessing")),
        "labels": {"file": "labels.txt", "count": len(labels)} if labels else None,
        **({"labels_note": label_note} if label_note else {}),
        "metric": _metric(report, artifact),
        "quantization": no_paths({"calibrator": quant.get("calibrator"),
                                   "calibration": quant.get("calibration"),
                                   **{k: quant[k] for k in ("excluded_nodes", "reverted_to_fp32",
                                                            "integer_kernels", "notes")
                                      if k in quant}}) if quant and precision == "int8" else None,
        "pruning": no_paths(report.get("pruning")),
        "palettization": palettization,
        "latency": LATENCY_NOTE,
        "reference": {"file": REFERENCE, "samples": len(inputs), "inputs_from": input_note,
                      "computed_with": f"{spec.host_adapter} on the bundled model itself",
                      "arrays": {**{f"input.{i}": s.name for i, s in enumerate(loaded.inputs)},
                                 **{f"output.{j}": s.name
                                    for j, s in enumerate(loaded.outputs)}}},
        "tolerance": tolerance_for(precision, outputs, loaded.outputs),
        "notes": notes,
    }


def _runtime_distributions() -> list[str]:
    """Each backend's own runtime distribution (onnxruntime, openvino, ...)."""
    from edgeopt.backends import get_backend, runtime_names

    return [get_backend(r).libraries[0] for r in runtime_names() if get_backend(r).libraries]
