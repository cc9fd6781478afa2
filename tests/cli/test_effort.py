"""`--effort fast|default`: fast keeps every speed-for-accuracy choice unweighed and says so,
takes the quantizers' shortcuts, and is part of the quantize step's cache key."""

from __future__ import annotations

import json

import pytest
import yaml

from edgeopt.backends import get_backend
from edgeopt.errors import UsageError
from edgeopt.recipe import Recipe, load_recipe
from edgeopt.tradeoffs import describe

from conftest import tree
from tiny_models import save_inverted_residual_onnx

ORT = "onnxruntime"


@pytest.fixture
def builds(monkeypatch):
    """The ONNX Runtime INT8 builds that really ran (not replayed from the cache)."""
    backend = get_backend(ORT)
    made = []
    real = type(backend).quantize

    def quantize(self, job):
        made.append((job.variant, job.config.effort))
        return real(self, job)

    monkeypatch.setattr(type(backend), "quantize", quantize)
    return made


def _optimize(run_cli, model, out, *flags) -> dict:
    result = run_cli("optimize", model, "--out", out, "--calib", "random", "--runtime", ORT,
                     "--no-bench", "--quiet", *flags)
    assert result.code == 0, result.err
    return json.loads((out / "report.json").read_text())


def test_fast_keeps_every_choice_unweighed_and_says_so(run_cli, tmp_path, builds, host_isa):
    host_isa(("avx2",))                                 # the guard can matter here
    model = save_inverted_residual_onnx(tmp_path / "net.onnx")
    out = tmp_path / "fast"
    report = _optimize(run_cli, model, out, "--effort", "fast")
    assert builds == [(None, "fast")]                  # one build: no variant without a choice
    records = {t["choice"]: t for t in report["tradeoffs"]}
    assert set(records) == {"fp32-stem", "saturation-guard", "shared-bias-pass"}, records
    for record in records.values():
        assert record["kept"] and record["not_weighed"].startswith("--effort fast")
        assert "gain" not in record and "without" not in record
    (art,) = [a for a in report["artifacts"] if a["precision"] == "int8"]
    assert art["quantization"]["excluded_nodes"] == ["stem", "dw", "project"]
    assert report["recipe"]["quant"]["effort"] == "fast"
    assert yaml.safe_load((out / "recipe.yaml").read_text())["quant"]["effort"] == "fast"
    assert "not weighed: --effort fast" in (out / "report.md").read_text()
    # the console's line for it (edgeopt.tradeoffs.weigh_choices prints describe(record))
    assert describe(records["fp32-stem"]) == (f"{ORT}: the stem (3 convolutions) kept FP32: "
                                              "kept, not weighed (--effort fast)")
    assert not [f for f in out.iterdir() if "without" in f.name]


def test_default_weighs_the_same_choice(run_cli, tmp_path, builds, host_isa):
    host_isa(("avx2",))
    model = save_inverted_residual_onnx(tmp_path / "net.onnx")
    report = _optimize(run_cli, model, tmp_path / "default")
    assert builds == [(None, "default"), ("without-fp32-stem", "default"),
                      ("without-saturation-guard", "default")]
    assert [t["choice"] for t in report["tradeoffs"]] == ["fp32-stem", "saturation-guard"]
    assert all("not_weighed" not in t and "gain" in t for t in report["tradeoffs"])
    assert report["recipe"]["quant"]["effort"] == "default"


def test_a_changed_effort_rebuilds_the_quantize_step_and_reuses_the_rest(run_cli, tmp_path,
                                                                         tiny_onnx, builds):
    def cached(report) -> set[str]:
        return {s["name"] for s in report["steps"] if s.get("cached")}

    _optimize(run_cli, tiny_onnx, tmp_path / "a")
    fast = _optimize(run_cli, tiny_onnx, tmp_path / "b", "--effort", "fast")
    again = _optimize(run_cli, tiny_onnx, tmp_path / "c", "--effort", "fast")
    # the artifacts built (not the weighing's variants): the third run built nothing
    assert [effort for variant, effort in builds if variant is None] == ["default", "fast"]
    assert {"copy ONNX", "calibration statistics"} <= cached(fast)
    assert not any(name.startswith("quantize") for name in cached(fast))
    assert any(name.startswith("quantize") for name in cached(again))


@pytest.mark.parametrize("where", ["flag", "recipe"])
@pytest.mark.parametrize(("key", "bad", "known"), [("effort", "slow", "fast"),
                                                   ("ov_int8", "pot", "qdq")])
def test_a_bad_quant_choice_is_a_one_line_error(run_cli, tmp_path, tiny_onnx, where, key, bad,
                                                known):
    """--effort and --ov-int8 (recipe quant.effort, quant.ov_int8) name a choice: another
    value is one line naming the known ones, and nothing is written."""
    out = tmp_path / "out"
    if where == "flag":
        args = (tiny_onnx, f"--{key.replace('_', '-')}", bad)
    else:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"model": str(tiny_onnx), "quant": {key: bad}}))
        args = ("--recipe", recipe)
    result = run_cli("optimize", *args, "--calib", "random", "--out", out, "--quiet")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0] and known in lines[0], result.err
    assert "Traceback" not in result.err and tree(out) == []


def test_effort_is_a_recipe_field(tmp_path):
    recipe = Recipe(model="m.onnx").override(effort="fast")
    assert recipe.quant.effort == "fast" and Recipe().quant.effort == "default"
    recipe.to_yaml(tmp_path / "recipe.yaml")
    assert load_recipe(tmp_path / "recipe.yaml") == recipe
    with pytest.raises(UsageError, match="unknown --effort 'max'"):
        Recipe().override(effort="max")


def test_no_guard_is_built_where_no_target_can_saturate(run_cli, tmp_path, builds, host_isa):
    """On a host with int8 dot products, the only target, the guard's coarser scales can
    only cost accuracy: it is not built, under either effort, and the report says why."""
    host_isa(("avx2", "avx512_vnni"))
    model = save_inverted_residual_onnx(tmp_path / "net.onnx")
    for effort in ("default", "fast"):
        out = tmp_path / effort
        report = _optimize(run_cli, model, out, "--effort", effort)
        (record,) = [t for t in report["tradeoffs"] if t["choice"] == "saturation-guard"]
        assert not record["kept"] and "host-cpu:cpu (this machine)" in record["not_built"]
        (art,) = [a for a in report["artifacts"] if a["precision"] == "int8"]
        assert "AVX2 saturation guard off" in " | ".join(art["quantization"]["notes"])
        assert "no, not built: no target can saturate" in (out / "report.md").read_text()
    assert ("without-saturation-guard", "default") not in builds
