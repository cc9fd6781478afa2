"""edgeopt.tradeoffs.weigh: a speed-for-accuracy default stays only when it buys accuracy."""

from __future__ import annotations

import pytest

from edgeopt.backends import Artifact
from edgeopt.tradeoffs import Choice, describe, min_gain, weigh

CHOICE = Choice("fp32-stem", "the stem (3 convolutions) kept FP32", {"fp32_stem": False},
                ("a", "b", "c"))


def _art(value: float, file: str = "m.int8-ort.onnx") -> Artifact:
    return Artifact(file, "onnx", "int8", "onnxruntime",
                    accuracy={"metric": "top1", "value": value, "samples": 375})


def _weigh(with_value: float, without_value: float, *, budget: float | None = None,
           timed: tuple[float, float] | None = None):
    art, calls = _art(with_value), []
    record = weigh(
        CHOICE, art,
        build=lambda changes: calls.append(("build", changes)) or _art(None, "v.onnx"),
        evaluate=lambda a: without_value,
        drop=lambda v: 0.82 - v,
        acceptable=lambda v: budget is None or 0.82 - v <= budget,
        time_pair=(lambda a, b: timed) if timed else None,
        adopt=lambda v: calls.append(("adopt", v.file)),
        discard=lambda v: calls.append(("discard", v.file)))
    return record, calls


def test_a_choice_that_buys_accuracy_stays_and_its_cost_is_reported():
    record, calls = _weigh(0.820, 0.808, timed=(2.0, 1.6))
    assert calls == [("build", {"fp32_stem": False}), ("discard", "v.onnx")]
    assert record["kept"] and record["gain"] == pytest.approx(0.012)
    assert record["p50_cost"] == pytest.approx(1.25) and record["p50_ms_without"] == 1.6
    assert "kept" in describe(record)


def test_a_choice_that_buys_nothing_is_dropped_and_the_layers_quantized():
    record, calls = _weigh(0.820, 0.8187)
    assert calls[-1] == ("adopt", "v.onnx") and not record["kept"]
    assert record["p50_cost"] == "not timed"
    assert "dropped" in describe(record)


def test_a_build_outside_the_budget_is_never_adopted():
    record, calls = _weigh(0.820, 0.8187, budget=0.0)
    assert record["kept"] and calls[-1] == ("discard", "v.onnx")


def test_the_variant_is_removed_when_measuring_it_fails():
    calls = []

    def evaluate(a):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        weigh(CHOICE, _art(0.8), build=lambda c: _art(None, "v.onnx"), evaluate=evaluate,
              drop=lambda v: -v, acceptable=lambda v: True, time_pair=None,
              adopt=lambda v: calls.append("adopt"), discard=lambda v: calls.append("discard"))
    assert calls == ["discard"]


def test_min_gain_is_at_least_one_sample_of_a_fraction_metric():
    assert min_gain("top1", 375) == pytest.approx(1 / 375)
    assert min_gain("top1", 5000) == pytest.approx(0.002)
    assert min_gain("sqnr", 10) == 0.25
    assert min_gain("output_cosine_vs_fp32", 8) == 0.0005


def _target(runtime: str, kind: str, arch: str, isa: tuple[str, ...], label: str = "d:cpu",
            absent: str | None = "not this machine"):
    from types import SimpleNamespace

    unit = SimpleNamespace(kind=kind, arch=arch, isa=isa)
    return SimpleNamespace(runtime=runtime, unit_obj=unit, label=label, absent=absent)


def test_the_guard_goes_unweighed_only_for_absent_cpus_without_dot_products():
    from edgeopt.tradeoffs import saturating_elsewhere

    host = _target("onnxruntime", "cpu", "x86_64", ("avx2",), "host-cpu:cpu", absent=None)
    vnni = _target("onnxruntime", "cpu", "x86_64", ("avx2", "avx512_vnni"), "i7:cpu")
    avx2 = _target("onnxruntime", "cpu", "x86_64", ("avx2", "fma"), "old:cpu")
    arm = _target("onnxruntime", "cpu", "aarch64", ("asimd",), "rpi4:cpu")
    gpu = _target("onnxruntime", "igpu", "x86_64", (), "x:igpu")
    other = _target("openvino", "cpu", "x86_64", ("avx2",), "other:cpu")
    assert saturating_elsewhere([host, vnni, arm, gpu, other], "onnxruntime") == []
    assert saturating_elsewhere([host, avx2, other], "onnxruntime") == ["old:cpu"]
    assert saturating_elsewhere([other], "openvino") == ["other:cpu"]


