"""The OpenVINO builds of one run share NNCF's work (calibrate/ov_reuse.py): the build
without the saturation guard after the one with it runs no second nncf.quantize, and saves
the same bytes as when it is built alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeopt.calibrate import QuantConfig, ov_reuse, ov_sqnr, quantize_for_openvino
from edgeopt.calibrate.quantize import activation_stats
from edgeopt.calibrate.spill import spill
from edgeopt.convert import canonical_names, export_onnx, to_openvino_ir


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    """conv -> relu -> conv -> relu -> flatten -> linear, with equal-sized same-sign
    weights, so the saturation guard has channels to coarsen."""
    path = tmp_path_factory.mktemp("reuse") / "big.onnx"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.copy_(layer.weight.abs() + 0.5 * layer.weight.abs().max())
    export_onnx(net.eval(), (torch.randn(1, 3, 8, 8),), path)
    return path, to_openvino_ir(path, path.with_suffix(".xml"))


@pytest.fixture()
def calib():
    rng = np.random.default_rng(5)
    return spill({"input": rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)}
                 for _ in range(12))


@pytest.fixture()
def nncf_runs(monkeypatch) -> list[dict]:
    """The options of each nncf.quantize call; every memo starts empty."""
    import nncf

    runs: list[dict] = []
    real = nncf.quantize

    def counted(*args, **kwargs):
        runs.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(nncf, "quantize", counted)
    ov_reuse.clear()
    yield runs
    ov_reuse.clear()


def _build(model, calib, out: Path, guard: bool, effort: str = "default"):
    onnx_path, xml = model
    result = quantize_for_openvino(xml, out, calib,
                                   QuantConfig(saturation_guard=guard, effort=effort),
                                   stats=activation_stats(onnx_path, calib),
                                   fp32_onnx=onnx_path, before_save=canonical_names)
    return result, out.read_bytes(), out.with_suffix(".bin").read_bytes()


def test_the_build_without_the_guard_reuses_nncf_and_saves_the_same_bytes(
        model, calib, nncf_runs, tmp_path):
    alone = _build(model, calib, tmp_path / "alone.xml", guard=False)
    assert len(nncf_runs) == 1
    ov_reuse.clear()
    guarded = _build(model, calib, tmp_path / "guarded.xml", guard=True)
    assert any("saturation guard" in n for n in guarded[0].notes)
    assert guarded[2] != alone[2]                # the guard changed weights
    after = _build(model, calib, tmp_path / "after.xml", guard=False)
    assert len(nncf_runs) == 2                   # none for the build after the guarded one
    assert after[1:] == alone[1:]                # the same IR, byte for byte
    assert after[0].notes == alone[0].notes
    assert after[0].layer_sqnr == alone[0].layer_sqnr
    assert after[0].ranges_applied == alone[0].ranges_applied > 0


def test_other_samples_or_settings_run_nncf_again(model, calib, nncf_runs, tmp_path):
    _build(model, calib, tmp_path / "a.xml", guard=False)
    _build(model, spill(calib), tmp_path / "b.xml", guard=False)    # the same object
    assert len(nncf_runs) == 1
    _build(model, list(calib), tmp_path / "c.xml", guard=False)     # equal, another object
    assert len(nncf_runs) == 2
    onnx_path, xml = model
    quantize_for_openvino(xml, tmp_path / "d.xml", calib,
                          QuantConfig(saturation_guard=False, keep_first_fp32=True),
                          fp32_onnx=onnx_path)
    assert len(nncf_runs) == 3                   # another ignored scope


def test_effort_fast_takes_nncf_fast_bias_correction_and_says_so(model, calib, nncf_runs,
                                                                 tmp_path):
    from edgeopt.tradeoffs import fast_shortcuts

    default = _build(model, calib, tmp_path / "default.xml", guard=False)
    fast = _build(model, calib, tmp_path / "fast.xml", guard=False, effort="fast")
    assert [run["fast_bias_correction"] for run in nncf_runs] == [False, True]  # not reused
    assert fast[1:] != default[1:]
    assert any("PERFORMANCE preset, fast bias correction)" in n for n in fast[0].notes)
    assert not any("fast bias correction" in n for n in default[0].notes)

    class Art:
        runtime = "openvino"
        quantization = {"notes": list(fast[0].notes)}

    (record,) = fast_shortcuts(Art())
    assert record["choice"] == "nncf-fast-bias-correction" and record["kept"]
    assert record["not_weighed"].startswith("--effort fast: measured 0.65-1.1 dB less")
    Art.quantization = {"notes": list(default[0].notes)}
    assert fast_shortcuts(Art()) == []


def test_layer_sqnr_keeps_the_fp32_side_and_gives_the_same_rows(model, calib, monkeypatch,
                                                                 tmp_path):
    import openvino as ov

    ov_reuse.clear()
    _, xml = model
    result = quantize_for_openvino(xml, tmp_path / "q.xml", calib)
    core = ov.Core()
    fp32, int8 = core.read_model(str(xml)), core.read_model(str(tmp_path / "q.xml"))
    captured = []
    real = ov_sqnr.capture_openvino
    monkeypatch.setattr(ov_sqnr, "capture_openvino",
                        lambda m, *a, **k: captured.append(m) or real(m, *a, **k))
    plain = ov_sqnr.ov_layer_sqnr(fp32, int8, calib)
    assert captured == [fp32, int8]
    first = ov_sqnr.ov_layer_sqnr(fp32, int8, calib, fp32_key="fp32")
    again = ov_sqnr.ov_layer_sqnr(fp32, int8, calib, fp32_key="fp32")
    assert captured[2:] == [fp32, int8, int8]    # the FP32 model ran once for both
    assert plain == first == again
    assert [r["sqnr_db"] for r in plain] == [r["sqnr_db"] for r in result.layer_sqnr]
    assert plain and plain == sorted(plain, key=lambda r: r["sqnr_db"])
    ov_reuse.clear()


def test_a_trial_build_leaves_out_the_layer_sqnr_which_the_files_give_later(
        model, calib, nncf_runs, tmp_path):
    """sqnr=False (a weighing variant): the same IR without the per-layer SQNR pass;
    artifact_layer_sqnr_ov gives the rows the full build gives, from the files."""
    from edgeopt.calibrate.ov_sqnr import artifact_layer_sqnr_ov

    onnx_path, xml = model
    config = QuantConfig(saturation_guard=False)
    full = quantize_for_openvino(xml, tmp_path / "full.xml", calib, config, fp32_onnx=onnx_path)
    ov_reuse.clear()                      # nothing shared with the full build
    trial = quantize_for_openvino(xml, tmp_path / "trial.xml", calib, config,
                                  fp32_onnx=onnx_path, sqnr=False)
    assert full.layer_sqnr and trial.layer_sqnr == ()
    assert trial.notes == full.notes
    assert (tmp_path / "trial.bin").read_bytes() == (tmp_path / "full.bin").read_bytes()
    assert artifact_layer_sqnr_ov(xml, tmp_path / "trial.xml", calib) == full.layer_sqnr


def test_a_kept_result_goes_with_its_samples():
    import gc
    import weakref

    class Value:
        pass

    ov_reuse.clear()
    samples = spill([{"input": np.zeros((1, 3, 8, 8), np.float32)}])
    made: list[int] = []

    def make() -> Value:
        made.append(1)
        return Value()

    value = ov_reuse.reuse("test", "key", make, samples)
    assert ov_reuse.reuse("test", "key", make, samples) is value and len(made) == 1
    kept = weakref.ref(value)
    del value
    gc.collect()
    assert kept() is not None                    # kept while its samples live
    del samples
    gc.collect()
    assert kept() is None                        # the run's samples gone, so is the result
