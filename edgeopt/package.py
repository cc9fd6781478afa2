"""`edgeopt package`: an app bundle per target from an optimize run (or a plain ONNX model).

| target | model in the bundle | runtime on the device |
|---|---|---|
| android, ios | ``model.ort`` + ``required_operators.config`` | ONNX Runtime (Mobile / a reduced build) |
| linux-arm | ``model.onnx`` | ONNX Runtime's CPU EP on aarch64 |
| openvino | ``model.xml`` + ``model.bin`` | OpenVINO |

Every bundle also holds ``reference.npz`` (inputs, and the outputs the bundled model itself
gave for them at build time) and ``manifest.json`` (see ``_manifest``), so ``edgeopt verify``
on the device can prove it computes what it computed here.

ORT format: the conversion is ONNX Runtime's own (``onnxruntime.tools.
convert_onnx_models_to_ort``, re-done here with the same session options because that
function takes its level from an environment variable and cannot keep constant subgraphs):
"Fixed" style at the "extended" level for an ARM target. Fixed, because the CPU EP runs the
whole graph, so every fusion can be baked in (the "Runtime" style is for NNAPI/CoreML, and is
replayed only with a session option apps rarely set); extended, because it holds the QDQ ->
QLinearConv/QGemm fusions a minimal build cannot do at load, while level 3 ("all") adds layout
transforms chosen for the build machine's CPU (NCHWc block size, fp16 NHWC) that do not
belong in an ARM model. ONNX Runtime serialises ORT files with host-pointer-dependent order,
so the kernel-type table is rewritten in sorted order: the same model gives the same bytes.
The ORT format has no 4-bit tensors: palettized 4-bit indices are stored one per byte there
(the zip's deflate takes the download back near 4 bits), and constant folding is off so the
lookup tables are not expanded back into full weights in the file.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt import __version__
from edgeopt.bundle import (
    REFERENCE,
    SCHEMA_VERSION,
    file_entries,
    npz_bytes,
    write_bundle,
)
from edgeopt.convert import file_sha256
from edgeopt.convert.ort_format import OPS_CONFIG, to_ort, widen_4bit
from edgeopt.errors import UsageError

__all__ = ["TARGETS", "package_model", "package_run"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TargetSpec:
    runtime: str                  # onnxruntime | openvino
    model_format: str             # ort | onnx | openvino-ir
    host_adapter: str             # runs the bundle here for its reference outputs
    device_note: str


TARGETS = {
    "android": TargetSpec("onnxruntime", "ort", "ort-cpu",
                          "ONNX Runtime Mobile (onnxruntime-android) or a reduced build"),
    "ios": TargetSpec("onnxruntime", "ort", "ort-cpu",
                      "ONNX Runtime Mobile (onnxruntime-objc / onnxruntime-c pods) or a "
                      "reduced build"),
    "linux-arm": TargetSpec("onnxruntime", "onnx", "ort-cpu",
                            "ONNX Runtime's CPU EP on aarch64 (pip install onnxruntime)"),
    "openvino": TargetSpec("openvino", "openvino-ir", "ov-cpu", "OpenVINO runtime"),
}
ORT_CONVERSION = {"converter": "onnxruntime.tools.convert_onnx_models_to_ort (same options)",
                  "optimization_style": "Fixed", "optimization_level": "extended",
                  "target_platform": "arm"}
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


@dataclass
class _Source:
    """What one bundle is built from."""

    name: str
    precision: str
    runtime: str
    files: dict[str, Path]                  # role (onnx | xml | bin) -> path
    origin: dict                            # manifest "source"
    report: dict | None = None
    artifact: dict | None = None            # the report's entry for the chosen artifact
    notes: list[str] = field(default_factory=list)
    fp32_onnx: Path | None = None           # the run's FP32 ONNX: the metric's reference


def package_run(run_dir: Path, target: str, out: Path, *, palettize: int | None = None,
                group_size: int | None = None, max_accuracy_drop=None,
                precision: str | None = None, progress: Progress | None = None) -> dict:
    """Bundle an ``edgeopt optimize`` output folder for ``target``; returns the manifest.

    Args:
        run_dir: the optimize run's ``--out`` folder (``report.json`` and its artifacts).
        target: ``android``, ``ios``, ``linux-arm`` or ``openvino``.
        out: the ``.zip`` to write (atomically; nothing under that name on failure).
        palettize: k-means weight palettization with this many bits (ONNX Runtime targets).
        group_size: output channels sharing one lookup table.
        max_accuracy_drop: palettization budget on the run's metric (``0.01`` or ``1%``).
        precision: ``int8`` or ``fp32``; default int8 where the run has one for the runtime.
        progress: ``update(done, total)`` over the build steps.
    """
    spec = _target(target)
    run_dir = Path(run_dir)
    report = _read_report(run_dir)
    source = _run_source(run_dir, report, spec, precision, palettize)
    return _build(source, target, Path(out), palettize, group_size, max_accuracy_drop, progress)


def package_model(model: Path, target: str, out: Path, *, palettize: int | None = None,
                  group_size: int | None = None, max_accuracy_drop=None,
                  progress: Progress | None = None) -> dict:
    """Bundle a plain ONNX model (or OpenVINO IR for ``openvino``) as it is: no run, no
    report, so no evaluation data, metric or latency; reference inputs are seeded random."""
    spec = _target(target)
    model = Path(model)
    if not model.is_file():
        msg = f"{model}: no such model file (give an .onnx file or an optimize output folder)"
        raise UsageError(msg)
    suffix = model.suffix.lower()
    if suffix == ".xml" and spec.runtime == "openvino":
        files = {"xml": model, "bin": model.with_suffix(".bin")}
        if not files["bin"].is_file():
            msg = f"{model}: its weights {files['bin'].name} are not beside it"
            raise UsageError(msg)
    elif suffix == ".onnx":
        files = {"onnx": model}
    else:
        what = ".onnx or .xml (OpenVINO IR)" if spec.runtime == "openvino" else ".onnx"
        msg = f"cannot package '{model}' for {target}: expected a {what} file or a run folder"
        raise UsageError(msg)
    source = _Source(model.stem, _precision_of(files), spec.runtime, files,
                     {"kind": "model file", "file": model.name,
                      "sha256": file_sha256(model)},
                     notes=["packaged from a model file, not an optimize run: no metric, "
                            "quantization or latency figures are known"])
    return _build(source, target, Path(out), palettize, group_size, max_accuracy_drop, progress)


def _precision_of(files: dict[str, Path]) -> str:
    """int8 when the model holds quantized operators (QDQ / QLinear*, FakeQuantize), else fp32."""
    if "xml" in files:
        return "int8" if b'type="FakeQuantize"' in files["xml"].read_bytes() else "fp32"
    import onnx

    proto = onnx.load(str(files["onnx"]), load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    quantized = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                 "MatMulInteger", "ConvInteger"}
    return "int8" if ops & quantized else "fp32"


def _target(target: str) -> TargetSpec:
    if target not in TARGETS:
        msg = f"unknown package target '{target}' (known: {', '.join(TARGETS)})"
        raise UsageError(msg)
    return TARGETS[target]


# --- the run folder --------------------------------------------------------------------

def _read_report(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    if not path.is_file():
        msg = (f"{run_dir} is not an edgeopt optimize output folder (no report.json); "
               "give the folder passed to --out, or an .onnx file")
        raise UsageError(msg)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = f"{path}: not a readable report ({e})"
        raise UsageError(msg) from e
    if report.get("schema_version") != 1 or not isinstance(report.get("artifacts"), list):
        msg = f"{path}: report schema_version {report.get('schema_version')!r} is not 1"
        raise UsageError(msg)
    return report


def _run_source(run_dir: Path, report: dict, spec: TargetSpec, precision: str | None,
                palettize: int | None) -> _Source:
    by_precision: dict[str, dict] = {}
    for a in report["artifacts"]:
        if a.get("runtime") == spec.runtime:
            by_precision.setdefault(a["precision"], a)
    if not by_precision:
        msg = (f"{run_dir} has no {spec.runtime} artifact (run optimize with --runtime "
               f"{spec.runtime})")
        raise UsageError(msg)
    notes = []
    chosen = precision or ("int8" if "int8" in by_precision else "fp32")
    if chosen not in by_precision:
        msg = (f"{run_dir} has no {chosen} {spec.runtime} artifact (has: "
               f"{', '.join(sorted(by_precision))})")
        raise UsageError(msg)
    artifact = by_precision[chosen]
    files = {}
    for name in artifact.get("files") or [artifact["path"]]:
        path = run_dir / name
        if not path.is_file():
            msg = f"{run_dir}: {name}, listed in report.json, is missing"
            raise UsageError(msg)
        expected = (artifact.get("sha256_files") or {}).get(name)
        if expected and file_sha256(path) != expected:
            msg = (f"{run_dir}: {name} changed since report.json was written (sha256 differs); "
                   "rerun optimize")
            raise UsageError(msg)
        files[{".onnx": "onnx", ".xml": "xml", ".bin": "bin"}[path.suffix]] = path
    spec_text = report.get("input", {}).get("spec") or ""
    origin = {"kind": "edgeopt optimize run", "model": _model_label(spec_text),
              "artifact": artifact["path"], "sha256": artifact.get("sha256"),
              "run_edgeopt": report.get("edgeopt")}
    name = Path(artifact["path"]).name.split(".")[0]
    fp32 = by_precision.get("fp32")
    return _Source(name, chosen, spec.runtime, files, origin, report, artifact, notes,
                   fp32_onnx=run_dir / fp32["path"] if fp32 and fp32["format"] == "onnx"
                   else None)


def _model_label(spec: str) -> str:
    """The model as the run named it, without machine paths."""
    return spec if spec.startswith("ref:") or "/" not in spec else Path(spec).name


_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s,;()'\"]+/)*([^\s,;()'\"]+)")


def _no_paths(text):
    """Notes from the report may name folders of the machine that ran it: keep base names."""
    if isinstance(text, str):
        return _ABS_PATH.sub(r"\1", text)
    if isinstance(text, list):
        return [_no_paths(t) for t in text]
    if isinstance(text, dict):
        return {k: _no_paths(v) for k, v in text.items()}
    return text


# --- building --------------------------------------------------------------------------

def _build(source: _Source, target: str, out: Path, palettize, group_size, max_accuracy_drop,
           progress: Progress | None) -> dict:
    spec = TARGETS[target]
    _check_out(out, [p for p in source.files.values()])
    if palettize is not None and spec.runtime != "onnxruntime":
        msg = ("--palettize writes ONNX lookup-table weights for ONNX Runtime targets (android, "
               "ios, linux-arm); for openvino use its INT8 artifact")
        raise UsageError(msg)
    steps = 5
    tick = (lambda i: progress(i, steps)) if progress else (lambda i: None)
    with tempfile.TemporaryDirectory(prefix="edgeopt-package-") as tmp:
        work = Path(tmp)
        tick(0)
        onnx_path = source.files.get("onnx")
        palettization = None
        if palettize is not None:
            onnx_path, palettization = _palettize(source, onnx_path, work, palettize,
                                                  group_size, max_accuracy_drop, progress)
        tick(1)
        files, model_files, conversion = _model_files(source, spec, onnx_path, work,
                                                      palettized=palettize is not None)
        tick(2)
        for name in model_files:
            (work / name).write_bytes(files[name])
        loaded = _host_load(spec, work / model_files[0])
        inputs, input_note = _reference_inputs(source, loaded.inputs)
        outputs = [loaded.run(feeds) for feeds in inputs]
        tick(3)
        reference = _reference_arrays(loaded, inputs, outputs)
        files[REFERENCE] = npz_bytes(reference)
        precision = source.precision
        labels, label_note = _labels(source)
        if labels is not None:
            files["labels.txt"] = ("\n".join(labels) + "\n").encode()
        manifest = _manifest(source, target, spec, loaded, model_files, conversion, precision,
                             inputs, outputs, input_note, palettization, labels, label_note)
        tick(4)
        write_bundle(out, files, manifest)
        tick(5)
    return {**manifest, "files": file_entries(files)}


def _check_out(out: Path, inputs: list[Path]) -> None:
    if out.suffix.lower() != ".zip":
        msg = f"--out {out}: a bundle is a .zip file; name it e.g. model.zip"
        raise UsageError(msg)
    if out.is_dir():
        msg = f"--out {out} is a folder; give the bundle's file name (e.g. {out}/model.zip)"
        raise UsageError(msg)
    for p in inputs:
        if p.exists() and out.absolute() == p.absolute():
            msg = f"--out {out} is an input file; choose another name"
            raise UsageError(msg)
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        msg = f"--out {out}: {parent} is not a folder"
        raise UsageError(msg)


def _model_files(source: _Source, spec: TargetSpec, onnx_path: Path | None, work: Path,
                 palettized: bool) -> tuple[dict[str, bytes], list[str], dict | None]:
    """The model in the target's format: {member: bytes}, the model members, conversion."""
    if spec.model_format == "openvino-ir":
        if "xml" not in source.files:
            from edgeopt.convert import to_openvino_ir

            to_openvino_ir(onnx_path, work / "converted.xml")
            xml, bin_ = work / "converted.xml", work / "converted.bin"
        else:
            xml, bin_ = source.files["xml"], source.files["bin"]
        return ({"model.xml": xml.read_bytes(), "model.bin": bin_.read_bytes()},
                ["model.xml", "model.bin"], None)
    model_bytes = _standalone_onnx(onnx_path)
    if spec.model_format == "onnx":
        return {"model.onnx": model_bytes}, ["model.onnx"], None
    src = work / "source.onnx"
    src.write_bytes(model_bytes)
    widened = widen_4bit(src) if palettized else []
    ort_bytes, ops_config = to_ort(src, work / "ort", keep_constant_subgraphs=palettized)
    conversion = {**ORT_CONVERSION, "constant_folding": not palettized,
                  "onnxruntime": _version("onnxruntime")}
    if palettized:
        conversion["note"] = (
            "constant folding off: it would expand the palettized weights back to full size in "
            "the file. ONNX Runtime does not fold ORT-format models at load either, so the "
            "lookup tables are decoded at every inference: a smaller download for more "
            "latency (edgeopt verify's benchmark measures it on the device)")
    if widened:
        conversion["widened_4bit_indices"] = len(widened)
        conversion["widened_note"] = (
            "the ORT format cannot store uint4/int4 tensors, so the packed 4-bit palette "
            "indices are stored one per byte in model.ort; the zip's deflate brings the "
            "download back near 4 bits per index")
    return ({"model.ort": ort_bytes, OPS_CONFIG: ops_config.encode()}, ["model.ort"],
            conversion)