def test_the_guard_is_not_needed_only_when_no_target_of_the_runtime_can_saturate():
    from edgeopt.tradeoffs import guard_not_needed

    vnni_host = _target("onnxruntime", "cpu", "x86_64", ("avx2", "avx512_vnni"),
                        "host-cpu:cpu", absent=None)
    avx2_host = _target("onnxruntime", "cpu", "x86_64", ("avx2",), "host-cpu:cpu", absent=None)
    arm = _target("onnxruntime", "cpu", "aarch64", ("asimd",), "rpi4:cpu")
    gpu = _target("onnxruntime", "igpu", "x86_64", (), "x:igpu")
    avx2 = _target("onnxruntime", "cpu", "x86_64", ("avx2", "fma"), "old:cpu")
    unknown = _target("onnxruntime", "cpu", "x86_64", (), "mystery:cpu")
    other = _target("openvino", "cpu", "x86_64", ("avx2",), "other:cpu")
    reason = guard_not_needed([vnni_host, arm, gpu, other], "onnxruntime")
    assert reason == ("no target can saturate: host-cpu:cpu (this machine), rpi4:cpu, x:igpu "
                      "(int8 dot products, ARM, or not a CPU)")
    for targets in ([avx2_host], [vnni_host, avx2], [vnni_host, unknown], [other], []):
        assert guard_not_needed(targets, "onnxruntime") is None, targets


def test_a_gain_of_exactly_one_sample_counts():
    record, calls = _weigh(0.82, 0.82 - 1 / 375)
    assert record["kept"] and calls[-1] == ("discard", "v.onnx")


@pytest.mark.parametrize("guard_value", [0.80, 0.83])
def test_variants_leave_out_the_layer_sqnr_and_only_the_adopted_one_gets_it(tmp_path,
                                                                           guard_value):
    """Weighing builds each variant with layer_sqnr=False; the variant that stays is
    completed (its per-layer SQNR, for its own job) once, after every choice, the discarded
    ones never, nor one adopted and then replaced by a later one."""
    import io
    from dataclasses import dataclass, field
    from types import SimpleNamespace

    from rich.console import Console

    from edgeopt.backends import QuantJob
    from edgeopt.calibrate.quantize import QuantConfig
    from edgeopt.tradeoffs import weigh_choices

    guard = Choice("saturation-guard", "the guard", {"saturation_guard": False})

    @dataclass
    class Staging:
        dir: object
        files: list = field(default_factory=list)

        def path(self, name):
            return self.dir / name

    staging = Staging(tmp_path)
    values = {"without-fp32-stem": 0.82, "without-saturation-guard": guard_value}
    built, completed = [], []

    def build(job):
        built.append(job)
        staging.path(f"{job.variant}.onnx").write_bytes(b"x")
        return _art(values[job.variant], f"{job.variant}.onnx")

    def complete(job, art):
        completed.append((job, art.file, art.accuracy["value"]))
        art.sensitivity = (("stem",),)
        return art

    budget = SimpleNamespace(drop=lambda v: 0.82 - v, allowed_drop=None)
    state = SimpleNamespace(budget=budget, targets=[], tradeoffs=[], staging=staging,
                            recipe=SimpleNamespace(quant=SimpleNamespace(effort="default"),
                                                   benchmark=False),
                            prepared=SimpleNamespace(eval_inputs=[{}]),
                            progress=SimpleNamespace(console=Console(file=io.StringIO())))
    backend = SimpleNamespace(speed_choices=lambda art, job: [CHOICE, guard])
    art = _art(0.8187)
    job = QuantJob("m", tmp_path / "m.onnx", None, QuantConfig(), None, staging, None)
    weigh_choices(state, backend, job, art, build=build, evaluate=lambda a: a.accuracy["value"],
                  complete=complete)
    assert [j.variant for j in built] == ["without-fp32-stem", "without-saturation-guard"]
    assert all(not j.layer_sqnr for j in built)
    assert built[1].config.fp32_stem is False        # weighed on the build without the stem
    assert art.sensitivity == (("stem",),)
    guard_dropped = guard_value > 0.82
    assert [r["kept"] for r in state.tradeoffs] == [False, not guard_dropped]
    ((final, file, value),) = completed               # once, on the artifact as it ends
    assert final.variant == built[-1 if guard_dropped else 0].variant
    assert final.config == built[-1 if guard_dropped else 0].config
    assert not final.config.fp32_stem and final.config.saturation_guard is not guard_dropped
    assert file == art.file == "m.int8-ort.onnx"
    assert value == art.accuracy["value"] == (guard_value if guard_dropped else 0.82)
