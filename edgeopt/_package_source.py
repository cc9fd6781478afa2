"""What a bundle is built from: the optimize run's folder (its report and chosen artifact) or a
model file, as a ``BundleSource``; the helpers the bundle's parts share. Used by
:mod:`edgeopt.package`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.backends import TargetSpec
from edgeopt.convert import file_sha256
from edgeopt.errors import UsageError


@dataclass
class BundleSource:
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


# --- the run folder --------------------------------------------------------------------

def read_report(run_dir: Path) -> dict:
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
    from edgeopt.report import READABLE_SCHEMAS

    if report.get("schema_version") not in READABLE_SCHEMAS or not isinstance(
            report.get("artifacts"), list):
        known = " or ".join(map(str, READABLE_SCHEMAS))
        msg = f"{path}: report schema_version {report.get('schema_version')!r} is not {known}"
        raise UsageError(msg)
    return report


def _check_artifacts(run_dir: Path, report: dict) -> None:
    """Every artifact record has the keys packaging reads, as strings; collected in one pass."""
    problems = []
    for i, a in enumerate(report["artifacts"]):
        if not isinstance(a, dict):
            problems.append(f"artifacts[{i}] is not an object")
            continue
        for key in ("path", "runtime", "precision", "format"):
            if not isinstance(a.get(key), str) or not a.get(key):
                problems.append(f"artifacts[{i}] has no {key}")
        files = a.get("files")
        if files is not None and (not isinstance(files, list)
                                  or not all(isinstance(f, str) for f in files)):
            problems.append(f"artifacts[{i}].files is not a list of names")
    if problems:
        msg = f"{run_dir / 'report.json'}: {'; '.join(problems)}; rerun optimize"
        raise UsageError(msg)


def _run_file(run_dir: Path, name: str, artifact: dict) -> Path:
    """A file of the run, checked: inside the run folder, listed with a sha256, matching it."""
    root = run_dir.resolve()
    path = (run_dir / name)
    if Path(name).is_absolute() or ".." in Path(name).parts or \
            not path.resolve().is_relative_to(root):
        msg = (f"{run_dir}: report.json lists {name!r}, which is outside the run folder; "
               "package takes only the run's own files")
        raise UsageError(msg)
    if not path.is_file():
        msg = f"{run_dir}: {name}, listed in report.json, is missing"
        raise UsageError(msg)
    sums = artifact.get("sha256_files") if isinstance(artifact.get("sha256_files"), dict) else {}
    expected = sums.get(name) or (artifact.get("sha256") if name == artifact["path"] else None)
    if not isinstance(expected, str):
        msg = (f"{run_dir}: {name} has no sha256 in report.json; package takes only files the "
               "run listed with their checksums (rerun optimize)")
        raise UsageError(msg)
    if file_sha256(path) != expected:
        msg = (f"{run_dir}: {name} changed since report.json was written (sha256 differs); "
               "rerun optimize")
        raise UsageError(msg)
    return path


def run_source(run_dir: Path, report: dict, spec: TargetSpec, precision: str | None,
                palettize: int | None) -> BundleSource:
    _check_artifacts(run_dir, report)
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
    roles = {".onnx": "onnx", ".xml": "xml", ".bin": "bin"}
    for name in artifact.get("files") or [artifact["path"]]:
        path = _run_file(run_dir, name, artifact)
        if path.suffix not in roles:
            msg = f"{run_dir}: {name}, listed in report.json, is not a model file"
            raise UsageError(msg)
        files[roles[path.suffix]] = path
    spec_text = report.get("input", {}).get("spec") or ""
    origin = {"kind": "edgeopt optimize run", "model": _model_label(spec_text),
              "artifact": artifact["path"], "sha256": artifact.get("sha256"),
              "run_edgeopt": report.get("edgeopt")}
    name = Path(artifact["path"]).name.split(".")[0]
    fp32 = by_precision.get("fp32")
    fp32_onnx = (_run_file(run_dir, fp32["path"], fp32)
                 if fp32 and fp32["format"] == "onnx" else None)
    return BundleSource(name, chosen, spec.runtime, files, origin, report, artifact, notes,
                        fp32_onnx=fp32_onnx)


def _model_label(spec: str) -> str:
    """The model as the run named it, without machine paths."""
    return spec if spec.startswith("ref:") or "/" not in spec else Path(spec).name


_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s,;()'\"]+/)*([^\s,;()'\"]+)")


def no_paths(text):
    """Notes from the report may name folders of the machine that ran it: keep base names."""
    if isinstance(text, str):
        return _ABS_PATH.sub(r"\1", text)
    if isinstance(text, list):
        return [no_paths(t) for t in text]
    if isinstance(text, dict):
        return {k: no_paths(v) for k, v in text.items()}
    return text


def dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
