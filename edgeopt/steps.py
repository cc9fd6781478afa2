"""The pipeline's steps: small functions over one :class:`RunState`, each timed and shown.

``optimize`` runs :data:`OPTIMIZE` top to bottom; ``prune`` runs the same ``reference``,
``prune`` and ``export`` steps and :func:`evaluate_artifact`. A step names no runtime: it
asks the backend registry (:mod:`edgeopt.backends`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._outputs import run_all, stack_first, torch_outputs
from edgeopt.backends import Artifact, QuantJob, get_backend, onnx_runner, runtime_names
from edgeopt.budget import Budget, within_budget
from edgeopt.metrics import GATE, gate_problems, output_figures
from edgeopt.recipe import Recipe

__all__ = ["OPTIMIZE", "RunState", "benchmark", "calibrate", "carry_states", "convert", "evaluate",
           "evaluate_artifact", "export", "prune", "quantize", "reference"]

PARITY_SAMPLES = 8
GATE_TRIALS = 3             # node groups the default gate may return to FP32 before it flags
NOT_BENCHMARKED = {"label": "not-run",
                   "reason": "--no-bench: time it on the device with edgeopt bench or verify"}


@dataclass
class RunState:
    """Everything a run has resolved and made so far."""

    recipe: Recipe
    progress: Any                              # edgeopt._progress.Steps
    prepared: Any                              # edgeopt._source.Prepared
    staging: Any                               # edgeopt._outdir.Staging
    targets: list = field(default_factory=list)
    finetune_data: Any = None
    ref_outs: list | None = None               # the source model's outputs per eval sample
    fp32_ref: np.ndarray | None = None         # their first outputs, stacked
    module: Any = None                         # the nn.Module to export (pruned or not)
    parity_ref: list | None = None             # what the export must reproduce
    fp32_onnx: Path | None = None
    stats: Any = None                          # activation statistics of fp32_onnx
    pruning: Any = None                        # edgeopt._prune_step.PruneOutcome
    budget: Budget | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    records: list = field(default_factory=list)    # edgeopt.report.ArtifactRecord
    step_records: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tradeoffs: list[dict] = field(default_factory=list)   # edgeopt.tradeoffs.weigh records

    @property
    def name(self) -> str:
        return self.prepared.name

    @property
    def parity_inputs(self) -> list[dict[str, np.ndarray]]:
        return self.prepared.eval_inputs[:PARITY_SAMPLES]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(n for n, _, _ in self.prepared.input_specs)

    def warn(self, text: str) -> None:
        self.progress.warn(text)
        self.warnings.append(text)

    def record_step(self, name: str, **extra) -> None:
        self.step_records.append({"name": name, **extra})


def carry_states(state: RunState) -> None:
    """Random data for a model with state inputs: each sample's state is the state the
    source model gave back for the previous one (zeros first), as it is run."""
    from edgeopt._states import carry_states as carry

    prepared, data = state.prepared, state.recipe.data
    if not prepared.states or data.calib != "random":
        return
    with state.progress.step("carry state inputs"):
        loaded = onnx_runner().load(prepared.source.path)
        names = _output_names(loaded)
        prepared.calib = carry(prepared.calib, prepared.states, names, loaded.run)
        if data.eval is None:
            prepared.eval_inputs = carry(prepared.eval_inputs, prepared.states, names,
                                         loaded.run)
    state.record_step("carry state inputs", states=dict(prepared.states))


def reference(state: RunState) -> None:
    """The source model's own outputs on the evaluation set: the FP32 reference."""
    prepared, source = state.prepared, state.prepared.source
    with state.progress.step("FP32 reference outputs") as update:
        if source.is_torch:
            outs = torch_outputs(source.module, state.input_names, prepared.eval_inputs, update)
        else:
            outs = run_all(onnx_runner().load(source.path), prepared.eval_inputs, update)
    state.ref_outs, state.fp32_ref = outs, stack_first(outs)
    state.module, state.parity_ref = source.module, outs[:PARITY_SAMPLES]


