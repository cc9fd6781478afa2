"""The pipeline's steps: small functions over one :class:`RunState`, each timed and shown.

``optimize`` runs :data:`OPTIMIZE` top to bottom; ``prune`` runs the same ``reference``,
``prune`` and ``export`` steps and :func:`evaluate_artifact`. A step names no runtime: it
asks the backend registry (:mod:`edgeopt.backends`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt import _step_cache as _cached
from edgeopt._cache import Cache
from edgeopt._outputs import run_all, run_spilled, stack_first, torch_outputs
from edgeopt._quant_jobs import runtime_jobs
from edgeopt._source import copy_onnx
from edgeopt._states import carry_step as carry_states
from edgeopt._step_cache import DataKeys, artifact_facts, artifact_from, through_cache
from edgeopt.backends import Artifact, QuantJob, get_backend, onnx_runner, runtime_names
from edgeopt.budget import Budget, within_budget
from edgeopt.metrics import GATE, gate, output_figures
from edgeopt.recipe import Recipe
from edgeopt.tradeoffs import follow_choices, weigh_choices

__all__ = ["OPTIMIZE", "RunState", "benchmark", "calibrate", "carry_states", "convert", "evaluate",
           "evaluate_artifact", "export", "fp32_reference", "prune", "quantize", "reference"]

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
    cache: Cache = field(default_factory=lambda: Cache(None))    # edgeopt._cache: off
    keys: Any = None                           # edgeopt._step_cache.DataKeys
    ref_from_onnx: bool = False                # the FP32 reference is the FP32 ONNX's run
    ref_runner: Any = None                     # that ONNX, loaded on the host

    def __post_init__(self) -> None:
        self.keys = DataKeys(self)

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


def reference(state: RunState) -> None:
    """Pruning measures against the unpruned model on the whole evaluation set: then the
    source model gives the FP32 reference. Otherwise :func:`fp32_reference` takes it from
    the parity-checked FP32 ONNX, and the source runs only the parity samples, when the
    export is checked."""
    state.module = state.prepared.source.module
    if state.recipe.prune is None:
        return
    with state.progress.step("FP32 reference outputs") as update:
        outs = _source_outputs(state, state.prepared.eval_inputs, update)
    state.ref_outs, state.fp32_ref = outs, stack_first(outs)
    state.parity_ref = outs[:PARITY_SAMPLES]


def _source_outputs(state: RunState, samples, update=None) -> list:
    source = state.prepared.source
    if source.is_torch:
        return torch_outputs(source.module, state.input_names, samples, update)
    return run_all(onnx_runner().load(source.path), samples, update)


def _parity_reference(state: RunState) -> list:
    """What the export must reproduce: the model's outputs on the parity samples."""
    if state.parity_ref is None:
        state.parity_ref = _source_outputs(state, state.parity_inputs)
    return state.parity_ref


def fp32_reference(state: RunState) -> None:
    """The FP32 reference on the evaluation set: the parity-checked FP32 ONNX on the host's
    ONNX runtime (also the FP32 ONNX's own evaluation run)."""
    if state.ref_outs is not None:
        return
    file = state.staging.scratch / "fp32-reference.npz"

    def build() -> dict:
        state.ref_runner = onnx_runner().load(state.fp32_onnx)
        with state.progress.step("FP32 reference outputs") as update:
            outs = run_spilled(state.ref_runner, state.prepared.eval_inputs, update)
        return {"count": _cached.save_outputs(file, outs)}

    def parts() -> dict:
        return {"onnx": state.keys.fp32_onnx, "eval": state.keys.eval}

    facts, _ = through_cache(state, "reference", parts, [file.name], build,
                             dest=state.staging.scratch)
    state.ref_outs, state.ref_from_onnx = _cached.load_outputs(file, facts["count"]), True
    state.fp32_ref = stack_first(state.ref_outs)
    file.unlink(missing_ok=True)


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
    path = state.staging.path(file or f"{state.name}.fp32.onnx")

    def parts() -> dict:
        return {"model": state.keys.model(), "file": path.name, "inputs": state.input_names,
                "outputs": state.prepared.output_names, "parity": state.keys.parity}

    through_cache(state, "export", parts, [path.name], lambda: _export(state, path))
    state.fp32_onnx = path
    runner = onnx_runner()
    state.artifacts.append(Artifact(path.name, runner.format, "fp32", runner.runtime))


