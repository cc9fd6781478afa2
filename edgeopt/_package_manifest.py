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

# reference.npz: a few samples, small next to the model: at most REFERENCE_MODEL_SHARE of
# the model's bytes or REFERENCE_BYTES, whichever is larger (inputs and outputs together;
# fewer samples when the outputs are big, as a detector's are), and always one sample.
REFERENCE_BYTES = 1 << 20
REFERENCE_MODEL_SHARE = 0.10
REFERENCE_MAX_SAMPLES = 4
REFERENCE_SEED = 0
# Known class names by reference model; None: not available offline.
LABELS = {"digits-cnn": [str(d) for d in range(10)]}
LABEL_NOTES = {
    "mobilenet-v2": "ImageNet-1k class names are not available offline here; output index i is "
                    "class i of torchvision's ImageNet-1k order",
}
# verify's tolerance per output, by the precision of the bundled model, relative to that
# output's own scale (its range in the reference outputs: boxes on 0-320 and scores on 0-1 each
# get their own). INT8 kernels differ between CPUs (x86 VNNI/AVX2 vs ARM dot-product): a
# rounding step (range / 255) here and there, compounding. Score outputs also keep their
# argmax wherever the reference's best class leads the next by more than ``argmax_margin``.
TOLERANCE = {
    "fp32": {"relative_max_abs_diff": 1e-3, "min_cosine": 0.9999, "argmax_margin": 1e-4},
    "int8": {"relative_max_abs_diff": 0.1, "min_cosine": 0.99, "argmax_margin": 0.02},
}
CLASSIFIER_METRICS = ("accuracy", "top1", "top5", "agreement")


# --- reference inputs and outputs ------------------------------------------------------

def reference_budget(model_bytes: int) -> int:
    """The most bytes ``reference.npz`` may hold for a model of ``model_bytes``."""
    return max(REFERENCE_BYTES, int(REFERENCE_MODEL_SHARE * model_bytes))


def reference_count(sample_bytes: int, model_bytes: int) -> int:
    """How many reference samples of ``sample_bytes`` (inputs and outputs) fit the budget:
    1 to REFERENCE_MAX_SAMPLES."""
    fit = reference_budget(model_bytes) // max(sample_bytes, 1)
    return int(max(1, min(REFERENCE_MAX_SAMPLES, fit)))


def sample_bytes(feeds: dict[str, np.ndarray], outputs) -> int:
    return int(sum(np.asarray(a).nbytes for a in (*feeds.values(), *outputs)))


def _reference_inputs(source: BundleSource, specs, n: int
                      ) -> tuple[list[dict[str, np.ndarray]], str]:
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


def _output_scale(values: np.ndarray) -> tuple[float, float, float]:
    """(lowest, highest, scale): the scale is the range, or 1% of the peak |value| for a
    near-constant output, and never 0."""
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    return lo, hi, max(hi - lo, 0.01 * max(abs(lo), abs(hi)), 1e-6)


def _is_score(sample: np.ndarray, lo: float, hi: float, classifier: bool) -> bool:
    """A score output: [batch, classes] or [batch, boxes, classes] with Softmax/Sigmoid-
    bounded values (0-1), or the first output of a classifier (its metric says so)."""
    return sample.ndim in (2, 3) and sample.shape[-1] >= 2 and (
        (lo >= 0.0 and hi <= 1.0) or classifier)


def tolerance_for(precision: str, outputs: list[list[np.ndarray]], specs,
                  classifier: bool = False) -> dict:
    """Per output, relative to that output's own scale (its range in ``outputs``): the
    largest |difference| allowed, the lowest cosine, and for score outputs the class axis
    whose argmax must not change where the reference's lead is above a margin."""
    rule = TOLERANCE["int8" if precision == "int8" else "fp32"]
    per_output = {}
    for j, spec in enumerate(specs):
        values = np.concatenate([np.asarray(o[j], dtype=np.float64).reshape(-1) for o in outputs])
        lo, hi, scale = _output_scale(values)
        tol = {"max_abs_diff": float(f"{rule['relative_max_abs_diff'] * scale:.6g}"),
               "min_cosine": rule["min_cosine"], "range": [lo, hi], "scale": float(f"{scale:.6g}")}
        if _is_score(np.asarray(outputs[0][j]), lo, hi, classifier and j == 0):
            tol["argmax"] = {"axis": -1,
                             "min_margin": float(f"{rule['argmax_margin'] * scale:.6g}")}
        per_output[spec.name] = tol
    return {"rule": {"precision": precision, **rule,
                     "why": "max_abs_diff = relative_max_abs_diff x the output's scale (its "
                            "range in the reference outputs; 1% of its peak when near-constant);"
                            " score outputs (0-1 values or a classifier's, with a class axis) "
                            "keep their argmax where the best class leads by more than "
                            "argmax_margin x scale. INT8 kernels round differently across CPUs, "
                            "FP32 only sums in another order"},
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


def _manifest(source: BundleSource, target: str, spec: TargetSpec, loaded, files: dict,
              model_files: list[str], conversion, precision: str, inputs, outputs, input_note: str, palettization,
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
                      "bytes": sum(sample_bytes(f, o) for f, o in zip(inputs, outputs,
                                                                       strict=True)),
                      "budget_bytes": reference_budget(sum(
                          len(files[f]) for f in model_files)),
                      "computed_with": f"{spec.host_adapter} on the bundled model itself",
                      "arrays": {**{f"input.{i}": s.name for i, s in enumerate(loaded.inputs)},
                                 **{f"output.{j}": s.name
                                    for j, s in enumerate(loaded.outputs)}}},
        "tolerance": tolerance_for(precision, outputs, loaded.outputs, classifier=(
            (report.get("data") or {}).get("metric") in CLASSIFIER_METRICS)),
        "notes": notes,
    }


def _runtime_distributions() -> list[str]:
    """Each backend's own runtime distribution (onnxruntime, openvino, ...)."""
    from edgeopt.backends import get_backend, runtime_names

    return [get_backend(r).libraries[0] for r in runtime_names() if get_backend(r).libraries]
