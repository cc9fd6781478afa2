"""`edgeopt prune`: PyTorch model -> pruned (and fine-tuned) FP32 ONNX, its weights, a report.

The same steps as ``optimize`` (reference, prune, export) and its evaluator, then the
weights file. Under ``torchrun`` every rank prunes the same way and fine-tunes its share
of each batch (DDP); only rank 0 exports and writes.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from edgeopt import pipeline
from edgeopt import report as reporting
from edgeopt._outdir import check_output_dir, claim_output
from edgeopt._progress import Steps
from edgeopt.backends import onnx_runner
from edgeopt.recipe import Recipe
from edgeopt.report import ArtifactRecord, Report
from edgeopt.steps import RunState, evaluate_artifact, export, reference
from edgeopt.steps import prune as prune_step

__all__ = ["default_out", "prune"]

LOAD_HINT = ("edgeopt.calibrate.pruning.load_pruned(build_model(), "
             "torch.load(path, weights_only=True))")


def default_out(model: str | Recipe) -> Path:
    return pipeline.default_out(model, "-pruned")


def prune(model: str | Recipe | None = None, *, recipe: Recipe | None = None,
          out: str | Path | None = None, steps: Steps | None = None,
          overwrite: bool = False, **overrides) -> Report | None:
    """Run ``edgeopt prune`` (the recipe's ``prune`` section set); returns the report, or
    None on a DDP rank other than 0 (which writes nothing). ``out`` is held by this run
    alone; a previous run's output there is refused unless ``overwrite`` (replaced whole)."""
    from edgeopt._prune_step import check_prune
    from edgeopt._source import load_source, prepare
    from edgeopt.calibrate.finetune import is_main_process, shutdown_distributed
    from edgeopt.calibrate.pruning import check_prunable
    from edgeopt.errors import UsageError

    recipe = pipeline.resolve_recipe(model, recipe, **overrides)
    if recipe.prune is None:
        msg = "prune needs --prune-mode (magnitude-global, channels, ...)"
        raise UsageError(msg)
    recipe = replace(recipe, runtimes=(onnx_runner().runtime,), quant=replace(recipe.quant,
                                                                           enabled=False))
    out = Path(out) if out is not None else default_out(recipe)
    progress = steps or Steps(quiet=True)
    started = time.time()
    with progress.step("load model"):
        source = load_source(recipe)
    check_prunable(source.module, recipe.model)
    if recipe.data.calib is None and source.extra.get("reference") is None:
        # The metric then compares outputs on random inputs; the report says so.
        recipe = replace(recipe, data=replace(recipe.data, calib="random"))
    check_output_dir(out, [])
    with progress.step("prepare data"):
        prepared = prepare(recipe, source)
        finetune_data = check_prune(recipe.prune, prepared, recipe.data.preprocess)
    state = RunState(recipe, progress, prepared, staging=None, finetune_data=finetune_data)
    try:
        reference(state)
        prune_step(state)
        if not is_main_process():
            return None
        return _write(state, out, started, overwrite)
    finally:
        shutdown_distributed()


def _write(state: RunState, out: Path, started: float, overwrite: bool = False) -> Report:
    import torch

    from edgeopt._prune_step import artifact_figures
    from edgeopt.calibrate.pruning import deflated_size
    from edgeopt.convert import file_sha256

    with claim_output(out, overwrite=overwrite) as staging:
        state.staging = staging
        export(state, file=f"{state.name}.pruned.onnx")
        art = state.artifacts[-1]
        value = evaluate_artifact(state, art)
        onnx_path, weights = state.fp32_onnx, staging.path(f"{state.name}.pruned.pth")
        torch.save(state.pruning.state, weights)
        record = state.pruning.record
        record["artifact"] = artifact_figures(onnx_path, state.pruning.pruned_tensors)
        record["metric_onnx"] = round(value, 6)
        export_step = state.step_records[-1]
        report = Report(
            **reporting.header(state.recipe, state.prepared),
            steps=[{"name": k, "seconds": round(v, 3)} for k, v in state.progress.timings.items()],
            pruning=record, warnings=state.warnings,
            artifacts=[
                ArtifactRecord(path=onnx_path.name, format="onnx", precision="fp32",
                               size_bytes=onnx_path.stat().st_size,
                               size_zipped_bytes=deflated_size([onnx_path]),
                               sha256=file_sha256(onnx_path),
                               exporter=export_step.get("exporter"),
                               parity=export_step.get("parity"), accuracy=art.accuracy),
                ArtifactRecord(path=weights.name, format=state.pruning.state["format"],
                               size_bytes=weights.stat().st_size, sha256=file_sha256(weights),
                               load_with=LOAD_HINT)],
            duration_s=round(time.time() - started, 2))
        files = [onnx_path.name, weights.name]
        files += reporting.write(staging.dir, report, prune=True)
        staging.commit(files)
    return report
