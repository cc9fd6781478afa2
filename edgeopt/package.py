"""`edgeopt package`: an app bundle per target from an optimize run (or a plain ONNX model).

| target | model in the bundle | runtime on the device |
|---|---|---|
| android, ios | ``model.ort`` + ``required_operators.config`` | ONNX Runtime (Mobile / a reduced build) |
| linux-arm | ``model.onnx`` | ONNX Runtime's CPU EP on aarch64 |
| openvino | ``model.xml`` + ``model.bin`` | OpenVINO |

Every bundle also holds ``reference.npz`` (inputs, and the outputs the bundled model itself
gave for them at build time) and ``manifest.json`` (see ``edgeopt._package_manifest``), so
``edgeopt verify`` on the device can prove it computes what it computed here.

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

import tempfile
from collections.abc import Callable
from pathlib import Path

from edgeopt._outdir import write_json_atomic

# The constants and tolerance_for are re-exported: they were public names of this module.
from edgeopt._package_manifest import (  # noqa: F401
    LABEL_NOTES,
    LABELS,
    REFERENCE_BYTES,
    REFERENCE_MAX_SAMPLES,
    REFERENCE_SEED,
    TOLERANCE,
    _labels,
    _latency,
    _manifest,
    _reference_arrays,
    _reference_inputs,
    latency_path,
    reference_count,
    sample_bytes,
    tolerance_for,
)
from edgeopt._package_payload import (  # noqa: F401
    ORT_CONVERSION,
    _host_load,
    _model_files,
    _palettize,
)
from edgeopt._package_source import BundleSource, TargetSpec, read_report, run_source
from edgeopt.backends import get_backend, package_targets
from edgeopt.bundle import REFERENCE, file_entries, npz_bytes, write_bundle
from edgeopt.convert import file_sha256
from edgeopt.errors import UsageError

__all__ = ["TARGETS", "package_model", "package_run"]

Progress = Callable[[int, int], None]

TARGETS = package_targets()      # target -> TargetSpec, from the backends


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
    report = read_report(run_dir)
    source = run_source(run_dir, report, spec, precision, palettize)
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
    if suffix == ".xml" and spec.model_format == "openvino-ir":
        files = {"xml": model, "bin": model.with_suffix(".bin")}
        if not files["bin"].is_file():
            msg = f"{model}: its weights {files['bin'].name} are not beside it"
            raise UsageError(msg)
    elif suffix == ".onnx":
        files = {"onnx": model}
        if model.stat().st_size == 0:
            msg = f"cannot package '{model}': the file is empty (0 bytes)"
            raise UsageError(msg)
    else:
        what = ".onnx or .xml (OpenVINO IR)" if spec.model_format == "openvino-ir" else ".onnx"
        msg = f"cannot package '{model}' for {target}: expected a {what} file or a run folder"
        raise UsageError(msg)
    source = BundleSource(model.stem, _precision_of(files), spec.runtime, files,
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


# --- building --------------------------------------------------------------------------

def _build(source: BundleSource, target: str, out: Path, palettize, group_size, max_accuracy_drop,
           progress: Progress | None) -> dict:
    spec = TARGETS[target]
    _check_out(out, [p for p in source.files.values()])
    if palettize is not None and get_backend(spec.runtime).format != "onnx":
        onnx_targets = [t for t, s in TARGETS.items() if get_backend(s.runtime).format == "onnx"]
        msg = (f"--palettize writes ONNX lookup-table weights for ONNX targets "
               f"({', '.join(onnx_targets)}); for {target} use its INT8 artifact")
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
        first, _ = _reference_inputs(source, loaded.inputs, 1)   # sizes one sample
        model_bytes = sum(len(files[name]) for name in model_files)
        n = reference_count(sample_bytes(first[0], loaded.run(first[0])), model_bytes)
        inputs, input_note = _reference_inputs(source, loaded.inputs, n)
        outputs = [loaded.run(feeds) for feeds in inputs]
        tick(3)
        reference = _reference_arrays(loaded, inputs, outputs)
        files[REFERENCE] = npz_bytes(reference)
        precision = source.precision
        labels, label_note = _labels(source)
        if labels is not None:
            files["labels.txt"] = ("\n".join(labels) + "\n").encode()
        manifest = _manifest(source, target, spec, loaded, files, model_files, conversion,
                             precision, inputs, outputs, input_note, palettization, labels,
                             label_note)
        tick(4)
        sha = write_bundle(out, files, manifest)
        latency = _latency(source)
        if latency:
            write_json_atomic(latency_path(out), {"bundle": out.name, "bundle_sha256": sha,
                                                  "latency": latency})
        tick(5)
    return {**manifest, "files": file_entries(files), "latency": latency}


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
