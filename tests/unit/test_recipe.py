"""The recipe as data: validated once, written as YAML, read back from YAML or report.json."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import UsageError
from edgeopt.recipe import PackageRecipe, PruneRecipe, QuantRecipe, Recipe, load_recipe
from edgeopt.runtimes import BenchProtocol


def test_yaml_round_trip_keeps_every_section(tmp_path):
    recipe = Recipe(model="m.onnx", devices=("host-cpu", "rpi5"),
                    quant=QuantRecipe(calibrator="kmeans", max_accuracy_drop="1%"),
                    prune=PruneRecipe(mode="channels", ratio=0.3, ignore=("head",)),
                    package=PackageRecipe(targets=("android",), palettize=4),
                    bench=BenchProtocol(warmup=2, min_iterations=7))
    path = tmp_path / "recipe.yaml"
    recipe.to_yaml(path)
    assert load_recipe(path) == recipe


def test_unknown_keys_are_all_named_at_once(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: m.onnx\nquant:\n  calibrater: minmax\nbench:\n  warmups: 3\n"
                    "colour: blue\n")
    with pytest.raises(UsageError) as e:
        load_recipe(path)
    text = str(e.value)
    assert "quant: unknown key 'calibrater'" in text
    assert "bench: unknown key 'warmups'" in text
    assert "unknown key 'colour'" in text
    assert "\n" not in text


def test_values_are_checked_where_they_enter(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("quant:\n  calibrator: magic\n  qat_epochs: -1\n")
    with pytest.raises(UsageError, match=r"unknown --calibrator magic.*--qat-epochs -1"):
        load_recipe(path)
    with pytest.raises(UsageError, match="unknown runtime tensorrt"):
        Recipe(runtimes=("tensorrt",))
    with pytest.raises(UsageError, match="bits must be 2..8"):
        PackageRecipe(palettize=9)


def test_a_report_json_gives_its_recipe_including_the_schema_1_flat_config(tmp_path):
    recipe = Recipe(model="ref:digits-cnn", quant=QuantRecipe(calibrator="minmax"))
    new = tmp_path / "report.json"
    new.write_text(json.dumps({"schema_version": 2, "artifacts": [],
                               "recipe": recipe.to_dict()}))
    assert load_recipe(new) == recipe
    old = tmp_path / "old" / "report.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"schema_version": 1, "artifacts": [], "recipe": {
        "model": "ref:digits-cnn", "out": "x", "devices": ["host-cpu"],
        "runtimes": ["onnxruntime", "openvino"], "require_measured": False,
        "calibrator": "minmax", "quantize": True, "calib": None, "prune": None,
        "bench": {"warmup": 10, "min_iterations": 100, "min_seconds": 3.0,
                  "max_seconds": 60.0, "repeats": 3, "threads": None}}}))
    # its bench section predates the adaptive stop: the fields it has are kept, the new
    # ones (ci_pct, max_iterations) take their defaults
    assert load_recipe(old) == recipe.override(bench=BenchProtocol(
        warmup=10, min_iterations=100, min_seconds=3.0, max_seconds=60.0, repeats=3))
    assert load_recipe(old).bench.ci_pct == BenchProtocol().ci_pct


def test_flat_overrides_reach_their_section():
    recipe = Recipe(model="a.onnx").override(calibrator="mse", calib="data/", packages=("ios",),
                                              quantize=False, model="b.onnx")
    assert recipe.quant.calibrator == "mse" and not recipe.quant.enabled
    assert recipe.data.calib == "data/" and recipe.package.targets == ("ios",)
    assert recipe.model == "b.onnx"
    with pytest.raises(UsageError, match="unknown recipe option 'calibrater'"):
        recipe.override(calibrater="mse")


def test_bad_recipe_files_get_one_line(tmp_path):
    missing = tmp_path / "none.yaml"
    with pytest.raises(UsageError, match="cannot read it"):
        load_recipe(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("quant: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML") as e:
        load_recipe(broken)
    assert "\n" not in str(e.value)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="a recipe is a mapping"):
        load_recipe(listed)
