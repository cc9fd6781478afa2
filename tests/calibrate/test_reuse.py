"""Builds of the same model share their first stages (calibrate/reuse.py): a build that
takes them from the memo is byte for byte the build that computes them, and a changed
input never meets a stale stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgeopt.calibrate import QuantConfig, quantize_onnx_for_ort, reuse
from edgeopt.calibrate.quantize import activation_stats
from edgeopt.calibrate.stats import collect_stats

from tiny_models import save_inverted_residual_onnx

VARIANTS = {"default": QuantConfig(), "int8-stem": QuantConfig(fp32_stem=False),
            "no-guard": QuantConfig(saturation_guard=False),
            "fast": QuantConfig(effort="fast"),
            "probe": QuantConfig(exclude_nodes=("body3",))}


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _facts(result) -> dict:
    facts = dataclasses.asdict(result)
    facts["path"] = facts["path"].read_bytes()
    return facts


@pytest.fixture
def net(tmp_path):
    reuse.clear()
    yield save_inverted_residual_onnx(tmp_path / "net.onnx", body=40)
    reuse.clear()


def test_variant_builds_from_the_memo_are_the_fresh_builds(net, tmp_path):
    calib = _samples(6, 0)
    stats = activation_stats(net, calib)
    fresh = {}
    for name, config in VARIANTS.items():
        reuse.clear()
        fresh[name] = _facts(quantize_onnx_for_ort(net, tmp_path / f"fresh-{name}.onnx",
                                                   calib, config, stats=stats))
    reuse.clear()
    for name, config in VARIANTS.items():
        got = _facts(quantize_onnx_for_ort(net, tmp_path / f"memo-{name}.onnx", calib, config,
                                           stats=stats))
        assert got == fresh[name], name
    # the stages were taken, not recomputed: the FP32 model's facts and the equalized
    # model by every build after the first, the QDQ graph by the builds that differ only
    # in the refinement (no guard, fast effort)
    assert reuse.memo().hits >= 2 * (len(VARIANTS) - 1) + 2
    assert any("equalized" in n for n in fresh["default"]["notes"])
    assert fresh["default"]["path"] != fresh["int8-stem"]["path"]


def test_other_samples_or_weights_never_meet_a_stale_stage(net, tmp_path):
    """The statistics handed in stay the same, so only the samples or the file tell the
    builds apart (the stem quantized: its equalized activation's range counts)."""
    import onnx

    first, second = _samples(6, 0), _samples(6, 1)
    stats = activation_stats(net, first)

    def build(name: str, calib) -> bytes:
        return quantize_onnx_for_ort(net, tmp_path / name, calib, QuantConfig(fp32_stem=False),
                                     stats=stats).path.read_bytes()

    before = build("a.onnx", first)
    via_memo = build("b.onnx", second)
    reuse.clear()
    assert build("c.onnx", second) == via_memo != before

    model = onnx.load(str(net))                      # same file name, other weights
    init = model.graph.initializer[-4]
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 0.5,
                                               init.name))
    onnx.save(model, str(net))
    build("d.onnx", second)                          # the memo has this file's stages
    via_memo = build("e.onnx", second)
    reuse.clear()
    assert build("f.onnx", second) == via_memo != before


def test_the_memo_stays_within_its_bounds():
    memo = reuse.Memo(entries=2, max_bytes=100)
    memo.put("a", 1, 40)
    memo.put("b", 2, 40)
    assert memo.get("a") == 1                        # now the most recent
    memo.put("c", 3, 40)                             # over 100 bytes: the oldest ("b") goes
    assert memo.get("b") is None and memo.get("a") == 1 and memo.get("c") == 3
    memo.put("d", 4, 10)                             # over 2 entries
    assert len(memo) == 2 and memo.get("a") is None
    memo.put("huge", 5, 101)                         # larger than the bound: not kept
    assert memo.get("huge") is None and len(memo) == 2


def test_statistics_of_some_tensors_run_only_their_nodes_and_match_the_full_pass(net):
    calib = _samples(5, 2)
    names = ["stem_act", "body2_act"]
    full = collect_stats(net, calib)
    some = collect_stats(net, calib, names=names)
    bare = collect_stats(net, calib, names=names, reservoir=0)
    for name in names:
        for field in ("min", "max", "count", "samples", "sum_min", "sum_max"):
            assert getattr(some[name], field) == getattr(full[name], field)
            assert getattr(bare[name], field) == getattr(full[name], field)
        np.testing.assert_array_equal(some[name].channel_max, full[name].channel_max)
        assert bare[name].reservoir.size == 0 and some[name].reservoir.size


@pytest.mark.parametrize("calibrator", ["mean-minmax", "mse"])
def test_its_own_statistics_pass_gives_the_build_of_full_statistics(net, tmp_path, calibrator):
    """Without statistics handed in, quantize_onnx_for_ort gathers only what its calibrator
    reads (no reservoir for the min-max ones): the same artifact as with full statistics."""
    calib = _samples(6, 3)
    config = QuantConfig(calibrator=calibrator, fp32_stem=False)
    full = quantize_onnx_for_ort(net, tmp_path / "full.onnx", calib, config,
                                 stats=activation_stats(net, calib))
    reuse.clear()
    own = quantize_onnx_for_ort(net, tmp_path / "own.onnx", calib, config)
    assert own.path.read_bytes() == full.path.read_bytes()
    assert own.notes == full.notes and own.layer_sqnr == full.layer_sqnr


def test_sample_digests_tell_apart_shapes_dtypes_and_values_of_any_rank():
    base = [{"x": np.array(1.0, np.float32), "flag": np.array([True, False])}]
    others = [
        [{"x": np.array([1.0], np.float32), "flag": np.array([True, False])}],   # 0-d vs 1-d
        [{"x": np.array(1.0, np.float64), "flag": np.array([True, False])}],
        [{"x": np.array(1.0, np.float32), "flag": np.array([True, True])}],
        [{"x": np.array(1.0, np.float32), "flag": np.zeros((2, 0), bool)}],       # empty
    ]
    digests = {reuse.samples_digest(s) for s in [base, *others]}
    assert len(digests) == 1 + len(others)
    strided = np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2]
    assert reuse.samples_digest([{"x": strided}]) == reuse.samples_digest(
        [{"x": np.array(strided)}])


@pytest.mark.parametrize("name", ["default", "int8-stem", "no-guard"])
def test_layer_sqnr_left_out_then_read_from_the_file_is_the_builds(net, tmp_path, name):
    """A weighing variant leaves its per-layer SQNR out (sqnr=False); when it is adopted,
    artifact_layer_sqnr gives the rows its build would have: from the memo's stages, and
    from stages made again."""
    from edgeopt.calibrate.quantize import artifact_layer_sqnr

    calib, config = _samples(6, 0), VARIANTS[name]
    stats = activation_stats(net, calib)
    full = quantize_onnx_for_ort(net, tmp_path / "full.onnx", calib, config, stats=stats)
    reuse.clear()
    lean = quantize_onnx_for_ort(net, tmp_path / "lean.onnx", calib, config, stats=stats,
                                 sqnr=False)
    assert lean.layer_sqnr == () and full.layer_sqnr
    assert lean.path.read_bytes() == full.path.read_bytes()
    assert artifact_layer_sqnr(net, lean.path, calib, config, stats) == full.layer_sqnr
    reuse.clear()
    assert artifact_layer_sqnr(net, lean.path, calib, config, stats) == full.layer_sqnr
