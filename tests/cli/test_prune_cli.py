"""`edgeopt prune` and `optimize --prune-mode`: artifacts that hold the pruning, and every bad
input as one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_bad_input import assert_user_error

from conftest import sha256, tree

pytest.importorskip("torch_pruning")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def prune(run_cli, model, out: Path, *extra):
    return run_cli("prune", model, "--out", out, "--quiet", *extra)


@pytest.mark.parametrize("ratio", ["1", "-0.2", "1.5"])
def test_ratio_outside_range(run_cli, out, ratio):
    result = prune(run_cli, "ref:digits-cnn", out, "--prune-mode", "channels",
                   "--prune-ratio", ratio)
    assert_user_error(result, f"--prune-ratio {float(ratio)} must be in [0, 1)")
    assert tree(out) == []


def test_onnx_file_is_refused(run_cli, tiny_onnx, out):
    before = sha256(tiny_onnx)
    result = prune(run_cli, tiny_onnx, out, "--prune-mode", "magnitude-global")
    assert_user_error(result, "cannot prune", "pass the PyTorch model")
    assert tree(out) == [] and sha256(tiny_onnx) == before
    result = run_cli("optimize", tiny_onnx, "--out", out, "--quiet", "--calib", "random",
                     "--prune-mode", "channels")
    assert_user_error(result, "cannot prune", "pass the PyTorch model")
    assert tree(out) == []


def test_unknown_ignored_layer(run_cli, out):
    result = prune(run_cli, "ref:digits-cnn", out, "--prune-mode", "channels",
                   "--prune-ignore", "conv1,conv9")
    assert_user_error(result, "--prune-ignore: no such layer 'conv9'", "did you mean")
    assert tree(out) == []


def test_unknown_mode(run_cli, out):
    result = prune(run_cli, "ref:digits-cnn", out, "--prune-mode", "structured")
    assert_user_error(result, "unknown --prune-mode 'structured'")
    assert tree(out) == []


def test_prune_flags_need_a_mode(run_cli, out):
    result = run_cli("optimize", "ref:digits-cnn", "--out", out, "--quiet",
                     "--prune-ratio", "0.3")
    assert_user_error(result, "--prune-ratio needs --prune-mode")
    assert tree(out) == []


def test_finetune_folder_without_data(run_cli, tmp_path, out):
    empty = tmp_path / "ft"
    empty.mkdir()
    (empty / "notes.txt").write_text("no samples here")
    result = prune(run_cli, "ref:digits-cnn", out, "--prune-mode", "channels",
                   "--finetune-data", empty, "--epochs", "1")
    assert_user_error(result, str(empty))
    assert tree(out) == []


def test_finetune_without_data_for_a_user_model(run_cli, out):
    result = prune(run_cli, "tiny_models:tiny_cnn_with_example", out, "--prune-mode",
                   "channels", "--epochs", "1")
    assert_user_error(result, "--epochs needs data", "--finetune-data")
    assert tree(out) == []


def test_prune_writes_onnx_weights_and_report(run_cli, out):
    import onnx
    import torch

    result = prune(run_cli, "ref:digits-cnn", out, "--prune-mode", "magnitude-local",
                   "--prune-ratio", "0.6", "--prune-ignore", "conv1")
    assert result.code == 0, result.err
    assert sorted(tree(out)) == ["digits-cnn.pruned.onnx", "digits-cnn.pruned.pth",
                                 "recipe.yaml", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    art = report["pruning"]["artifact"]
    layers = {r["tensor"]: r for r in art["layers"]}
    assert layers["conv1.weight"]["zeros"] == 0
    assert all(r["sparsity"] >= 0.59 for n, r in layers.items() if n != "conv1.weight")
    assert art["pruned_layers_sparsity"] >= 0.59
    # the file really holds the zeros, and the weights load into the model's class
    model = onnx.load(str(out / "digits-cnn.pruned.onnx"))
    conv2 = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer
                 if i.name == "conv2.weight")
    assert (conv2 == 0).mean() >= 0.59
    from edgeopt.calibrate.pruning import load_pruned
    from edgeopt.reference_models.digits_cnn import build_digits_cnn

    net = load_pruned(build_digits_cnn(), torch.load(out / "digits-cnn.pruned.pth",
                                                     weights_only=True))
    # the exporter folds BatchNorm into the weights: same zeros, rescaled values
    assert np.array_equal(net.conv2.weight.detach().numpy() == 0, conv2 == 0)
    onnx_art = report["artifacts"][0]
    assert onnx_art["size_zipped_bytes"] < onnx_art["size_bytes"]
    assert "## Pruning" in (out / "report.md").read_text()


def test_user_model_without_data_prunes_and_says_so(run_cli, out):
    result = prune(run_cli, "tiny_models:tiny_cnn_with_example", out, "--prune-mode",
                   "channels", "--prune-ratio", "0.5")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["pruning"]["macs_ratio"] < 0.8     # widths stay multiples of 8
    assert any("no calibration data" in n for n in report["pruning"]["notes"])
    assert "random inputs" in report["data"]["evaluation"]
