"""Artifacts are named after the model file or the factory's module; --name overrides
(CLI, recipe, Python API) and is checked to be a safe file stem (issue 20)."""

from __future__ import annotations

import json

import pytest

from conftest import tree

FAST = ("--calib", "random", "--runtime", "onnxruntime", "--quiet", "--no-bench")


@pytest.mark.parametrize("spec, stem", [
    ("pkg.detectors.yolo_head:build", "yolo_head"),     # the module, not the function
    ("tiny_models:tiny_cnn", "tiny_models"),
    ("ref:digits-cnn", "digits-cnn"),
    ("models/net.v2.onnx", "net.v2"),
])
def test_artifact_stem_is_the_file_or_the_factory_module(spec, stem):
    from edgeopt._source import artifact_stem, run_name
    from edgeopt.recipe import Recipe

    assert artifact_stem(spec) == stem
    assert run_name(Recipe(model=spec)) == stem
    assert run_name(Recipe(model=spec, name="mine")) == "mine"


def test_factory_artifacts_take_the_module_name_and_default_out(run_cli, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("optimize", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", *FAST)
    assert result.code == 0, result.err
    out = tmp_path / "edgeopt-out" / "tiny_models"
    report = json.loads((out / "report.json").read_text())
    paths = sorted(a["path"] for a in report["artifacts"])
    assert paths == ["tiny_models.fp32.onnx", "tiny_models.int8-ort.onnx"], paths
    assert not any("tiny_cnn" in f for f in tree(out))


def test_name_flag_names_artifacts_out_folder_and_recipe(run_cli, tiny_onnx, tmp_path,
                                                         monkeypatch):
    from edgeopt.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    result = run_cli("optimize", tiny_onnx, "--name", "det-v2.int", *FAST)
    assert result.code == 0, result.err
    out = tmp_path / "edgeopt-out" / "det-v2.int"
    assert (out / "det-v2.int.fp32.onnx").is_file() and (out / "det-v2.int.int8-ort.onnx").is_file()
    assert not any(f.startswith("tiny.") for f in tree(out))
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.name == "det-v2.int"
    # the recipe replays the name; a flag overrides it
    again = tmp_path / "again"
    result = run_cli("optimize", "--recipe", out / "recipe.yaml", "--out", again, "--quiet")
    assert result.code == 0, result.err
    assert (again / "det-v2.int.int8-ort.onnx").is_file()


def test_python_api_takes_name(tiny_onnx, tmp_path):
    import edgeopt

    report = edgeopt.optimize(str(tiny_onnx), out=tmp_path / "o", name="api_name",
                              calib="random", runtimes=("onnxruntime",), benchmark=False)
    assert {a.path for a in report.artifacts} == {"api_name.fp32.onnx", "api_name.int8-ort.onnx"}


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", ".hidden", "-flag", "a b", "x.",
                                 "a..b", "con", "n" * 101, ""])
def test_unsafe_names_are_refused_in_one_line_before_anything_is_written(run_cli, tiny_onnx,
                                                                          tmp_path, bad):
    out = tmp_path / "out"
    result = run_cli("optimize", tiny_onnx, f"--name={bad}", "--out", out, *FAST)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "--name" in lines[0] and "not a safe file name" in lines[0], \
        result.err
    assert not out.exists() and tree(tmp_path) == ["tiny.onnx"]


def test_recipe_file_with_an_unsafe_name_is_refused(tmp_path):
    from edgeopt.errors import UsageError
    from edgeopt.recipe import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text("model: m.onnx\nname: ../../etc/passwd\n")
    with pytest.raises(UsageError, match="not a safe file name"):
        load_recipe(path)
    path.write_text("model: m.onnx\nname: 12\n")           # YAML: not a string
    with pytest.raises(UsageError, match="not a safe file name"):
        load_recipe(path)