def _standalone_onnx(path: Path) -> bytes:
    """The model's bytes, with any external data pulled in (a bundle member stands alone)."""
    import onnx

    if not _has_external_data(path):
        return path.read_bytes()
    proto = onnx.load(str(path))
    if proto.ByteSize() >= 2_000_000_000:
        msg = f"{path.name}: over 2 GB with external data; bundles hold single-file models"
        raise UsageError(msg)
    return proto.SerializeToString()


def _has_external_data(path: Path) -> bool:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _host_load(spec: TargetSpec, model: Path):
    from edgeopt.runtimes import get_adapter

    return get_adapter(spec.host_adapter).load(model)


# --- palettization ---------------------------------------------------------------------

def _palettize(source: _Source, onnx_path: Path | None, work: Path, bits: int,
               group_size: int | None, max_accuracy_drop, progress) -> tuple[Path, dict]:
    try:
        from edgeopt.calibrate.palettize import palettize_onnx
    except ImportError as e:
        msg = f"--palettize is not available in this install ({e})"
        raise UsageError(msg) from e
    if onnx_path is None:
        msg = "--palettize needs an ONNX model"
        raise UsageError(msg)
    evaluate, note = _evaluator(source)
    allowed = None
    if max_accuracy_drop is not None:
        if evaluate is None:
            msg = (f"--max-accuracy-drop needs the run's metric, and {note}; drop it or "
                   "package a reference-model run")
            raise UsageError(msg)
        from edgeopt.recipe import parse_budget

        try:
            value, relative = parse_budget(max_accuracy_drop)
        except ValueError as e:
            raise UsageError(str(e)) from e
        allowed = abs(evaluate(onnx_path)) * value / 100 if relative else value
    out = work / "palettized.onnx"
    result = palettize_onnx(onnx_path, out, bits, group_size, evaluate=evaluate,
                            max_accuracy_drop=allowed, progress=progress)
    record = {"bits": bits, "group_size": group_size, "max_accuracy_drop": max_accuracy_drop,
              "allowed_drop": allowed, "from_precision": source.precision,
              "evaluated": evaluate is not None, **({} if evaluate else {"why_not": note}),
              **({"metric": ((source.report or {}).get("data") or {}).get("metric"),
                  "scored_against": "the run's FP32 ONNX outputs on its evaluation set"}
                 if evaluate else {}),
              "report": _no_paths(_jsonable(result))}
    return out, record