def prune(state: RunState) -> None:
    """Prune (and fine-tune) the PyTorch model. The metric stays against the unpruned FP32
    outputs, so every artifact's figure includes what pruning cost."""
    if state.recipe.prune is None:
        return
    from edgeopt._prune_step import run_prune

    state.pruning = run_prune(state.recipe.prune, state.prepared, state.fp32_ref, state.progress,
                              state.finetune_data)
    state.module = state.pruning.module
    state.parity_ref = torch_outputs(state.module, state.input_names, state.parity_inputs)


def export(state: RunState, file: str | None = None) -> None:
    """The FP32 ONNX: exported from PyTorch and checked, or a copy of the user's file
    (never modified). It is the artifact of the backend that runs plain ONNX."""
    from edgeopt.convert import export_onnx

    source = state.prepared.source
    path = state.staging.path(file or f"{state.name}.fp32.onnx")
    if source.is_torch:
        with state.progress.step("torch -> ONNX"):
            result = export_onnx(state.module, source.example_inputs, path,
                                 input_names=state.input_names,
                                 output_names=state.prepared.output_names or None)
            parity = _parity("torch -> ONNX", state.parity_ref, onnx_runner().load(path), state)
        for note in result.warnings:
            state.warn(note)
        state.record_step("torch -> ONNX", exporter=result.exporter, opset=result.opset,
                          parity=parity)
    else:
        with state.progress.step("copy ONNX"):
            opset = _copy_onnx(source, path)
        state.record_step("copy ONNX")
        if opset is not None:
            step = f"ONNX opset {opset[0]} -> {opset[1]}"
            with state.progress.step(step):
                parity = _parity(step, state.parity_ref, onnx_runner().load(path), state)
            state.record_step(step, parity=parity)
    state.fp32_onnx = path
    runner = onnx_runner()
    state.artifacts.append(Artifact(path.name, runner.format, "fp32", runner.runtime))


def convert(state: RunState) -> None:
    """Each runtime's FP32 artifact from the ONNX export, parity-checked against it."""
    def check_parity(step: str, path: Path) -> dict:
        reference = run_all(onnx_runner().load(state.fp32_onnx), state.parity_inputs)
        return _parity(step, reference, backend.load(path), state)

    for runtime in _runtimes(state):
        backend = get_backend(runtime)
        built = backend.build_fp32(state.name, state.fp32_onnx, state.staging, state.progress,
                                   check_parity)
        if built is not None:
            art, record = built
            state.artifacts.append(art)
            state.record_step(**record)


def calibrate(state: RunState) -> None:
    """Activation statistics of the FP32 ONNX over the calibration set, in one pass."""
    if not state.recipe.quant.enabled:
        return
    from edgeopt.calibrate.calibrators import compute_ranges, sqnr_gain_db
    from edgeopt.calibrate.quantize import activation_stats

    calib, calibrator = state.prepared.calib, state.recipe.quant.calibrator
    with state.progress.step("calibration statistics") as update:
        state.stats = activation_stats(state.fp32_onnx, calib, update)
    gains = sqnr_gain_db(state.stats, compute_ranges(state.stats, calibrator))
    state.record_step("calibration statistics", tensors=len(state.stats), samples=len(calib),
                      calibrator=calibrator, **_gain_summary(gains))


def quantize(state: RunState) -> None:
    """INT8 per backend; with a budget, sensitive layers return to FP32 until it holds."""
    quant = state.recipe.quant
    if not quant.enabled:
        return
    prepared = state.prepared
    fp32_value = prepared.score(state.fp32_ref, state.fp32_ref)
    if quant.max_accuracy_drop is not None:      # the user's budget replaces the gate
        allowed, trials = quant.allowed_drop(fp32_value), None
    else:   # the default gate: a task metric may drop a point; a few groups may return
        allowed = GATE["max_metric_drop"] if prepared.task_metric else None
        trials = GATE_TRIALS
    state.budget = Budget(quant.max_accuracy_drop, fp32_value, allowed, quant.max_fp32_nodes,
                          trials, prepared.higher_is_better)
    for runtime in _runtimes(state):
        backend = get_backend(runtime)

        def job(excluded: list[str]) -> QuantJob:
            return QuantJob(state.name, state.fp32_onnx, prepared,
                            _quant_config(quant, excluded), state.stats, state.staging,
                            state.progress)

        outcome = within_budget(
            runtime, state.budget,
            build=lambda excluded, b=backend, j=job: b.quantize(j(excluded)),
            evaluate=lambda art: evaluate_artifact(state, art),
            rank=lambda art, b=backend, j=job: b.sensitivity(art, j([])),
            warn=state.progress.warn)
        _weigh_choices(state, backend, job(outcome.reverted), outcome.artifact)
        value = outcome.artifact.accuracy["value"]
        warning = state.budget.record(runtime, outcome.artifact, value, outcome.reverted)
        if warning:
            state.warn(warning)
        _gate(state, outcome.artifact, runtime)
        state.artifacts.append(outcome.artifact)


