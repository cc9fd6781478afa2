"""The calibrate package's boundaries, read from its source with ``ast``: it does not import
edgeopt.convert, runs models only through edgeopt.runtimes (no ONNX Runtime session or
OpenVINO compile of its own), and no module uses another module's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import edgeopt.calibrate

CALIBRATE = Path(edgeopt.calibrate.__file__).parent
RUNTIME_ENTRY_POINTS = {"InferenceSession", "compile_model", "Core"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def boundary_problems(source: str, module: str) -> list[str]:
    """Every boundary broken in ``source``, the text of module ``module`` (dotted name)."""
    tree = ast.parse(source)
    problems = []
    project_modules: set[str] = set()           # local names bound to edgeopt modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("edgeopt.convert"):
                    problems.append(f"line {node.lineno}: imports {alias.name}")
                if alias.name.startswith("edgeopt.") and alias.asname:
                    project_modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("edgeopt.convert") or (
                    node.module == "edgeopt" and any(a.name == "convert" for a in node.names)):
                problems.append(f"line {node.lineno}: imports from {node.module}")
            if node.module.startswith("edgeopt") and node.module != module:
                for alias in node.names:
                    if _is_private(alias.name):
                        problems.append(f"line {node.lineno}: imports private "
                                        f"{node.module}.{alias.name}")
                    else:
                        project_modules.add(alias.asname or alias.name)
            for alias in node.names:
                if alias.name in RUNTIME_ENTRY_POINTS:
                    problems.append(f"line {node.lineno}: imports {alias.name} from "
                                    f"{node.module}")
        elif isinstance(node, ast.Attribute):
            if node.attr in RUNTIME_ENTRY_POINTS:
                problems.append(f"line {node.lineno}: uses .{node.attr}")
            if isinstance(node.value, ast.Name) and node.value.id in project_modules \
                    and _is_private(node.attr):
                problems.append(f"line {node.lineno}: uses private {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in RUNTIME_ENTRY_POINTS:
            problems.append(f"line {node.lineno}: uses {node.id}")
    return problems


def _calibrate_files() -> list[Path]:
    files = sorted(CALIBRATE.glob("*.py"))
    assert len(files) > 10, f"calibrate sources not found under {CALIBRATE}"
    return files


@pytest.mark.parametrize("path", _calibrate_files(), ids=lambda p: p.name)
def test_calibrate_module_keeps_its_boundaries(path: Path):
    module = f"edgeopt.calibrate.{path.stem}"
    assert boundary_problems(path.read_text(), module) == []


@pytest.mark.parametrize("source, found", [
    ("from edgeopt.convert.errors import first_line", "imports from edgeopt.convert.errors"),
    ("import edgeopt.convert.load", "imports edgeopt.convert.load"),
    ("from edgeopt import convert", "imports from edgeopt"),
    ("def f(m):\n    import onnxruntime as ort\n    return ort.InferenceSession(m)",
     "uses .InferenceSession"),
    ("def f(m):\n    import openvino as ov\n    return ov.Core().compile_model(m, 'CPU')",
     "uses .compile_model"),
    ("from onnxruntime import InferenceSession", "imports InferenceSession"),
    ("from edgeopt.calibrate.bias_correction import _channel_means", "imports private"),
    ("from edgeopt.calibrate import quantize\nquantize._staging()", "uses private quantize."),
    ("import edgeopt.calibrate.rounding as r\nr._layout(1, 2, 3)", "uses private r._layout"),
])
def test_the_check_finds_each_kind_of_breach(source: str, found: str):
    problems = boundary_problems(source, "edgeopt.calibrate.example")
    assert any(found in p for p in problems), problems


def test_the_check_allows_public_names_and_own_privates():
    source = ("from edgeopt.runtimes import capture_onnx\n"
              "from edgeopt.calibrate.example import _own\n"
              "from edgeopt.calibrate.bias_correction import dequantized\n"
              "def f(m, s):\n    return list(capture_onnx(m, s, ['x']))\n")
    assert boundary_problems(source, "edgeopt.calibrate.example") == []


def test_runtimes_imports_without_onnx_or_runtime_libraries():
    code = ("import sys\n"
            "import edgeopt.runtimes as r\n"
            "assert callable(r.capture_onnx) and callable(r.capture_openvino)\n"
            "print(','.join(m for m in ('torch', 'nncf', 'onnx', 'onnxruntime', 'openvino')"
            " if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == ""