def _evaluator(source: _Source):
    """``evaluate(model.onnx) -> metric`` on the run's evaluation set, where it can be rebuilt
    (reference models: their own set and metric); else (None, why)."""
    report = source.report or {}
    spec = (report.get("input") or {}).get("spec") or ""
    if (report.get("input") or {}).get("kind") != "reference" or not spec.startswith("ref:"):
        return None, ("the run's evaluation data is not in its folder (only reference-model "
                      "runs can be re-evaluated), so palettization was not evaluated")
    from edgeopt.reference_models import get_reference
    from edgeopt.runtimes import get_adapter

    reference = get_reference(spec[4:])
    eval_set = reference.evaluation_set((report.get("recipe") or {}).get("eval_samples"))
    ort = get_adapter("ort-cpu")
    fp32 = source.fp32_onnx
    if fp32 is None:
        return None, "the run has no FP32 ONNX artifact to score against"

    def first_outputs(model: Path) -> np.ndarray:
        loaded = ort.load(Path(model))
        return np.concatenate([loaded.run(feeds)[0].reshape(1, -1)
                               for feeds in eval_set.inputs])

    fp32_outputs = first_outputs(fp32)

    def evaluate(model: Path) -> float:
        return float(reference.score(first_outputs(model), eval_set, fp32_outputs))

    return evaluate, None


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return value.name
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# --- reference inputs and outputs ------------------------------------------------------

