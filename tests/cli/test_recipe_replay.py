"""A run's recipe replays to byte-identical artifacts, from recipe.yaml or report.json, and
command-line flags override it."""

from __future__ import annotations

import json

import yaml

from conftest import sha256

FAST = ("--bench-iterations", "3", "--bench-seconds", "0", "--bench-repeats", "1",
        "--warmup", "1", "--quiet")


def _artifacts(folder) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.iterdir())
            if p.suffix in (".onnx", ".xml", ".bin")}


def test_replaying_a_recipe_gives_the_same_artifacts(run_cli, tmp_path):
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    first = run_cli("optimize", "ref:digits-cnn", "--device", "host-cpu", "--out", a, *FAST)
    assert first.code == 0, first.err
    assert (a / "recipe.yaml").is_file()
    recipe = yaml.safe_load((a / "recipe.yaml").read_text())
    assert json.loads((a / "report.json").read_text())["recipe"] == recipe
    assert recipe["model"] == "ref:digits-cnn" and recipe["bench"]["min_iterations"] == 3

    assert run_cli("optimize", "--recipe", a / "recipe.yaml", "--out", b, "--quiet").code == 0
    assert run_cli("optimize", "--recipe", a / "report.json", "--out", c, "--quiet").code == 0
    built = _artifacts(a)
    assert len(built) == 6       # FP32 and INT8 for ONNX Runtime, FP32 and INT8 IR (.xml/.bin)
    assert _artifacts(b) == built
    assert _artifacts(c) == built


def test_flags_override_the_recipe(run_cli, tmp_path, tiny_onnx):
    a, b = tmp_path / "A", tmp_path / "B"
    assert run_cli("optimize", tiny_onnx, "--calib", "random", "--runtime", "onnxruntime",
                   "--out", a, *FAST).code == 0
    result = run_cli("optimize", "--recipe", a / "recipe.yaml", "--calibrator", "minmax",
                     "--out", b, "--bench-repeats", "2", "--quiet")
    assert result.code == 0, result.err
    recipe = yaml.safe_load((b / "recipe.yaml").read_text())
    assert recipe["quant"]["calibrator"] == "minmax"
    assert recipe["bench"]["repeats"] == 2 and recipe["bench"]["min_iterations"] == 3
    assert recipe["runtimes"] == ["onnxruntime"] and recipe["data"]["calib"] == "random"


def test_optimize_without_model_or_recipe_is_one_line(run_cli, tmp_path):
    result = run_cli("optimize", "--out", tmp_path / "x")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "no model" in result.err
    assert not (tmp_path / "x").exists()
