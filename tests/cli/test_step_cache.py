"""The step cache: an unchanged re-run reuses every step, a changed recipe the steps before
the change, and a corrupt entry is rebuilt with a warning, never trusted."""

from __future__ import annotations

import json
from pathlib import Path

from edgeopt import optimize
from edgeopt._cache import default_root
from edgeopt._progress import Steps

BUILT = ("torch -> ONNX", "copy ONNX", "FP32 reference outputs", "ONNX -> OpenVINO IR",
         "calibration statistics", "quantize INT8", "evaluate")


def _run(capsys, model, out: Path, cache_dir: Path, **options) -> tuple[dict, str]:
    """``edgeopt.optimize`` (no timing) through the Python API, progress shown."""
    capsys.readouterr()
    optimize(str(model), out=out, steps=Steps(), calib="random", benchmark=False,
             cache_dir=str(cache_dir), **options)
    return json.loads((out / "report.json").read_text()), capsys.readouterr().err


def _steps(report: dict) -> dict[str, bool]:
    """Each built step (not load/prepare) -> whether it came from the cache."""
    return {s["name"]: bool(s.get("cached")) for s in report["steps"]
            if s["name"].startswith(BUILT)}


def _shas(report: dict) -> dict[str, str]:
    return {f: sha for a in report["artifacts"] for f, sha in a["sha256_files"].items()}


def test_warm_rerun_reuses_every_step_with_identical_artifacts(capsys, tmp_path):
    cache = tmp_path / "cache"
    cold, _ = _run(capsys, "tiny_models:tiny_cnn", tmp_path / "a", cache,
                   input_shape="1,3,8,8")
    warm, err = _run(capsys, "tiny_models:tiny_cnn", tmp_path / "b", cache,
                     input_shape="1,3,8,8")
    assert not any(_steps(cold).values())
    steps = _steps(warm)
    assert {"torch -> ONNX", "ONNX -> OpenVINO IR", "calibration statistics",
            "quantize INT8 for ONNX Runtime"} <= set(steps)
    assert all(steps.values()), steps
    assert "torch -> ONNX (cached)" in err and "quantize INT8 for ONNX Runtime (cached)" in err
    assert _shas(warm) == _shas(cold) and len(_shas(cold)) == 6
    assert [a["accuracy"] for a in warm["artifacts"]] == [a["accuracy"] for a in cold["artifacts"]]


def test_calibrator_change_reuses_export_and_ir_only(capsys, tmp_path, tiny_onnx):
    cache = tmp_path / "cache"
    _run(capsys, tiny_onnx, tmp_path / "a", cache)
    changed, _ = _run(capsys, tiny_onnx, tmp_path / "b", cache, calibrator="minmax")
    steps = _steps(changed)
    assert steps["copy ONNX"] and steps["ONNX -> OpenVINO IR"]
    assert steps["calibration statistics"]          # statistics do not depend on it
    assert not steps["quantize INT8 for ONNX Runtime"]
    assert not any(v for k, v in steps.items() if k.startswith("evaluate") and "int8" in k)


def test_corrupt_entry_is_warned_and_rebuilt(capsys, tmp_path, tiny_onnx):
    cache = tmp_path / "cache"
    cold, _ = _run(capsys, tiny_onnx, tmp_path / "a", cache)
    [int8] = (cache / "v1" / "quantize").glob("*/tiny.int8-ort.onnx")
    data = bytearray(int8.read_bytes())
    data[len(data) // 2] ^= 0xFF
    int8.write_bytes(bytes(data))
    again, err = _run(capsys, tiny_onnx, tmp_path / "b", cache)
    assert "corrupt" in err and "does not match its sha256" in err
    assert any("corrupt" in w for w in again["warnings"])
    steps = _steps(again)
    assert not steps["quantize INT8 for ONNX Runtime"] and steps["copy ONNX"]
    assert _shas(again) == _shas(cold)
    third, _ = _run(capsys, tiny_onnx, tmp_path / "c", cache)     # rebuilt entry is good
    assert _steps(third)["quantize INT8 for ONNX Runtime"]
    assert _shas(third) == _shas(cold)


def test_no_cache_reads_and_writes_nothing(capsys, tmp_path, tiny_onnx):
    cache = tmp_path / "cache"
    _run(capsys, tiny_onnx, tmp_path / "a", cache, cache=False, quantize=False)
    assert not cache.exists()


def test_cli_flags_reach_the_recipe(run_cli, tmp_path, tiny_onnx):
    out, cache = tmp_path / "a", tmp_path / "cache"
    result = run_cli("optimize", tiny_onnx, "--calib", "random", "--out", out, "--no-bench",
                     "--no-quantize", "--cache-dir", cache, "--quiet")
    assert result.code == 0, result.err
    assert list((cache / "v1").iterdir())
    result = run_cli("optimize", tiny_onnx, "--calib", "random", "--out", tmp_path / "b",
                     "--no-bench", "--no-quantize", "--no-cache", "--quiet")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["recipe"]["cache"] is False
    assert not any(s.get("cached") for s in report["steps"])


def test_default_root_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEOPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_root() == tmp_path / "edgeopt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_root() == Path.home() / ".cache" / "edgeopt"
