"""Pruning: NNCF's unstructured masks baked into the exported weights, Torch-Pruning's
channel removal that keeps the graph valid, and the errors a user can cause."""

from __future__ import annotations

import numpy as np
import pytest

from tiny_models import tiny_blocks, tiny_cnn

torch = pytest.importorskip("torch")


def _weights(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("mode", ["magnitude-global", "magnitude-local"])
def test_unstructured_zeros_are_in_the_exported_onnx(tmp_path, mode):
    from edgeopt.calibrate.pruning import PruneConfig, onnx_sparsity, prune
    from edgeopt.convert import export_onnx

    model, example = tiny_blocks()
    original = _weights(model)
    pruned = prune(model, example, PruneConfig(mode, 0.5, ignore=("stem",)))
    final = pruned.finalize()
    export_onnx(final, example, tmp_path / "p.onnx")
    measured = {r["tensor"]: r for r in onnx_sparsity(tmp_path / "p.onnx")["layers"]}
    assert measured["stem.weight"]["zeros"] == 0                   # ignored: left whole
    others = [r for name, r in measured.items() if name != "stem.weight"]
    zeros = sum(r["zeros"] for r in others) / sum(r["size"] for r in others)
    assert zeros >= 0.49
    if mode == "magnitude-local":                                   # every layer on its own
        assert all(r["sparsity"] >= 0.45 for r in others), others
    # the user's module is never modified
    assert all(np.array_equal(v, original[k]) for k, v in _weights(model).items())


def test_channels_keep_the_graph_valid_and_cut_macs(tmp_path):
    import onnxruntime as ort

    from edgeopt.calibrate.pruning import PruneConfig, count_macs_params, prune
    from edgeopt.convert import export_onnx

    model, example = tiny_blocks()
    pruned = prune(model, example, PruneConfig("channels", 0.5, round_to=None))
    final = pruned.finalize()
    after = count_macs_params(final, example)
    assert after["macs"] < 0.5 * pruned.before["macs"]
    assert final.expand.out_channels == 16 and final.dw.groups == 16     # depthwise follows
    assert final.stem.out_channels == final.project.out_channels        # residual add follows
    assert final.fc.out_features == 5                                   # classes kept
    assert final.fc.in_features == final.branch_a.out_channels + final.branch_b.out_channels
    export_onnx(final, example, tmp_path / "c.onnx")
    session = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: example[0].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, final(example[0]).numpy(), rtol=1e-4, atol=1e-5)


def test_taylor_importance_uses_data():
    from edgeopt.calibrate.pruning import PruneConfig, PruneError, prune

    model, example = tiny_blocks()
    calib = [{"input": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)}
             for i in range(4)]
    by_norm = prune(model, example, PruneConfig("channels", 0.5, round_to=None))
    by_data = prune(model, example, PruneConfig("channels", 0.5, importance="taylor",
                                                round_to=None), calib=calib, input_names=("input",))
    assert by_data.module.stem.out_channels == by_norm.module.stem.out_channels
    a, b = by_data.module.state_dict(), by_norm.module.state_dict()
    differ = [k for k in a.keys() & b.keys()
              if a[k].shape == b[k].shape and not torch.equal(a[k], b[k])]
    assert differ                     # different channels (and least-squares re-fits)
    with pytest.raises(PruneError, match="taylor scores channels on data"):
        prune(model, example, PruneConfig("channels", 0.5, importance="taylor"))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_range(ratio):
    from edgeopt.calibrate.pruning import PruneConfig, PruneError

    with pytest.raises(PruneError, match=r"must be in \[0, 1\)"):
        PruneConfig("channels", ratio)


def test_unknown_mode_and_layer():
    from edgeopt.calibrate.pruning import PruneConfig, PruneError, prune

    with pytest.raises(PruneError, match="unknown --prune-mode 'magnitude'"):
        PruneConfig("magnitude", 0.5)
    model, example = tiny_blocks()
    with pytest.raises(PruneError, match="no such layer 'stemm' \\(did you mean 'stem'\\?\\)"):
        prune(model, example, PruneConfig("channels", 0.5, ignore=("stemm",)))


def test_torchscript_is_refused():
    from edgeopt.calibrate.pruning import PruneError, check_prunable

    scripted = torch.jit.trace(tiny_cnn(), torch.zeros(1, 3, 16, 16))
    with pytest.raises(PruneError, match="cannot prune TorchScript"):
        check_prunable(scripted, "m.pt")
    with pytest.raises(PruneError, match="pass the PyTorch model"):
        check_prunable(None, "m.onnx")


def test_int8_weight_rounding_keeps_pruned_zeros():
    """GPTQ pushes each weight's rounding error onto the next ones; pruned zeros must stay
    zero, or INT8 would undo the sparsity the zipped artifact relies on."""
    from edgeopt.calibrate.rounding import gptq_rows

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 12))
    w[rng.random(w.shape) < 0.5] = 0.0
    x = rng.standard_normal((12, 200))
    q = gptq_rows(w, np.abs(w).max(axis=1) / 127, x @ x.T / 200, -127, 127)
    assert np.all(q[w == 0] == 0)
    assert np.count_nonzero(q[w != 0]) > 0.9 * np.count_nonzero(w)


def test_saved_pruned_weights_load_into_a_fresh_model(tmp_path):
    from edgeopt.calibrate.pruning import PruneConfig, load_pruned, prune, pruned_state

    model, example = tiny_blocks()
    final = prune(model, example, PruneConfig("channels", 0.5, round_to=None)).finalize()
    torch.save(pruned_state(final), tmp_path / "p.pth")
    fresh, _ = tiny_blocks()
    with torch.no_grad():
        fresh.stem.weight.add_(1.0)                      # different weights before loading
    loaded = load_pruned(fresh, torch.load(tmp_path / "p.pth", weights_only=True))
    assert loaded.expand.out_channels == final.expand.out_channels
    with torch.no_grad():
        np.testing.assert_allclose(loaded(example[0]).numpy(), final(example[0]).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_batchnorm_adaptation_matches_the_new_statistics():
    from edgeopt.calibrate.pruning import adapt_batchnorm

    model, _ = tiny_blocks()
    rng = np.random.default_rng(0)
    samples = [{"input": (3 + 2 * rng.standard_normal((1, 3, 16, 16))).astype(np.float32)}
               for _ in range(20)]
    assert adapt_batchnorm(model, samples, ("input",), batch=5) == 2   # equal batches
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate([s["input"] for s in samples]))
        stem = model.stem(x)
    np.testing.assert_allclose(model.bn0.running_mean.numpy(), stem.mean(dim=(0, 2, 3)).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert not model.training and model.bn0.momentum == 0.1


def test_least_squares_refit_brings_outputs_back():
    """Re-fitting the layers that lost inputs to the unpruned outputs (on calibration
    samples) makes the pruned model closer to the unpruned one on other inputs."""
    from edgeopt.calibrate.pruning import PruneConfig, prune

    model, example = tiny_blocks()
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
             for _ in range(32)]
    test = torch.from_numpy(rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    plain = prune(model, example, PruneConfig("channels", 0.5, round_to=None))
    refit = prune(model, example, PruneConfig("channels", 0.5, round_to=None), calib=calib,
                  input_names=("input",))
    assert plain.reconstructed == 0 and refit.reconstructed >= 2
    with torch.no_grad():
        want = model(test)
        err_plain = float((plain.module(test) - want).pow(2).mean())
        err_refit = float((refit.module(test) - want).pow(2).mean())
    assert err_refit < 0.5 * err_plain, (err_refit, err_plain)
