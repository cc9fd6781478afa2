"""edgeopt search without builds: the front, the chosen point, the space file, the extras."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from edgeopt.errors import UsageError
from edgeopt.recipe import Recipe
from edgeopt.search.objectives import (
    Constraints,
    Objectives,
    choose_best,
    dominates,
    pareto_front,
    parse_latency_limits,
    violations,
)
from edgeopt.search.outputs import write_pareto
from edgeopt.search.space import default_space_path, load_space, trial_recipe

DIRECTIONS = ["maximize", "minimize", "minimize"]


def test_the_front_is_exactly_the_non_dominated_points():
    rng = np.random.default_rng(0)
    points = {i: [float(v) for v in rng.integers(0, 6, size=3)] for i in range(60)}
    front = pareto_front(points, DIRECTIONS)
    assert front, "a finite set always has a non-dominated point"
    for k in front:
        assert not any(dominates(points[j], points[k], DIRECTIONS) for j in points)
    for k in set(points) - set(front):
        assert any(dominates(points[j], points[k], DIRECTIONS) for j in front)


def test_dominance_follows_each_objectives_direction():
    assert dominates([0.9, 1.0, 1.0], [0.8, 1.0, 1.0], DIRECTIONS)      # higher metric
    assert not dominates([0.8, 1.0, 1.0], [0.9, 1.0, 1.0], DIRECTIONS)
    assert dominates([0.9, 1.0, 1.0], [0.9, 2.0, 1.0], DIRECTIONS)      # lower latency
    assert not dominates([0.9, 1.0, 1.0], [0.9, 1.0, 1.0], DIRECTIONS)  # equal: neither


def test_the_chosen_point_is_feasible_and_then_the_most_accurate():
    points = {0: [0.99, 9.0, 1.0], 1: [0.95, 2.0, 1.0], 2: [0.90, 1.0, 1.0]}
    assert choose_best(points, {0: True, 1: True, 2: True}, DIRECTIONS) == 0
    assert choose_best(points, {0: False, 1: True, 2: True}, DIRECTIONS) == 1
    assert choose_best(points, {0: False, 1: False, 2: False}, DIRECTIONS) is None


def test_constraints_are_positive_exactly_where_broken():
    obj = Objectives("top1", True, ("rpi5:cpu",))
    outcome = {"metric": 0.95, "size_bytes": 3_000_000,
               "latency": {"rpi5:cpu": {"p50_ms": 12.0, "label": "estimated"}}}
    held = violations(outcome, obj, Constraints(0.01, {"rpi5:cpu": 10.0}, 5.0), 0.97)
    assert held[0] > 0 and held[1] > 0 and held[2] < 0     # drop 0.02, 12 ms, 3 MB
    assert all(v <= 0 for v in violations(outcome, obj, Constraints(0.05, {"rpi5:cpu": 20.0},
                                                                     5.0), 0.97))


def test_latency_limits_name_searched_devices():
    assert parse_latency_limits(["rpi5=20"], ("host-cpu:cpu", "rpi5:cpu")) == {"rpi5:cpu": 20.0}
    with pytest.raises(UsageError, match="not a searched device"):
        parse_latency_limits(["rpi4=20"], ("rpi5:cpu",))
    with pytest.raises(UsageError, match="DEVICE=MS"):
        parse_latency_limits(["rpi5"], ("rpi5:cpu",))


def test_pareto_json_is_the_same_bytes_for_the_same_front(tmp_path):
    obj = Objectives("top1", True, ("rpi5:cpu",))
    front = [{"number": 3, "feasible": True, "values": [0.1 + 0.2, 1 / 3, 2.0],
              "labels": {"rpi5:cpu": "estimated"}, "recipe": Recipe(model="m.onnx").to_dict()},
             {"number": 1, "feasible": False, "values": [0.5, 0.25, 1.0],
              "labels": {"rpi5:cpu": "estimated"}, "recipe": Recipe(model="m.onnx").to_dict()}]
    write_pareto(tmp_path / "a.json", front, obj, 3, {})
    write_pareto(tmp_path / "b.json", list(reversed(front)), obj, 3, {})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    data = json.loads((tmp_path / "a.json").read_text())
    assert [p["trial"] for p in data["front"]] == [1, 3]
    assert data["front"][1]["values"]["top1"] == 0.3        # 6 significant digits
    assert "created_at" not in (tmp_path / "a.json").read_text()


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_default_spaces_load_and_make_recipes(kind):
    space = load_space(default_space_path(kind))
    names = [p.name for p in space.params]
    assert {"calibrator", "runtime", "fp32_stem", "keep_first_fp32"} <= set(names)
    assert ("prune_mode" in names) == (kind == "torch")


def test_a_trials_values_become_an_ordinary_recipe():
    recipe = trial_recipe(Recipe(model="ref:digits-cnn"),
                          {"runtime": "onnxruntime", "calibrator": "kmeans",
                           "prune_mode": "channels", "prune_ratio": 0.3, "epochs": 1})
    assert recipe.runtimes == ("onnxruntime",)
    assert recipe.quant.calibrator == "kmeans"
    assert (recipe.prune.mode, recipe.prune.ratio, recipe.prune.epochs) == ("channels", 0.3, 1)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert trial_recipe(recipe, {"prune_mode": None}).prune is None


@pytest.mark.parametrize(("text", "problem"), [
    ("params:\n  calibratr: {choices: [minmax]}\n", "unknown recipe option 'calibratr'"),
    ("params:\n  calibrator: {choices: [nope]}\n", "unknown --calibrator nope"),
    ("params:\n  prune_ratio: {low: 0.5, high: 0.1}\n", "low <= high"),
    ("params:\n  epochs: {choices: [1], when: {prune_mode: channels}}\n", "not in the space"),
    ("- a list\n", "expected a mapping 'params:'"),
])
def test_a_bad_space_file_is_one_line_naming_the_problem(tmp_path, text, problem):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match="--space .*space.yaml") as info:
        load_space(path)
    assert problem in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("module", "argv", "extra"), [
    ("optuna", ["search", "ref:digits-cnn", "--out", "S"], "edgeopt[search]"),
    ("ray", ["search", "ref:digits-cnn", "--out", "S", "--executor", "ray"], "edgeopt[ray]"),
])
def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capfd, tmp_path, module, argv, extra):
    from edgeopt.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert extra in err and len(err.splitlines()) == 1
    assert not (tmp_path / "S").exists()


def test_executor_ray_without_ray_names_the_extra(monkeypatch):
    from edgeopt.search.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"edgeopt\[ray\]"):
        make_executor("ray", None, ())


def test_a_build_share_caps_the_inference_threads(monkeypatch, tiny_onnx):
    from edgeopt.runtimes import get_adapter

    monkeypatch.delenv("EDGEOPT_THREADS", raising=False)
    default = get_adapter("ort-cpu").load(tiny_onnx).info["threads"]
    monkeypatch.setenv("EDGEOPT_THREADS", "1")
    assert get_adapter("ort-cpu").load(tiny_onnx).info["threads"] == 1
    assert get_adapter("ort-cpu").load(tiny_onnx, threads=3).info["threads"] == 3  # asked for
    monkeypatch.setenv("EDGEOPT_THREADS", "many")                    # not a count: ignored
    assert get_adapter("ort-cpu").load(tiny_onnx).info["threads"] == default
