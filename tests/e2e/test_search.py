"""`edgeopt search` on digits-cnn with real builds: best/recipe.yaml replays the best
trial, and local and Ray give the same pareto.json (minutes: marked slow)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from edgeopt.cli import main

pytest.importorskip("optuna")
pytestmark = pytest.mark.slow

SPACE = """params:
  calibrator: {choices: [mean-minmax, minmax, kmeans]}
  keep_first_fp32: {choices: [false, true]}
  prune_mode: {choices: [null, channels]}
  prune_ratio: {low: 0.1, high: 0.3, step: 0.1, when: {prune_mode: channels}}
  epochs: {choices: [1], when: {prune_mode: channels}}
"""


def _search(tmp_path, name: str, *extra: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    argv = ["search", "ref:digits-cnn", "--device", "host-cpu", "--trials", "4", "--seed", "0",
            "--latency", "estimated", "--space", str(space), "--out", str(tmp_path / name),
            "--quiet", *extra]
    assert main(argv) == 0


def test_best_recipe_replays_the_best_trial_exactly(tmp_path):
    _search(tmp_path, "S")
    out = tmp_path / "S"
    for name in ("trials.csv", "pareto.json", "plot-host-cpu_cpu.png", "best/recipe.yaml",
                 "best/report.json", "study.db"):
        assert (out / name).is_file(), name
    pareto = json.loads((out / "pareto.json").read_text())
    best = pareto["best_trial"]
    row = next(r for r in csv.DictReader((out / "trials.csv").open()) if int(r["trial"]) == best)
    assert main(["optimize", "--recipe", str(out / "best" / "recipe.yaml"), "--no-bench",
                 "--out", str(tmp_path / "replay"), "--quiet"]) == 0
    report = json.loads((tmp_path / "replay" / "report.json").read_text())
    art = next(a for a in report["artifacts"] if a["path"] == row["artifact"])
    assert art["sha256"] == row["sha256"]
    assert f"{art['accuracy']['value']:.6g}" == row["accuracy"]
    assert "(estimated)" in (out / "best" / "recipe.yaml").read_text()


@pytest.mark.skipif(not __import__("importlib").util.find_spec("ray"), reason="needs ray")
def test_local_and_ray_give_the_same_pareto_json(tmp_path):
    _search(tmp_path, "local")
    _search(tmp_path, "ray", "--executor", "ray")
    local, ray = (tmp_path / "local" / "pareto.json"), (tmp_path / "ray" / "pareto.json")
    assert local.read_bytes() == ray.read_bytes()
    assert json.loads(local.read_text())["front"]
    # local builds run here, so their busy cores are known; Ray's run in its workers
    summary = {name: json.loads((tmp_path / name / "search.json").read_text())
               for name in ("local", "ray")}
    assert 0 < summary["local"]["build_cores_in_use"] <= (os.cpu_count() or 1) + 0.5
    assert summary["local"]["build_phase_cpu_s"] > 0
    assert "build_cores_in_use" not in summary["ray"]
