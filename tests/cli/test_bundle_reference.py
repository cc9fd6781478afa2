"""reference.npz stays small next to the model, and verify checks every output against its
own tolerance, plus argmax for score outputs (issue 20)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest


def save_detector(path: Path, size: int = 8, classes: int = 3, score_scale: float = 1.0) -> Path:
    """A detector head: ``boxes`` [1, size*size, 4] on a 0-320 pixel scale (Sigmoid x 320,
    as a box decode does) and ``scores`` [1, size*size, classes] (Sigmoid, 0-1), from a few
    hundred weights: its outputs are large next to its weights. ``score_scale`` != 1 breaks
    the scores (all multiplied by it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("wb", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
        ("ws", (rng.standard_normal((classes, 3, 1, 1)) * 2).astype(np.float32)),
        ("px", np.array([320.0], np.float32)), ("k", np.array([score_scale], np.float32)),
        ("shape_b", np.array([1, 4, size * size], np.int64)),
        ("shape_s", np.array([1, classes, size * size], np.int64))]]
    nodes = [
        helper.make_node("Conv", ["input", "wb"], ["cb"]),
        helper.make_node("Sigmoid", ["cb"], ["sb"]),
        helper.make_node("Mul", ["sb", "px"], ["mb"]),
        helper.make_node("Reshape", ["mb", "shape_b"], ["rb"]),
        helper.make_node("Transpose", ["rb"], ["boxes"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["input", "ws"], ["cs"]),
        helper.make_node("Sigmoid", ["cs"], ["ss"]),
        helper.make_node("Mul", ["ss", "k"], ["ms"]),
        helper.make_node("Reshape", ["ms", "shape_s"], ["rs"]),
        helper.make_node("Transpose", ["rs"], ["scores"], perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, size * size, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, size * size, classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_reference_count_follows_the_budget():
    from edgeopt._package_manifest import (
        REFERENCE_BYTES,
        REFERENCE_MAX_SAMPLES,
        reference_budget,
        reference_count,
    )

    assert REFERENCE_MAX_SAMPLES <= 4 and REFERENCE_BYTES == 1 << 20
    assert reference_count(1_000, 100_000) == REFERENCE_MAX_SAMPLES       # small: a few
    assert reference_budget(3_600_000) == 1 << 20                         # 10% < 1 MB
    assert reference_budget(50_000_000) == 5_000_000                      # 10% > 1 MB
    # the detector: 3.6 MB model, ~2.7 MB of outputs per sample -> one sample
    assert reference_count(2_700_000, 3_600_000) == 1
    assert reference_count(300_000, 3_600_000) == 3                       # fewer when big
    assert reference_count(1_500_000, 50_000_000) == 3


def test_detector_reference_stays_small_next_to_the_model(run_cli, tmp_path):
    from edgeopt.bundle import read_npz

    model = save_detector(tmp_path / "det.onnx", size=32, classes=64)   # 256 KB of scores
    bundle = tmp_path / "det.zip"
    result = run_cli("package", model, "--target", "linux-arm", "--out", bundle, "--quiet")
    assert result.code == 0, result.err
    members = _members(bundle)
    manifest = json.loads(members["manifest.json"])
    ref = read_npz(members["reference.npz"])
    model_bytes = len(members["model.onnx"])
    per_sample = sum(a[0].nbytes for a in ref.values())
    assert per_sample > 50 * model_bytes          # outputs far larger than the weights
    limit = max(1 << 20, model_bytes // 10)
    assert len(members["reference.npz"]) <= limit, (len(members["reference.npz"]), limit)
    assert manifest["reference"]["budget_bytes"] == limit
    assert manifest["reference"]["bytes"] <= limit
    # as many samples as fit, fewer than the small-model count
    assert manifest["reference"]["samples"] == len(ref["input.0"]) == limit // per_sample == 3
    tolerance = manifest["tolerance"]["outputs"]
    assert "argmax" in tolerance["scores"] and "argmax" not in tolerance["boxes"]
    assert tolerance["boxes"]["max_abs_diff"] > 100 * tolerance["scores"]["max_abs_diff"]
    assert run_cli("verify", bundle, "--no-bench").code == 0


def _forge(good: Path, model: Path, out: Path) -> Path:
    """``good``'s manifest and reference with another model (checksums recomputed)."""
    from edgeopt.bundle import write_bundle

    members = _members(good)
    manifest = json.loads(members.pop("manifest.json"))
    members["model.onnx"] = model.read_bytes()
    write_bundle(out, members, {k: v for k, v in manifest.items() if k != "files"})
    return out


def test_broken_scores_fail_verify_though_one_max_abs_tolerance_would_pass(run_cli, tmp_path):
    import onnxruntime as ort

    from edgeopt.bundle import read_npz

    good = tmp_path / "good.zip"
    result = run_cli("package", save_detector(tmp_path / "det.onnx"), "--target", "linux-arm",
                     "--out", good, "--quiet")
    assert result.code == 0, result.err
    broken = save_detector(tmp_path / "broken.onnx", score_scale=0.8)
    forged = _forge(good, broken, tmp_path / "forged.zip")
    result = run_cli("verify", forged, "--no-bench", "--json")
    assert result.code == 1
    line = result.err.strip().splitlines()[-1]
    assert "output 'scores' differs from the reference" in line, line   # boxes passed first
    # the old rule, one max-abs tolerance from the largest output (boxes, 0-320), passes it
    members = _members(good)
    ref = read_npz(members["reference.npz"])
    manifest = json.loads(members["manifest.json"])
    assert manifest["outputs"][1]["name"] == "scores"
    peak = max(float(np.abs(ref[k]).max()) for k in ref if k.startswith("output."))
    old_single_tolerance = 1e-3 * max(peak, 1.0)          # fp32's relative_max_abs_diff
    session = ort.InferenceSession(str(broken), providers=["CPUExecutionProvider"])
    worst = max(float(np.abs(session.run(["scores"], {"input": x})[0] - y).max())
                for x, y in zip(ref["input.0"], ref["output.1"], strict=True))
    assert peak > 200 and worst < old_single_tolerance, (peak, worst)
    assert worst > 50 * manifest["tolerance"]["outputs"]["scores"]["max_abs_diff"]


def _rows(tolerance: dict) -> list[dict]:
    return [{"name": name, "max_abs_diff": 0.0, "min_cosine": 1.0, "worst_sample": 0,
             "allowed_max_abs_diff": tol["max_abs_diff"], "allowed_min_cosine": tol["min_cosine"],
             **({"argmax": {**tol["argmax"], "rows": 0, "changed": 0}} if "argmax" in tol
                else {})} for name, tol in tolerance["outputs"].items()]


class _Spec:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.parametrize("lead, fails", [(0.05, True), (0.005, False)])
def test_argmax_of_score_outputs_must_hold_where_the_reference_is_decided(lead, fails):
    """INT8: a swap of the two best classes within max-abs tolerance still fails verify
    where the reference's best class led clearly; near ties may flip."""
    from edgeopt._package_manifest import tolerance_for
    from edgeopt._verify_cli import _check_row, _compare, _Failed

    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 0.5, (1, 16, 5))
    scores[0, 0, 0], scores[0, 0, 4] = 0.0, 1.0              # range 0-1
    scores[0, 3, 1], scores[0, 3, 2] = 0.6, 0.6 + lead
    boxes = rng.uniform(0, 320, (1, 16, 4))
    tolerance = tolerance_for("int8", [[boxes, scores]], [_Spec("boxes"), _Spec("scores")])
    assert "argmax" in tolerance["outputs"]["scores"] and "argmax" not in \
        tolerance["outputs"]["boxes"]
    got = scores.copy()
    got[0, 3, 1], got[0, 3, 2] = scores[0, 3, 2], scores[0, 3, 1]         # a swap
    rows = _rows(tolerance)
    _compare("m.onnx", rows[0], boxes + 1.0, boxes, 0)                     # 1 px: fine
    _compare("m.onnx", rows[1], got, scores, 0)
    assert rows[1]["max_abs_diff"] <= rows[1]["allowed_max_abs_diff"]     # max-abs passes
    _check_row("m.onnx", rows[0], "host-cpu:cpu")
    if fails:
        with pytest.raises(_Failed, match=r"'scores' picks another class than the reference .*"
                                          r"sample 0, row 3: class 1, reference 2"):
            _check_row("m.onnx", rows[1], "host-cpu:cpu")
    else:
        _check_row("m.onnx", rows[1], "host-cpu:cpu")


def test_classifier_logits_get_an_argmax_check_and_embeddings_do_not():
    from edgeopt._package_manifest import tolerance_for

    rng = np.random.default_rng(0)
    logits = [[rng.standard_normal((1, 10)) * 5] for _ in range(3)]
    assert "argmax" in tolerance_for("int8", logits, [_Spec("logits")],
                                     classifier=True)["outputs"]["logits"]
    assert "argmax" not in tolerance_for("int8", logits, [_Spec("embedding")])["outputs"][
        "embedding"]
    # a tolerance relative to the output's range, not to max(1, peak)
    small = [[rng.uniform(0.0, 0.01, (1, 1000))]]
    tol = tolerance_for("int8", small, [_Spec("probs")])["outputs"]["probs"]
    assert tol["max_abs_diff"] <= 0.1 * 0.01 and "argmax" in tol
