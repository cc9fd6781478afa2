"""The model in a bundle target's format (ONNX, ORT with its reduced-build config, OpenVINO
IR), and optional palettization of it before conversion. Used by :mod:`edgeopt.package`, whose
docstring says why the ORT conversion is done as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt._package_source import BundleSource, TargetSpec, dist_version, no_paths
from edgeopt.backends import get_backend, onnx_runner
from edgeopt.convert.ort_format import OPS_CONFIG, to_ort, widen_4bit
from edgeopt.errors import UsageError

ORT_CONVERSION = {"converter": "onnxruntime.tools.convert_onnx_models_to_ort (same options)",
                  "optimization_style": "Fixed", "optimization_level": "extended",
                  "target_platform": "arm"}


def _model_files(source: BundleSource, spec: TargetSpec, onnx_path: Path | None, work: Path,
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
                  **{lib: dist_version(lib) for lib in get_backend(spec.runtime).libraries[:1]}}
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


def _host_load(spec: TargetSpec, model: Path):
    from edgeopt.runtimes import get_adapter

    return get_adapter(spec.host_adapter).load(model)


# --- palettization ---------------------------------------------------------------------

def _palettize(source: BundleSource, onnx_path: Path | None, work: Path, bits: int,
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
              "report": no_paths(_jsonable(result))}
    return out, record


def _evaluator(source: BundleSource):
    """``evaluate(model.onnx) -> metric`` on the run's evaluation set, where it can be rebuilt
    (reference models: their own set and metric); else (None, why)."""
    report = source.report or {}
    spec = (report.get("input") or {}).get("spec") or ""
    if (report.get("input") or {}).get("kind") != "reference" or not spec.startswith("ref:"):
        return None, ("the run's evaluation data is not in its folder (only reference-model "
                      "runs can be re-evaluated), so palettization was not evaluated")
    from edgeopt.reference_models import get_reference
    reference = get_reference(spec[4:])
    recipe = report.get("recipe") or {}
    # schema 1 held a flat config; schema 2 nests the data settings
    eval_samples = (recipe.get("data") or recipe).get("eval_samples")
    eval_set = reference.evaluation_set(eval_samples)
    ort = onnx_runner()
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