def _weigh_choices(state: RunState, backend, job: QuantJob, art: Artifact) -> None:
    """Each default of ``art``'s build that trades speed for accuracy, measured against the
    build without it and kept only where it buys accuracy (:mod:`edgeopt.tradeoffs`)."""
    from edgeopt.tradeoffs import (
        adopt,
        describe,
        discard,
        not_weighed,
        saturating_elsewhere,
        time_pair,
        weigh,
    )

    budget = state.budget
    elsewhere = saturating_elsewhere(state.targets, art.runtime)
    for choice in backend.speed_choices(art, job):
        if choice.host_specific and elsewhere:
            state.tradeoffs.append(not_weighed(choice, art.runtime, f"{', '.join(elsewhere)} "
                                               "may need it and is not this machine"))
            state.progress.console.print(f"  {describe(state.tradeoffs[-1])}")
            continue

        def build(changes: dict, c=choice, base=job) -> Artifact:
            return backend.quantize(replace(base, variant=f"without-{c.name}",
                                            config=replace(base.config, **changes)))

        record = weigh(
            choice, art, build=build, evaluate=lambda a: evaluate_artifact(state, a),
            drop=budget.drop,
            acceptable=lambda v: budget.allowed_drop is None
            or budget.drop(v) <= budget.allowed_drop + 1e-9,
            time_pair=time_pair(state.targets, state.recipe, state.staging,
                                state.prepared.eval_inputs[0]),
            adopt=lambda v: adopt(state.staging, art, v),
            discard=lambda v: discard(state.staging, v))
        state.tradeoffs.append(record)
        state.progress.console.print(f"  {describe(record)}")
        if not record["kept"]:      # later choices are weighed on the build without it
            job = replace(job, config=replace(job.config, **choice.without))


def _gate(state: RunState, art: Artifact, runtime: str) -> None:
    """An INT8 artifact that lost accuracy or clips an output is marked and named, never
    passed as ok: ``accuracy-drop`` (the budget or the default gate) or ``clipped-output``."""
    budget, figures = state.budget, art.accuracy.get("outputs", [])
    if budget.max_accuracy_drop is not None:
        problems = [] if budget.runtimes[runtime]["met"] else ["over the accuracy budget"]
    else:
        drop = budget.drop(art.accuracy["value"]) if state.prepared.task_metric else None
        problems = gate_problems(figures, drop)
    if problems:
        art.status = "accuracy-drop"
        state.warn(f"{art.file}: accuracy-drop: {'; '.join(problems)}"
                   + ("" if budget.max_accuracy_drop is not None else
                      " (default gate; --max-accuracy-drop sets your own budget)"))
    for f in figures:
        if f["clipped"]:
            art.status = "clipped-output"
            state.warn(f"{art.file}: clipped-output: {f['output']} covers "
                       f"{f['range_coverage']:.1%} of its FP32 range on the evaluation set")


def evaluate(state: RunState) -> None:
    """Accuracy of every artifact not yet measured, on its runtime, against the FP32 source."""
    for art in state.artifacts:
        if art.accuracy is None:
            evaluate_artifact(state, art)


def evaluate_artifact(state: RunState, art: Artifact) -> float:
    """Run ``art`` on its backend over the evaluation set and score it; returns the metric."""
    prepared = state.prepared
    with state.progress.step(f"evaluate {art.file}") as update:
        loaded = get_backend(art.runtime).load(state.staging.path(art.file))
        runs = run_all(loaded, prepared.eval_inputs, update)
        outs = stack_first(runs)
        value = prepared.score(outs, state.fp32_ref)
        art.accuracy = {"metric": prepared.metric, "value": round(value, 6),
                        "samples": len(prepared.eval_inputs),
                        **prepared.extra_metrics(outs, state.fp32_ref),
                        "outputs": output_figures(state.ref_outs, runs, _output_names(loaded))}
    return value


