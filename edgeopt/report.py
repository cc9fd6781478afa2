"""The run's report as typed records: ``report.json`` (schema-versioned), ``report.md`` and
``recipe.yaml`` are all written from a :class:`Report`."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeopt import __version__
from edgeopt._markdown import prune_markdown, to_markdown
from edgeopt._outdir import write_json_atomic, write_text_atomic
from edgeopt.recipe import Recipe

__all__ = ["SCHEMA_VERSION", "ArtifactRecord", "Report", "header", "library_versions", "write"]

# 2: "recipe" is the nested Recipe (data, quant, prune, package, bench), not a flat config.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
CORE_LIBRARIES = ("numpy", "onnx", "onnxscript", "torch")


def library_versions() -> dict[str, str | None]:
    from edgeopt.backends import get_backend, runtime_names

    names = [*CORE_LIBRARIES, *(lib for r in runtime_names() for lib in get_backend(r).libraries)]
    versions = {}
    for name in sorted(dict.fromkeys(names)):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_info() -> dict:
    from edgeopt.runtimes import load_devices

    info = {"platform": platform.platform(), "machine": platform.machine(),
            "python": sys.version.split()[0]}
    try:
        host = load_devices().get("host-cpu")
        cpu = host.units[0]
        info.update({"cpu": host.name, "cores": cpu.cores, "isa": list(cpu.isa or ()),
                     "memory_gb": cpu.memory_gb})
    except Exception as e:  # the report must not fail on host detection
        info["detection_error"] = str(e)
    return info


@dataclass
class ArtifactRecord:
    """One artifact in the report: on one device for ``optimize``, as a file for ``prune``."""

    path: str
    format: str
    size_bytes: int
    sha256: str
    precision: str | None = None
    files: list[str] | None = None
    runtime: str | None = None
    device: str | None = None
    adapter: str | None = None
    size_zipped_bytes: int | None = None
    sha256_files: dict[str, str] | None = None
    accuracy: dict | None = None
    quantization: dict | None = None
    status: str | None = None               # ok | slower-than-fp32 (optimize)
    bench: dict | None = None
    speedup_vs_fp32: float | None = None
    unavailable: str | None = None          # why the device could not be measured here
    unsupported_ops: list[str] | None = None
    static_shapes: str | None = None
    exporter: str | None = None             # prune: which exporter wrote it
    parity: dict | None = None              # prune: torch -> ONNX parity
    load_with: str | None = None            # prune: how to load the weights file

    def to_dict(self) -> dict:
        # An optimize record always states its device, accuracy and quantization, null or not.
        always = {"device", "accuracy", "quantization"} if self.status is not None else set()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None or f.name in always}


@dataclass
class Report:
    """What one run did and measured. ``to_dict()`` is ``report.json``."""

    created_at: str
    edgeopt: str
    libraries: dict[str, str | None]
    host: dict
    input: dict
    recipe: Recipe
    data: dict
    steps: list[dict] = field(default_factory=list)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pruning: dict | None = None
    accuracy_budget: Any = None             # edgeopt.budget.Budget, with a budget set
    tradeoffs: list[dict] = field(default_factory=list)   # edgeopt.tradeoffs: each weighed
    duration_s: float | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        out = {"schema_version": self.schema_version, "created_at": self.created_at,
               "edgeopt": self.edgeopt, "libraries": self.libraries, "host": self.host,
               "input": self.input, "recipe": self.recipe.to_dict(), "data": self.data,
               "steps": self.steps}
        if self.pruning is not None:
            out["pruning"] = self.pruning
        out["artifacts"] = [a.to_dict() for a in self.artifacts]
        if self.accuracy_budget is not None:
            out["accuracy_budget"] = self.accuracy_budget.to_dict()
        if self.tradeoffs:
            out["tradeoffs"] = self.tradeoffs
        out["warnings"] = self.warnings
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        return out


def header(recipe: Recipe, prepared) -> dict:
    """The fields of a :class:`Report` that describe the run rather than its results."""
    source = prepared.source
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgeopt": __version__,
        "libraries": library_versions(),
        "host": host_info(),
        "input": {"spec": recipe.model, "kind": source.kind,
                  "path": str(source.path) if source.path else None, "sha256": source.sha256,
                  "inputs": [{"name": n, "dtype": d, "shape": list(s)}
                             for n, d, s in prepared.input_specs],
                  "preprocessing": prepared.preprocessing or None},
        "recipe": recipe,
        "data": {"calibration": prepared.calib_note, "evaluation": prepared.eval_note,
                 "metric": prepared.metric,
                 **({"state_inputs": dict(prepared.states)} if prepared.states else {})},
    }


def write(folder: Path, report: Report, *, prune: bool = False) -> list[str]:
    """Write report.json, report.md and recipe.yaml into ``folder``; returns their names."""
    data = report.to_dict()
    write_json_atomic(folder / "report.json", data)
    write_text_atomic(folder / "report.md", (prune_markdown if prune else to_markdown)(data))
    report.recipe.to_yaml(folder / "recipe.yaml")
    return ["report.json", "report.md", "recipe.yaml"]
