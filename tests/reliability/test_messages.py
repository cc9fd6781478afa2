"""One-line messages that keep the library's reason (issue 22, items 9, 10, 12)."""

from __future__ import annotations

import pytest

from edgeopt.convert.errors import short_reason as convert_short_reason
from edgeopt.runtimes.errors import _drop_source_noise, short_reason

ORT_OPSET = (
    "[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/m.onnx failed:/onnxruntime_src/"
    "onnxruntime/core/graph/model_load_utils.h:46 void onnxruntime::model_load_utils::"
    "ValidateOpsetForDomain(const std::unordered_map<std::__cxx11::basic_string<char>, int>&, "
    "const onnxruntime::logging::Logger&, bool, const std::string&, int) ONNX Runtime only "
    "*guarantees* support for models stamped with official released onnx opset versions. "
    "Opset 99 is under development and support for this is limited. The operator schemas and "
    "or other functionality may change before next ONNX release and in this case ONNX Runtime "
    "will not guarantee backward compatibility. Current official support for domain ai.onnx "
    "is till opset 28.\n")
OV_BIN = ("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'is_valid_weights_range("
          "m_weights_provider->size(), offset, size)' failed at src/core/xml_util/src/"
          "xml_deserialize_util.cpp:900:\nIncorrect weights in bin file!\n\n")
TEXTS = [ORT_OPSET, OV_BIN, "short", "x" * 900, " ".join(f"word{i}" for i in range(300)),
         "line one\nline two\n" * 40, "Traceback (most recent call last):\n  File 'a.py'\n"
         "ValueError: the reason"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("limit", [60, 200, 300])
def test_short_reason_is_one_line_within_the_limit_and_never_cuts_a_word(text, limit):
    got = short_reason(RuntimeError(text), limit)
    assert got == convert_short_reason(RuntimeError(text), limit)   # one algorithm
    assert "\n" not in got and len(got) <= limit
    clean = _drop_source_noise(" ".join(text.split()))
    if " " not in clean:            # one long word: cut at a character, the only way
        return
    words = set(clean.split())
    for word in got.replace(" ... ", " ").split():
        assert word in words, word


def test_short_reason_keeps_the_cause_not_the_source_location():
    ort = short_reason(RuntimeError(ORT_OPSET))
    assert ort.startswith("[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/m.onnx failed")
    assert ort.endswith("Current official support for domain ai.onnx is till opset 28.")
    assert "Logge" not in ort and "model_load_utils.h" not in ort
    ov = short_reason(RuntimeError(OV_BIN))
    assert ov.endswith("Incorrect weights in bin file!") and "core.cpp" not in ov
    assert short_reason(ValueError("")) == "ValueError"


def test_opset_99_model_names_the_reason(run_cli, tiny_onnx, tmp_path):
    import onnx

    model = onnx.load(str(tiny_onnx))
    model.opset_import[0].version = 99
    op99 = tmp_path / "op99.onnx"
    onnx.save(model, str(op99))
    result = run_cli("bench", op99, "--runtime", "onnxruntime")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert "opset 28." in line and "Logge" not in line, line


def test_mismatched_bin_names_the_reason(run_cli, tiny_onnx, tmp_path):
    import openvino as ov

    xml = tmp_path / "m.xml"
    ov.save_model(ov.convert_model(str(tiny_onnx)), str(xml))
    xml.with_suffix(".bin").write_bytes(bytes(10))
    result = run_cli("bench", xml)
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert "Incorrect weights in bin file!" in line and "core.cpp" not in line, line


@pytest.mark.parametrize("shape, says", [
    ("0,1,8,8", "dimensions must be positive"),
    ("1,3,0,8", "dimensions must be positive"),
    ("100000,1,8000,8000", "does not fit input"),
    ("1,3,8", "does not fit input"),
    ("1,x,8", "not a list of integers"),
    ("1,,8", "not a list of integers"),
])
def test_bench_rejects_shapes_that_do_not_fit_before_allocating(run_cli, tiny_onnx, shape,
                                                                says):
    result = run_cli("bench", tiny_onnx, "--input-shape", shape)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.err


@pytest.mark.parametrize("shape", ["1,x,8", "1,,3,8,8", "1,3,8,8,", "0,3,8,8", "1;3"])
def test_optimize_rejects_malformed_shapes(run_cli, tiny_onnx, tmp_path, shape):
    out = tmp_path / "out"
    result = run_cli("optimize", tiny_onnx, "--input-shape", shape, "--out", out, "--quiet")
    assert result.code == 2
    assert "--input-shape" in result.err and "not fit" not in result.err, result.err
    assert not out.exists()


def test_input_shape_accepts_x_separated_dims():
    from edgeopt.convert.load import parse_input_shapes

    assert parse_input_shapes("1x3x8x8") == (1, 3, 8, 8)
    assert parse_input_shapes("a=1,3;b=2") == {"a": (1, 3), "b": (2,)}


def test_emulate_without_the_toolchain_is_an_error_not_an_estimate(run_cli, tiny_onnx,
                                                                     monkeypatch, tmp_path):
    from edgeopt.runtimes import emulation as emu

    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(emu.platform, "system", lambda: "Linux")
    monkeypatch.setattr(emu.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(emu.shutil, "which",
                        lambda name: "/usr/bin/dpkg-deb" if name == "dpkg-deb" else None)
    result = run_cli("bench", tiny_onnx, "--device", "rpi5", "--emulate", "--json")
    assert result.code == 2
    assert result.out == ""                        # no figure, estimated or otherwise
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "apt-get install mmdebstrap" in lines[0], result.err


def test_a_single_wrongly_named_npz_array_is_refused(run_cli, tiny_onnx, tmp_path):
    import numpy as np

    data = tmp_path / "calib.npz"
    np.savez(data, image=np.zeros((4, 3, 8, 8), np.float32))
    out = tmp_path / "out"
    result = run_cli("optimize", tiny_onnx, "--calib", data, "--out", out, "--quiet")
    assert result.code == 2
    assert "no array for input(s) input (it has image)" in result.err, result.err
    assert not out.exists()
    unnamed = tmp_path / "unnamed.npz"           # np.savez(f, x): arr_0, like a .npy
    np.savez(unnamed, np.zeros((4, 3, 8, 8), np.float32))
    from edgeopt.calibrate.data import read_calibration

    found = read_calibration(str(unnamed), [("input", "float32", (1, 3, 8, 8))], None, None)
    assert len(found.samples) == 4


def test_user_calibration_keeps_the_reference_evaluation_set(tmp_path):
    """ref:NAME with --calib: calibrated on the user's data, evaluated on the reference's
    held-out set with its metric, not on the calibration samples."""
    import numpy as np

    from edgeopt._source import load_source, prepare
    from edgeopt.recipe import Recipe
    from edgeopt.reference_models import get_reference

    reference = get_reference("digits-cnn")
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{reference.input_name: np.zeros((8, *reference.input_shape[1:]),
                                                      np.float32)})
    recipe = Recipe().override(model="ref:digits-cnn", calib=str(calib))
    prepared = prepare(recipe, load_source(recipe))
    assert prepared.metric == reference.metric
    assert prepared.eval_note.startswith("reference evaluation set")
    assert not any(np.array_equal(x[k], np.zeros_like(x[k])) for x in prepared.eval_inputs
                   for k in x)