def _export(state: RunState, path: Path) -> None:
    from edgeopt._torch_side import export_source

    source = state.prepared.source
    if source.is_torch:
        with state.progress.step("torch -> ONNX"):
            result = export_source(state, path)     # in the PyTorch child, if there is one
            parity = _parity("torch -> ONNX", _parity_reference(state), onnx_runner().load(path),
                             state)
        for note in result.warnings:
            state.warn(note)
        state.record_step("torch -> ONNX", exporter=result.exporter, opset=result.opset,
                          parity=parity)
    else:
        with state.progress.step("copy ONNX"):
            opset = copy_onnx(source, path)
        state.record_step("copy ONNX")
        if opset is not None:
            step = f"ONNX opset {opset[0]} -> {opset[1]}"
            with state.progress.step(step):
                parity = _parity(step, _parity_reference(state), onnx_runner().load(path), state)
            state.record_step(step, parity=parity)


def convert(state: RunState) -> None:
    """Each runtime's FP32 artifact from the ONNX export, parity-checked against it."""
    def check_parity(step: str, path: Path) -> dict:
        if state.ref_from_onnx:     # the FP32 ONNX's own outputs on these samples, run already
            reference = state.ref_outs[:PARITY_SAMPLES]
        else:
            reference = run_all(onnx_runner().load(state.fp32_onnx), state.parity_inputs)
        return _parity(step, reference, backend.load(path), state)

    for runtime in _runtimes(state):
        backend = get_backend(runtime)
        if backend is onnx_runner():
            continue                            # the ONNX itself is its artifact

        def build(b=backend) -> dict:
            built = b.build_fp32(state.name, state.fp32_onnx, state.staging, state.progress,
                                 check_parity)
            if built is None:
                return {}
            state.record_step(**built[1])
            return {"artifact": artifact_facts(built[0])}

        def parts(r=runtime) -> dict:
            return {"onnx": state.keys.fp32_onnx, "parity": state.keys.parity, "runtime": r}

        facts, _ = through_cache(state, "convert", parts,
                                 list(backend.artifact_files(state.name, "fp32")), build)
        if "artifact" in facts:
            state.artifacts.append(artifact_from(facts["artifact"]))


def calibrate(state: RunState) -> None:
    """Activation statistics of the FP32 ONNX over the calibration set, in one pass."""
    if not state.recipe.quant.enabled:
        return
    from edgeopt.calibrate.calibrators import compute_ranges, sqnr_gain_db
    from edgeopt.calibrate.quantize import activation_stats

    calib, calibrator = state.prepared.calib, state.recipe.quant.calibrator
    file = state.staging.scratch / "statistics.npz"

    def build() -> dict:
        with state.progress.step("calibration statistics") as update:
            state.stats = activation_stats(state.fp32_onnx, calib, update)
        return {"tensors": _cached.save_stats(file, state.stats)}

    def parts() -> dict:
        return {"onnx": state.keys.fp32_onnx, "calib": state.keys.calib}

    facts, cached = through_cache(state, "statistics", parts, [file.name], build,
                                  dest=state.staging.scratch)
    if cached:
        state.stats = _cached.load_stats(file, facts["tensors"])
    file.unlink(missing_ok=True)
    gains = sqnr_gain_db(state.stats, compute_ranges(state.stats, calibrator))
    state.record_step("calibration statistics", tensors=len(state.stats), samples=len(calib),
                      calibrator=calibrator, **_gain_summary(gains),
                      **({"cached": True} if cached else {}))


def quantize(state: RunState) -> None:
    """INT8 per backend; with a budget, sensitive layers return to FP32 until it holds.
    A backend whose build converts another's settled one (OpenVINO's QDQ route) starts
    from it and keeps the choices weighed there."""
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
    settled: dict[str, tuple] = {}     # runtime -> (settled QuantConfig, guard at first)
    for runtime in _runtimes(state):
        backend = get_backend(runtime)
        job, lead, reverted = runtime_jobs(state, backend, settled)
        outcome = within_budget(
            runtime, state.budget,
            build=lambda excluded, b=backend, j=job: _build(state, b, j(excluded)),
            evaluate=lambda art: evaluate_artifact(state, art),
            rank=lambda art, b=backend, j=job: b.sensitivity(art, j([])),
            warn=state.progress.warn)
        if lead is not None:        # the same QDQ model as ``lead``'s: its choices hold
            follow_choices(state, runtime, lead)
            _cached.cached_layer_sqnr(state, backend, job(outcome.reverted), outcome.artifact)
        else:
            final = weigh_choices(
                state, backend, job(outcome.reverted), outcome.artifact,
                build=lambda j, b=backend: _build(state, b, j),
                evaluate=lambda art: evaluate_artifact(state, art),
                complete=lambda j, art, b=backend: _cached.cached_layer_sqnr(state, b, j, art))
            settled[runtime] = (final, job([]).config.saturation_guard)
        value = outcome.artifact.accuracy["value"]
        warning = state.budget.record(runtime, outcome.artifact, value,
                                      list(dict.fromkeys((*reverted, *outcome.reverted))))
        if warning:
            state.warn(warning)
        gate(state, outcome.artifact, runtime)
        state.artifacts.append(outcome.artifact)


