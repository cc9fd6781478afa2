"""Every zoo model goes through ``edgeopt.optimize`` on every runtime (issue 20).

Each run: random or factory calibration data (8 samples), 8 held-out samples, no
benchmark. Every artifact must exist with per-output figures; every INT8 artifact must
pass the default gate (status ``ok``) and name in its notes the ops it cannot quantize.
A ``build_*`` function in the zoo that is not in ``ZOO`` fails the first test.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import edgeopt
import zoo
from edgeopt.backends import runtime_names
from zoo import MODULES, ZOO

PATTERNS = {  # issue 20's list, and the dtypes it names
    "residual CNN", "BatchNorm", "depthwise-separable", "squeeze-excite", "hard-swish",
    "attention", "LayerNorm", "LSTM", "GRU", "state in/out", "1-D conv audio",
    "Sigmoid scores", "box regression", "Concat", "upsample", "skip concat", "multi-input",
    "multi-output", "scalar input", "opset 11", "opset 12", "dynamic axes", "int64 input",
    "bool input", "float16 input",
}


def _builders_in_files() -> set[str]:
    """Every ``build_*`` function defined in a file of tests/zoo, read from the source."""
    names = set()
    for path in Path(zoo.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names |= {node.name for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name.startswith("build_")}
    return names


def test_every_zoo_builder_is_registered_and_run():
    registered = {entry.build.__name__ for entry in ZOO.values()}
    assert _builders_in_files() == registered == {f"build_{name}" for name in ZOO}
    in_modules = {n for m in MODULES for n in vars(m) if n.startswith("build_")}
    assert in_modules == registered


def test_the_zoo_covers_issue_20s_patterns():
    covered = {pattern for entry in ZOO.values() for pattern in entry.covers}
    assert len(ZOO) >= 12
    assert PATTERNS <= covered, sorted(PATTERNS - covered)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_optimizes_on_every_runtime(name, tmp_path):
    entry = ZOO[name]
    model = entry.build(tmp_path)
    out = tmp_path / "out"
    edgeopt.optimize(str(model), out=out, calib=entry.calib, calib_samples=8,
                     eval_samples=8, benchmark=False, input_shape=entry.input_shape)
    report = json.loads((out / "report.json").read_text())
    artifacts = {(a["runtime"], a["precision"]): a for a in report["artifacts"]}
    assert set(artifacts) == {(r, p) for r in runtime_names() for p in ("fp32", "int8")}
    outputs = _output_names(out / next(a["path"] for a in report["artifacts"]
                                       if a["path"].endswith(".fp32.onnx")))
    for (runtime, precision), art in artifacts.items():
        assert all((out / f).is_file() for f in art["files"] or [art["path"]])
        figures = art["accuracy"]["outputs"]
        assert [f["output"] for f in figures] == outputs, (runtime, precision)
        floor = 0.9999 if precision == "fp32" else 0.99
        assert all(f["cosine"] >= floor for f in figures), (runtime, precision, figures)
        assert art["status"] == "ok", (runtime, precision, report["warnings"])
        if precision == "int8":
            notes = " | ".join(art["quantization"]["notes"])
            for op in entry.noted_ops:
                assert op in notes, (runtime, op, notes)
    assert sorted(report["data"].get("state_inputs", {})) == sorted(entry.state_inputs)
    shapes = {i["name"]: i["shape"] for i in report["input"]["inputs"]}
    if "scalar input" in entry.covers:
        assert shapes["sr"] == []


def _output_names(onnx_path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]
