"""The backend registry: a new runtime is one module plus one registry entry.

A fake backend, registered here and nowhere else, goes through `edgeopt.optimize` with the
real ones: the pipeline builds, evaluates and reports its artifacts without knowing it.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from edgeopt.backends import BACKENDS, Artifact, Backend, QuantJob, get_backend, runtime_names

ROOT = Path(__file__).resolve().parents[2]
FAST_BENCH = dict(warmup=1, min_iterations=3, min_seconds=0.0, repeats=1)


class FakeBackend(Backend):
    """ONNX files under another name, "quantized" by ONNX Runtime's dynamic quantizer."""

    runtime = "fake-rt"
    label = "Fake runtime"
    host_adapter = "ort-cpu"
    format = "fake-onnx"

    def __init__(self) -> None:
        self.quantized: list[tuple[str, ...]] = []

    def artifact_files(self, name: str, precision: str) -> tuple[str, ...]:
        return (f"{name}.{precision}-fake.onnx",)

    def build_fp32(self, name, fp32_onnx, staging, steps, check_parity):
        file = self.artifact_files(name, "fp32")[0]
        with steps.step("ONNX -> fake"):
            shutil.copyfile(fp32_onnx, staging.path(file))
            parity = check_parity("ONNX -> fake", staging.path(file))
        return Artifact(file, self.format, "fp32", self.runtime), {"name": "ONNX -> fake",
                                                                  "parity": parity}

    def quantize(self, job: QuantJob) -> Artifact:
        from onnxruntime.quantization import quantize_dynamic

        self.quantized.append(job.config.exclude_nodes)
        file = self.artifact_files(job.name, "int8")[0]
        with job.steps.step("quantize INT8 for the fake runtime"):
            quantize_dynamic(str(job.fp32_onnx), str(job.path(file)))
        return Artifact(file, self.format, "int8", self.runtime,
                        quantization={"calibrator": job.config.calibrator,
                                      "excluded_nodes": [], "notes": ["dynamic"]})


@pytest.fixture
def fake_backend(monkeypatch) -> FakeBackend:
    backend = FakeBackend()
    monkeypatch.setitem(BACKENDS, backend.runtime, backend)
    return backend


def test_registry_resolves_every_backend_and_names_its_runtime():
    for runtime in runtime_names():
        backend = get_backend(runtime)
        assert backend.runtime == runtime
        assert backend.artifact_files("m", "fp32") and backend.artifact_files("m", "int8")
    with pytest.raises(KeyError, match="unknown runtime 'nope'"):
        get_backend("nope")


def test_a_registered_fake_backend_runs_through_optimize(fake_backend, tiny_onnx, tmp_path):
    import edgeopt
    from edgeopt import Recipe

    recipe = Recipe(runtimes=("onnxruntime", "fake-rt"))
    report = edgeopt.optimize(tiny_onnx, recipe=recipe, out=tmp_path / "out", calib="random",
                              bench=edgeopt.runtimes.BenchProtocol(**FAST_BENCH))
    assert isinstance(report, edgeopt.Report)
    fake = {a.precision: a for a in report.artifacts if a.runtime == "fake-rt"}
    assert set(fake) == {"fp32", "int8"}
    assert (tmp_path / "out" / "tiny.fp32-fake.onnx").is_file()
    assert (tmp_path / "out" / "tiny.int8-fake.onnx").is_file()
    # evaluated on its backend against the FP32 source, like every artifact
    assert fake["fp32"].accuracy["value"] == pytest.approx(1.0, abs=1e-5)
    assert 0.5 < fake["int8"].accuracy["value"] <= 1.0 + 1e-6
    # no device profile runs the fake runtime: its artifacts are listed, never timed
    assert fake["int8"].bench["label"] == "unavailable"
    assert fake_backend.quantized == [()]
    steps = {s["name"]: s for s in report.steps}
    assert steps["ONNX -> fake"]["parity"]["cosine"] > 0.9999
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["recipe"]["runtimes"] == ["onnxruntime", "fake-rt"]
    assert {a["path"] for a in written["artifacts"]} >= {"tiny.int8-fake.onnx"}


def _runtime_literals(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names]


def test_only_backends_and_runtimes_name_a_runtime():
    """The core and the leaves ask the registry or take a parameter: no runtime or
    host-adapter name is spelled outside the backend modules (runtimes/ is the runtimes'
    own package)."""
    names = set(runtime_names())
    names |= {get_backend(r).host_adapter for r in runtime_names()}
    core = [p for p in (ROOT / "edgeopt").rglob("*.py") if "backends" not in p.parts]
    leaves = [p for d in ("calibrate", "convert", "reference_models")
              for p in (ROOT / d).rglob("*.py")]
    found = [hit for p in core + leaves for hit in _runtime_literals(p, names)]
    assert found == []


class DriftingBackend(FakeBackend):
    """A runtime whose INT8 artifact drifts: its weights come out 40% off (as a recurrent
    state quantized badly would), while the other runtime's stays exact."""

    runtime = "drifting-rt"

    def quantize(self, job: QuantJob) -> Artifact:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(job.fp32_onnx))
        for init in model.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.4, init.name))
        file = self.artifact_files(job.name, "int8")[0]
        onnx.save(model, str(job.path(file)))
        return Artifact(file, self.format, "int8", self.runtime,
                        quantization={"calibrator": job.config.calibrator,
                                      "excluded_nodes": [], "notes": []})


def test_an_artifact_that_loses_accuracy_on_one_runtime_is_never_ok(monkeypatch, tiny_onnx,
                                                                    tmp_path):
    import edgeopt

    backend = DriftingBackend()
    monkeypatch.setitem(BACKENDS, backend.runtime, backend)
    report = edgeopt.optimize(tiny_onnx, out=tmp_path / "out", calib="random",
                              runtimes=("onnxruntime", "drifting-rt"),
                              bench=edgeopt.runtimes.BenchProtocol(**FAST_BENCH))
    status = {(a.runtime, a.precision): a.status for a in report.artifacts}
    assert status[("drifting-rt", "int8")] == "accuracy-drop"
    assert status[("onnxruntime", "int8")] in {"ok", "slower-than-fp32"}
    drifted = next(a for a in report.artifacts if a.path == "tiny.int8-fake.onnx")
    assert drifted.accuracy["outputs"][0]["sqnr_db"] < 10
    assert any("tiny.int8-fake.onnx: accuracy-drop: logits: SQNR" in w for w in report.warnings)