def _build(state: RunState, backend, job: QuantJob) -> Artifact:
    """One INT8 build, through the cache."""
    return _cached.cached_quantize(state, backend, job)


def evaluate(state: RunState) -> None:
    """Accuracy of every artifact not yet measured, on its runtime, against the FP32 source."""
    for art in state.artifacts:
        if art.accuracy is None:
            evaluate_artifact(state, art)


def evaluate_artifact(state: RunState, art: Artifact) -> float:
    """Run ``art`` on its backend over the evaluation set and score it; returns the metric.
    The FP32 ONNX's run is the FP32 reference's own, when that came from it."""
    prepared = state.prepared

    def build() -> dict:
        with state.progress.step(f"evaluate {art.file}") as update:
            same = state.ref_from_onnx and art.file == state.fp32_onnx.name
            if same:                    # the reference's own run (the same runtime, inputs)
                loaded = state.ref_runner or onnx_runner().load(state.fp32_onnx)
                runs = state.ref_outs
            else:
                loaded = get_backend(art.runtime).load(state.staging.path(art.file))
                runs = run_spilled(loaded, prepared.eval_inputs, update)
            outs = stack_first(runs)
            value = prepared.score(outs, state.fp32_ref)
            accuracy = {"metric": prepared.metric, "value": round(value, 6),
                        "samples": len(prepared.eval_inputs),
                        **prepared.extra_metrics(outs, state.fp32_ref),
                        "outputs": output_figures(state.ref_outs, runs, _output_names(loaded))}
        return {"accuracy": accuracy, "value": value}

    def parts() -> dict:
        files = [art.file, *art.companions]
        return {"files": {f: state.keys.file(state.staging.path(f)) for f in files},
                "runtime": art.runtime, "eval": state.keys.eval,
                "reference": state.keys.fp32_onnx,
                "metric": [prepared.metric, state.recipe.data.metric],
                "model": state.recipe.model}

    # A pruned run's reference is the unpruned model's: not cached.
    facts, _ = through_cache(state, "evaluate", parts if state.ref_from_onnx else None, [],
                             build)
    art.accuracy = facts["accuracy"]
    return facts["value"]


def _output_names(loaded) -> tuple[str, ...]:
    return tuple(spec.name for spec in getattr(loaded, "outputs", ()))


def benchmark(state: RunState) -> None:
    """Each artifact on each device unit whose adapter runs its runtime; with the recipe's
    ``benchmark`` off (--no-bench), each artifact's record says it was not timed."""
    from edgeopt._bench_step import artifact_record, check_int8_speed, file_facts
    from edgeopt._measure import run_target

    facts = file_facts(state.artifacts, state.staging)
    if not state.recipe.benchmark:
        for art in state.artifacts:
            record = artifact_record(art, facts, None)
            record.bench = dict(NOT_BENCHMARKED)
            state.records.append(record)
        return
    feeds = state.prepared.eval_inputs[0]
    for target in state.targets:
        for art in state.artifacts:
            if art.runtime != target.runtime:
                continue
            record = artifact_record(art, facts, target)
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
    _untimed(state, facts)
    for text in check_int8_speed(state.records):
        state.warn(text)


OPTIMIZE = (carry_states, reference, prune, export, fp32_reference, convert, calibrate, quantize,
            evaluate, benchmark)


# ------------------------------------------------------------------------------ helpers

def _untimed(state: RunState, facts: dict[str, dict]) -> None:
    """Artifacts of a runtime that no named device runs: listed, never timed."""
    from edgeopt._bench_step import artifact_record

    timed = {t.runtime for t in state.targets}
    for art in state.artifacts:
        if art.runtime in state.recipe.runtimes and art.runtime not in timed:
            record = artifact_record(art, facts, None)
            record.bench = {"label": "unavailable", "reason": f"no adapter on "
                            f"{', '.join(state.recipe.devices)} runs {art.runtime}"}
            state.records.append(record)


def _runtimes(state: RunState) -> list[str]:
    return [r for r in runtime_names() if r in state.recipe.runtimes]


def _parity(step: str, reference: list, loaded, state: RunState) -> dict:
    from edgeopt.runtimes import check, compare

    return check(compare(step, reference, run_all(loaded, state.parity_inputs))).to_dict()


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
