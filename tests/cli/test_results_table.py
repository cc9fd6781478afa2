"""The results table never cuts a name so that two rows read the same (issue 20)."""

from __future__ import annotations

import re

import pytest

LONG = "a_rather_long_detector_name_from_some_package_v2"
PATHS = [f"{LONG}.fp32.onnx", f"{LONG}.int8-ort.onnx", f"{LONG}.fp32.xml", f"{LONG}.int8.xml"]


def _report() -> dict:
    def art(path, runtime, precision):
        return {"path": path, "runtime": runtime, "device": "host-cpu:cpu",
                "precision": precision, "size_bytes": 123456, "status": "ok",
                "accuracy": {"value": 0.98765}, "speedup_vs_fp32": 1.5,
                "bench": {"label": "measured", "p50_ms": 1.234, "p90_ms": 1.5, "cv": 0.01}}

    return {"input": {"spec": f"pkg.models.{LONG}:build"},
            "data": {"metric": "output_cosine_vs_fp32"},
            "artifacts": [art(PATHS[0], "onnxruntime", "fp32"),
                          art(PATHS[1], "onnxruntime", "int8"),
                          art(PATHS[2], "openvino", "fp32"), art(PATHS[3], "openvino", "int8")]}


def _column(text: str, index: int) -> list[str]:
    """The cell text of column ``index`` on every body line of a rendered rich table."""
    cells = []
    for line in text.splitlines():
        parts = re.split(r"[│┃]", line)
        if len(parts) > index + 1 and not set(line) & set("━─┳┡╇╈"):
            cells.append(parts[index + 1].strip())
    return cells


@pytest.mark.parametrize("width", [80, 60, 220])
def test_long_artifact_names_stay_whole_on_a_narrow_terminal(width, monkeypatch):
    from rich.console import Console

    from edgeopt._tables import artifacts_table

    monkeypatch.setenv("COLUMNS", str(width))
    console = Console(record=True, force_terminal=False)     # takes COLUMNS, as a terminal
    assert console.width == width
    console.print(artifacts_table(_report(), console.width))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    # every name whole (folded onto the next line at most, never cut), so no two rows look
    # the same; and every figure of every row is there
    flat = re.sub(r"[\s│┃]", "", text)
    at = [flat.index(p) for p in PATHS]
    assert at == sorted(at), at
    for figure in ("121", "1.234", "1.500", "0.010", "1.50x", "0.9877", "measured"):
        assert flat.count(figure) == len(PATHS), figure
    if max(map(len, PATHS)) + 4 <= width < 100:    # stacked: each name whole on its line
        lines = [line.strip("│┃ ") for line in text.splitlines()]
        assert [line for line in lines if line in PATHS] == PATHS


def test_the_table_keeps_its_columns_where_they_fit():
    from rich.console import Console

    from edgeopt._tables import artifacts_table

    console = Console(record=True, width=220)
    console.print(artifacts_table(_report(), console.width))
    header = next(line for line in console.export_text().splitlines() if "artifact" in line)
    assert all(col in header for col in ("runtime", "p50 ms", "vs FP32", "status"))


def test_bench_and_verify_tables_fold_too(capsys, monkeypatch):
    from edgeopt._output import Output

    monkeypatch.setattr("edgeopt._tables.console_width", lambda: 60)
    names = [f"{LONG}-{i}.onnx" for i in range(3)]
    Output(quiet=False).table("t", ["model", "p50 ms"], [[n, "1.0"] for n in names])
    text = capsys.readouterr().out
    assert "…" not in text
    assert "".join(c for c in _column(text, 0) if c and c != "model") == "".join(names)
