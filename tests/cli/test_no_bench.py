"""`edgeopt optimize --no-bench`: the CI build step writes artifacts, accuracy and report,
and times nothing."""

from __future__ import annotations

import json

import pytest
import yaml

import edgeopt.runtimes.bench as bench
from edgeopt.recipe import Recipe


@pytest.fixture
def workers(monkeypatch):
    """Every benchmark worker process that would start, recorded; a canned result instead."""
    started = []

    def fake_worker(job: dict) -> dict:
        started.append(job["model"])
        return {"times_ms": [1.0] * 5, "stopped": "ci", "load_ms": 1.0,
                "first_inference_ms": 1.0, "peak_rss_mb": 1.0, "info": {}}

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    return started


def test_no_bench_builds_and_evaluates_without_timing(run_cli, tmp_path, tiny_onnx, workers):
    out = tmp_path / "build"
    result = run_cli("optimize", tiny_onnx, "--calib", "random", "--out", out, "--no-bench",
                     "--quiet")
    assert result.code == 0, result.err
    assert workers == []
    report = json.loads((out / "report.json").read_text())
    arts = report["artifacts"]
    assert {(a["runtime"], a["precision"]) for a in arts} == {
        ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
        ("openvino", "int8")}
    for a in arts:
        assert (out / a["path"]).is_file()
        assert a["accuracy"]["value"] is not None
        assert a["bench"]["label"] == "not-run"
        assert "--no-bench" in a["bench"]["reason"]
        assert not {"p50_ms", "p50_ci95_ms", "iterations"} & set(a["bench"])
        assert a.get("speedup_vs_fp32") is None and a["status"] == "ok"
    assert yaml.safe_load((out / "recipe.yaml").read_text())["benchmark"] is False
    md = (out / "report.md").read_text()
    assert "not-run" in md and "Not timed: --no-bench" in md


def test_without_no_bench_the_same_run_starts_the_workers(run_cli, tmp_path, tiny_onnx,
                                                          workers):
    out = tmp_path / "build"
    result = run_cli("optimize", tiny_onnx, "--calib", "random", "--out", out, "--quiet",
                     "--bench-repeats", "1")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    # one per artifact, and 2 interleaved rounds of 2 for each weighed choice it timed
    timed = [t for t in report.get("tradeoffs", []) if "p50_ms_with" in t]
    assert len(workers) == 4 + 4 * len(timed)
    assert {a["bench"]["label"] for a in report["artifacts"]} == {"measured"}
    assert all(a["bench"]["stopped"] == "ci" for a in report["artifacts"])


def test_benchmark_is_a_recipe_field():
    recipe = Recipe(model="m.onnx").override(benchmark=False)
    assert recipe.benchmark is False
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe().benchmark is True