def _reference_count(specs) -> int:
    per_sample = sum(int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in s.shape]))
                     * np.dtype(s.dtype).itemsize for s in specs)
    return int(max(1, min(REFERENCE_MAX_SAMPLES, REFERENCE_BYTES // max(per_sample, 1))))


def _reference_inputs(source: _Source, specs) -> tuple[list[dict[str, np.ndarray]], str]:
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

def _labels(source: _Source) -> tuple[list[str] | None, str | None]:
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


def _latency(source: _Source) -> list[dict]:
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
    return _no_paths(rows)


def _metric(report: dict, artifact: dict) -> dict | None:
    """The source artifact's figure on the run's metric, as the report has it."""
    if not report:
        return None
    accuracy = dict(artifact.get("accuracy") or {})
    data = report.get("data") or {}
    return _no_paths({"name": accuracy.pop("metric", data.get("metric")),
                      "evaluation": data.get("evaluation"), **accuracy})


def _manifest(source: _Source, target: str, spec: TargetSpec, loaded, model_files: list[str],
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
        "libraries": {k: _version(k) for k in ("numpy", "onnx", "onnxruntime", "openvino")},
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
        "preprocessing": _no_paths((report.get("input") or {}).get("preprocessing")),
        "labels": {"file": "labels.txt", "count": len(labels)} if labels else None,
        **({"labels_note": label_note} if label_note else {}),
        "metric": _metric(report, artifact),
        "quantization": _no_paths({"calibrator": quant.get("calibrator"),
                                   "calibration": quant.get("calibration"),
                                   **{k: quant[k] for k in ("excluded_nodes", "reverted_to_fp32",
                                                            "integer_kernels", "notes")
                                      if k in quant}}) if quant and precision == "int8" else None,
        "pruning": _no_paths(report.get("pruning")),
        "palettization": palettization,
        "latency": _latency(source),
        "reference": {"file": REFERENCE, "samples": len(inputs), "inputs_from": input_note,
                      "computed_with": f"{spec.host_adapter} on the bundled model itself",
                      "arrays": {**{f"input.{i}": s.name for i, s in enumerate(loaded.inputs)},
                                 **{f"output.{j}": s.name
                                    for j, s in enumerate(loaded.outputs)}}},
        "tolerance": tolerance_for(precision, outputs, loaded.outputs),
        "notes": notes,
    }