def _output_names(loaded) -> tuple[str, ...]:
    return tuple(spec.name for spec in getattr(loaded, "outputs", ()))


def benchmark(state: RunState) -> None:
    """Each artifact on each device unit whose adapter runs its runtime; with the recipe's
    ``benchmark`` off (--no-bench), each artifact's record says it was not timed."""
    from edgeopt._bench_step import artifact_record, check_int8_speed
    from edgeopt._measure import run_target

    if not state.recipe.benchmark:
        for art in state.artifacts:
            record = artifact_record(art, state.staging, None)
            record.bench = dict(NOT_BENCHMARKED)
            state.records.append(record)
        return
    feeds = state.prepared.eval_inputs[0]
    for target in state.targets:
        for art in state.artifacts:
            if art.runtime != target.runtime:
                continue
            record = artifact_record(art, state.staging, target)
            with state.progress.step(f"benchmark {art.file} on {target.label}") as update:
                row = run_target(target, state.staging.path(art.file), feeds, state.recipe.bench,
                                 progress=update)
            record.bench = row["bench"]
            for key in ("unavailable", "unsupported_ops", "static_shapes"):
                setattr(record, key, row.get(key))
            if "unavailable" in row:
                state.warnings.append(f"{target.label} via {target.adapter} is not present here "
                                      f"({row['unavailable']}); its figure is "
                                      f"{row['bench'].get('label')}")
            state.records.append(record)
    _untimed(state)
    for text in check_int8_speed(state.records):
        state.warn(text)


OPTIMIZE = (carry_states, reference, prune, export, convert, calibrate, quantize, evaluate, benchmark)


# ------------------------------------------------------------------------------ helpers

def _untimed(state: RunState) -> None:
    """Artifacts of a runtime that no named device runs: listed, never timed."""
    from edgeopt._bench_step import artifact_record

    timed = {t.runtime for t in state.targets}
    for art in state.artifacts:
        if art.runtime in state.recipe.runtimes and art.runtime not in timed:
            record = artifact_record(art, state.staging, None)
            record.bench = {"label": "unavailable", "reason": f"no adapter on "
                            f"{', '.join(state.recipe.devices)} runs {art.runtime}"}
            state.records.append(record)


def _runtimes(state: RunState) -> list[str]:
    return [r for r in runtime_names() if r in state.recipe.runtimes]


def _parity(step: str, reference: list, loaded, state: RunState) -> dict:
    from edgeopt.runtimes import check, compare

    return check(compare(step, reference, run_all(loaded, state.parity_inputs))).to_dict()


def _quant_config(quant, excluded: list[str]):
    from edgeopt.calibrate.quantize import QuantConfig

    return QuantConfig(calibrator=quant.calibrator, exclude_nodes=tuple(excluded),
                       keep_first_fp32=quant.keep_first_fp32, fp32_stem=quant.fp32_stem,
                       saturation_guard=quant.saturation_guard, qat_epochs=quant.qat_epochs)


def _gain_summary(gains: dict[str, float]) -> dict:
    """How the calibrator's ranges compare with min-max in calibration SQNR."""
    if not gains:
        return {}
    values = np.array(list(gains.values()))
    return {"sqnr_gain_vs_minmax_db": {"mean": round(float(values.mean()), 3),
                                       "min": round(float(values.min()), 3),
                                       "max": round(float(values.max()), 3),
                                       "tensors_improved": int((values > 1e-9).sum()),
                                       "tensors": int(values.size)}}


def _copy_onnx(source, dst: Path) -> tuple[int, int] | None:
    """A standalone copy of the user's ONNX, as upgraded to a supported opset and IR
    version when it was loaded; returns (old, new) opset when it was upgraded."""
    import onnx

    proto = source.extra.get("upgraded")
    if proto is None:
        proto = onnx.load(str(source.path))  # pulls external data in: the copy stands alone
    if proto.ByteSize() < 1_800_000_000:
        onnx.save(proto, str(dst))
    else:
        shutil.copyfile(source.path, dst)
    found = source.extra.get("opset")
    new = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return (found, new) if found is not None and new != found else None
