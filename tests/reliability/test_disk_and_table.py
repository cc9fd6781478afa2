"""A full disk is named (issue 22, item 7); the results table says `unstable` (item 13)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

TINY = ("--calib", "random", "--runtime", "onnxruntime", "--quiet", "--bench-iterations", "2",
        "--bench-seconds", "0", "--bench-repeats", "1", "--warmup", "1")


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_in_a_step_is_named_and_nothing_is_left(run_cli, tiny_onnx, tmp_path,
                                                          monkeypatch):
    import edgeopt.report

    def full(folder, *args, **kwargs):
        raise _enospc(Path(folder) / "report.json")

    monkeypatch.setattr(edgeopt.report, "write", full)
    out = tmp_path / "out"
    result = run_cli("optimize", tiny_onnx, "--out", out, *TINY)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "no space left on device writing" in lines[0], result.err
    assert "report.json" in lines[0]
    assert not out.exists()


def test_disk_full_behind_a_library_error_is_named(run_cli, tiny_onnx, tmp_path, monkeypatch):
    """The chain is followed: a step's own error caused by ENOSPC says so."""
    import edgeopt.steps
    from edgeopt.convert.errors import ExportError

    def export(state, *args, **kwargs):
        try:
            raise _enospc(tmp_path / "out" / "tiny.fp32.onnx")
        except OSError as e:
            raise ExportError("torch -> ONNX export", "write failed") from e

    monkeypatch.setattr(edgeopt.steps, "export", export)
    monkeypatch.setattr(edgeopt.steps, "OPTIMIZE", (export,))
    monkeypatch.setattr("edgeopt.pipeline.OPTIMIZE", (export,))
    result = run_cli("optimize", tiny_onnx, "--out", tmp_path / "out", *TINY)
    assert result.code == 2
    assert "no space left on device writing" in result.err and "tiny.fp32.onnx" in result.err


def test_openvino_iostream_error_on_a_full_disk_is_named(tiny_onnx, tmp_path, monkeypatch):
    import openvino as ov

    from edgeopt.convert.errors import ExportError
    from edgeopt.convert.onnx_to_ir import to_openvino_ir

    def save_model(*args, **kwargs):
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1:\n"
                           "basic_ios::clear: iostream error")

    class Full:
        f_bavail, f_frsize = 1, 4096

    monkeypatch.setattr(ov, "save_model", save_model)
    monkeypatch.setattr("edgeopt.convert.onnx_to_ir.os.statvfs", lambda path: Full())
    with pytest.raises(ExportError, match=r"no space left on device writing .*m\.bin"):
        to_openvino_ir(tiny_onnx, tmp_path / "m.xml")
    assert list(tmp_path.iterdir()) == [tiny_onnx]


def test_results_table_and_report_md_show_unstable():
    from rich.console import Console

    from edgeopt._markdown import shown_status
    from edgeopt._tables import artifacts_table

    def art(status, unstable):
        return {"path": f"m-{status}-{unstable}.onnx", "runtime": "onnxruntime",
                "device": "host-cpu:cpu", "precision": "int8", "size_bytes": 1024,
                "status": status, "accuracy": None, "speedup_vs_fp32": 1.0,
                "bench": {"label": "measured", "p50_ms": 1.0, "p90_ms": 1.2, "cv": 0.2,
                          "unstable": unstable}}

    report = {"input": {"spec": "m.onnx"}, "data": {"metric": "cosine"},
              "artifacts": [art("ok", True), art("ok", False), art("slower-than-fp32", True)]}
    console = Console(width=250, record=True)
    console.print(artifacts_table(report))
    rows = [line for line in console.export_text().splitlines() if "m-" in line]
    assert "unstable" in rows[0] and " ok " not in rows[0]
    assert "unstable" not in rows[1] and " ok " in rows[1]
    assert "slower-than-fp32, unstable" in rows[2]
    assert [shown_status(a) for a in report["artifacts"]] == [
        "unstable", "ok", "slower-than-fp32, unstable"]
