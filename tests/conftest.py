"""Shared fixtures: tiny models built in code, and a CLI runner."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))   # lets specs like 'tiny_models:tiny_cnn' import


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(path: Path) -> list[str]:
    """Every file and folder under ``path`` (relative), to prove nothing was written."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def int8_quantization(run_cli, model, out: Path, *args) -> dict[str, dict]:
    """``edgeopt optimize model --calib random`` into ``out`` with ``args``, which must
    succeed; the report's quantization block of each INT8 artifact, by runtime."""
    result = run_cli("optimize", model, "--out", out, "--calib", "random", "--quiet", *args)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    return {a["runtime"]: a["quantization"] for a in report["artifacts"]
            if a["precision"] == "int8"}


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    """A 1x3x8x8 -> 1x4 Conv/Relu/GlobalAveragePool/Gemm ONNX model."""
    from tiny_models import save_tiny_onnx

    return save_tiny_onnx(tmp_path / "tiny.onnx")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """Run `edgeopt ARGS` in-process; returns exit code, stdout, stderr."""
    from edgeopt.cli import main

    def run(*args: str) -> CliResult:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def host_isa(monkeypatch):
    """``host_isa(flags)`` makes the host-cpu profile's ISA ``flags`` for the rest of the
    test (e.g. ``("avx2",)``: an x86 CPU whose int8 kernels saturate without VNNI)."""
    import edgeopt.runtimes._profile_validation as validation

    real = validation.detect_host

    def set_isa(flags) -> None:
        monkeypatch.setattr(validation, "detect_host", lambda: {**real(), "isa": tuple(flags)})

    return set_isa


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty cache of its own: the suite never writes to ~/.cache, and
    no test reuses another's steps, nor ONNX Runtime build stages kept in the process
    (calibrate/reuse.py: a test may patch what made them)."""
    from edgeopt.calibrate import reuse

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path_factory.mktemp("edgeopt-cache")))
    reuse.clear()
