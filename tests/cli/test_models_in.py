"""Issue 20's "done when" for models in: tiny models at opsets 11 and 12, a model with a 0-d
input, a GRU with state in and out and a dynamic-axes detector each go through
``edgeopt optimize MODEL.onnx --device host-cpu --calib random`` (``--input-shape`` only for
the dynamic one) on both runtimes, exit 0, with INT8 artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from zoo import ZOO

from edgeopt.backends import runtime_names

FAST_BENCH = ("--bench-seconds", "0", "--bench-iterations", "3", "--bench-repeats", "1",
              "--warmup", "1")
CASES = {  # zoo model -> the flags it needs besides --calib random
    "opset11": (), "opset12": (), "scalar_input": (), "gru_state": (),
    "dynamic_detector": ("--input-shape", "images=1,3,32,32"),
}


def optimize(run_cli, model: Path, out: Path, *extra: str, calib: str = "random") -> dict:
    result = run_cli("optimize", model, "--device", "host-cpu", "--calib", calib,
                     "--out", out, "--quiet", *extra)
    assert result.code == 0, result.err
    return json.loads((out / "report.json").read_text())


def int8_files(report: dict, out: Path) -> dict[str, Path]:
    return {a["runtime"]: out / a["path"] for a in report["artifacts"]
            if a["precision"] == "int8"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_models_go_through_optimize_with_random_calibration(run_cli, tmp_path, name):
    model = ZOO[name].build(tmp_path)
    out = tmp_path / "out"
    report = optimize(run_cli, model, out, *CASES[name], "--no-bench")
    files = int8_files(report, out)
    assert set(files) == set(runtime_names())
    assert all(f.is_file() for f in files.values())
    assert all(a["status"] == "ok" for a in report["artifacts"]), report["warnings"]
    if name.startswith("opset"):
        step = next(s for s in report["steps"] if s["name"].startswith("ONNX opset"))
        assert step["name"] == f"ONNX opset {name[-2:]} -> 17"
        assert step["parity"]["ok"]
    if name == "gru_state":
        assert report["data"]["state_inputs"] == {"state": "state_out"}
        carried = next(s for s in report["steps"] if s["name"] == "carry state inputs")
        assert carried["states"] == {"state": "state_out"}
        assert "State inputs" in (out / "report.md").read_text()


def test_a_scalar_input_stays_0d_through_bench_bundles_and_verify(run_cli, tmp_path):
    """The 0-d sample-rate input: benchmarked, packaged with reference data and verified
    on both runtimes' bundles, its reference arrays 0-d."""
    import zipfile

    model = ZOO["scalar_input"].build(tmp_path)
    out = tmp_path / "out"
    report = optimize(run_cli, model, out, *FAST_BENCH, "--package", "android",
                      "--package", "openvino")
    assert {i["name"]: i["shape"] for i in report["input"]["inputs"]} == {
        "audio": [1, 256], "sr": []}
    assert all(a["bench"]["label"] == "measured" for a in report["artifacts"])
    bundles = sorted(out.glob("*.zip"))
    assert len(bundles) == 2
    for bundle in bundles:
        with zipfile.ZipFile(bundle) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            sr = next(i for i in manifest["inputs"] if i["name"] == "sr")
            assert sr["shape"] == []
            ref = np.load(zf.open("reference.npz"))
            index = [i["name"] for i in manifest["inputs"]].index("sr")
            assert ref[f"input.{index}"].shape[1:] == ()       # samples x a scalar
        result = run_cli("verify", bundle, "--no-bench", "--json")
        assert result.code == 0, result.err
        assert json.loads(result.out)["ok"] is True


def test_a_dynamic_image_input_needs_input_shape_only_where_nothing_gives_the_size(
        run_cli, tmp_path):
    from PIL import Image

    model = ZOO["dynamic_detector"].build(tmp_path)
    result = run_cli("optimize", model, "--calib", "random", "--out", tmp_path / "a",
                     "--quiet", "--no-bench")
    assert result.code != 0
    assert result.err.count("\n") == 1 and "images" in result.err
    assert "--input-shape" in result.err and not (tmp_path / "a").exists()
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i:02d}.png")
    out = tmp_path / "b"
    report = optimize(run_cli, model, out, "--no-bench", "--preprocess", "resize=40x48",
                      calib=str(photos))
    assert report["input"]["inputs"][0]["shape"] == [1, 3, 40, 48]
    assert set(int8_files(report, out)) == set(runtime_names())
