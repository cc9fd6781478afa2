"""`edgeopt optimize`: model -> FP32 and INT8 artifacts per runtime, checked and measured.

    load -> reference, prune, export, convert, calibrate, quantize, evaluate, benchmark
         -> report -> package

``load`` checks every input before anything is written; the steps of
:data:`edgeopt.steps.OPTIMIZE` then run over one state, into a staging folder whose files
land under their final names together with the report, or not at all; ``package`` makes
the recipe's app bundles from the finished run folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeopt import report as reporting
from edgeopt._memory import let_go
from edgeopt._outdir import check_output_dir, claim_output
from edgeopt._progress import Steps
from edgeopt.backends import get_backend, onnx_runner, runtime_names
from edgeopt.errors import UsageError
from edgeopt.recipe import Recipe
from edgeopt.report import Report
from edgeopt.steps import OPTIMIZE, RunState

__all__ = ["default_out", "load", "optimize", "package", "report", "resolve_recipe"]


def resolve_recipe(model: str | Recipe | None = None, recipe: Recipe | None = None,
                   **overrides) -> Recipe:
    """The run's recipe: ``recipe`` (default: the defaults), then ``model``, then flat
    ``overrides`` such as ``calibrator="minmax"``."""
    if isinstance(model, Recipe):
        model, recipe = None, model
    recipe = recipe or Recipe()
    if model is not None:
        overrides["model"] = str(model)
    recipe = recipe.override(**overrides) if overrides else recipe
    if recipe.model is None:
        msg = "no model: give MODEL (a file, package.module:factory or ref:NAME) or a recipe naming one"
        raise UsageError(msg)
    return recipe


def default_out(model: str | Recipe, suffix: str = "") -> Path:
    """``edgeopt-out/NAME``: the recipe's ``--name``, else the model's name."""
    from edgeopt._source import artifact_stem, run_name

    name = run_name(model) if isinstance(model, Recipe) else artifact_stem(model)
    return Path("edgeopt-out") / f"{name}{suffix}"


def optimize(model: str | Recipe | None = None, *, recipe: Recipe | None = None,
             out: str | Path | None = None, steps: Steps | None = None,
             overwrite: bool = False, **overrides) -> Report:
    """Run the pipeline; returns the report (also written to ``OUT/report.json``, with
    ``report.md`` and ``recipe.yaml``).

    ``edgeopt.optimize("ref:mobilenet-v2", out="build")``, or with a recipe:
    ``edgeopt.optimize("model.onnx", recipe=Recipe(...), calib="data/")``. ``overrides``
    are flat recipe options (see :meth:`Recipe.override`).

    Every input problem is raised before anything is written; a failure later removes
    what this run staged, so no half-written artifact is left under a final name. ``out``
    is held by this run alone; a previous run's output there is refused unless
    ``overwrite``, which replaces it whole (like ``out``, not part of the recipe).
    """
    recipe = resolve_recipe(model, recipe, **overrides)
    out = Path(out) if out is not None else default_out(recipe)
    progress = steps or Steps(quiet=True)
    started = time.time()
    state = load(recipe, out, progress, torch_apart=True)  # every input checked; nothing written
    inputs = (state.prepared.source.path,) if state.prepared.source.path else ()
    # One writer per --out, from the first staged file to the last bundle.
    with claim_output(out, overwrite=overwrite, inputs=inputs) as staging:
        state.staging = staging
        for step in OPTIMIZE:                   # reference, prune, export, convert, ...
            step(state)
            let_go(state)                       # e.g. the torch model, once exported
        result = report(state, started)
        files = [f for art in state.artifacts for f in (art.file, *art.companions)]
        files += reporting.write(staging.dir, result)
        staging.commit(files)
        package(recipe, out, progress)
    return result


def load(recipe: Recipe, out: Path, progress: Steps, torch_apart: bool = False) -> RunState:
    """The model and its data, loaded, and everything the user gave checked, before any
    file is written. ``torch_apart``: a PyTorch model stays in a child process
    (:mod:`edgeopt._torch_side`; ``source.module`` is then None)."""
    from edgeopt import _torch_side
    from edgeopt._measure import target_availability
    from edgeopt._source import load_source, prepare
    from edgeopt._targets import resolve_targets

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        msg = ("optimize runs in one process; fine-tune on several with 'torchrun ... -m "
               "edgeopt prune', then optimize its NAME.pruned.onnx")
        raise UsageError(msg)
    apart = torch_apart and _torch_side.apart(recipe)
    loading = _torch_side.start(recipe) if apart else None   # loads while the rest is checked
    targets = resolve_targets(recipe.devices, recipe.runtimes)
    for runtime in recipe.runtimes:
        availability = get_backend(runtime).available()
        if not availability.ok:
            msg = f"{runtime} cannot run here: {availability.reason}"
            raise UsageError(msg)
    if recipe.require_measured:
        for target in targets:
            availability = target_availability(target)
            if not availability.ok:
                msg = (f"--require-measured: {target.label} via {target.adapter} cannot be "
                       f"measured here ({availability.reason})")
                raise UsageError(msg)
    with progress.step("load model"):
        source = loading() if loading is not None else load_source(recipe)
    if recipe.prune is not None:
        from edgeopt.calibrate.pruning import check_prunable

        check_prunable(source.module, recipe.model)
    inputs = [source.path] if source.path else []
    check_output_dir(out, inputs)
    with progress.step("prepare data"):
        prepared = prepare(recipe, source)
        finetune_data = None
        if recipe.prune is not None:
            from edgeopt._prune_step import check_prune

            finetune_data = check_prune(recipe.prune, prepared, recipe.data.preprocess)
    for final in _planned_files(prepared.name, recipe):
        for src in inputs:
            if (out / final).absolute() == src.absolute():
                msg = (f"--out {out} would overwrite the input {src} with an artifact of "
                       "the same name; choose another output folder")
                raise UsageError(msg)
    from edgeopt._step_cache import open_cache

    state = RunState(recipe, progress, prepared, staging=None, targets=targets,
                     finetune_data=finetune_data)
    state.cache = open_cache(recipe, state.warn)
    return state


def _planned_files(name: str, recipe: Recipe) -> list[str]:
    files = list(onnx_runner().artifact_files(name, "fp32"))  # the export feeds every runtime
    for runtime in runtime_names():
        if runtime in recipe.runtimes:
            backend = get_backend(runtime)
            if backend is not onnx_runner():
                files += backend.artifact_files(name, "fp32")
            if recipe.quant.enabled:
                files += backend.artifact_files(name, "int8")
    return files + ["report.json", "report.md", "recipe.yaml"]


def report(state: RunState, started: float) -> Report:
    """The run's typed report, from its state."""
    if state.pruning is not None:
        from edgeopt._prune_step import artifact_figures

        state.pruning.record["artifact"] = artifact_figures(state.fp32_onnx,
                                                            state.pruning.pruned_tensors)
    # Every timed step in the order it ran, with parity and exporter facts where known.
    extras = {s["name"]: s for s in state.step_records}
    timed = [{**extras.get(k, {}), "name": k, "seconds": round(v, 3)}
             for k, v in state.progress.timings.items()]
    budget = state.budget
    return Report(**reporting.header(state.recipe, state.prepared), steps=timed,
                  artifacts=state.records, warnings=state.warnings,
                  pruning=state.pruning.record if state.pruning is not None else None,
                  accuracy_budget=budget if budget and budget.max_accuracy_drop is not None
                  else None,
                  tradeoffs=state.tradeoffs,
                  duration_s=round(time.time() - started, 2))


def package(recipe: Recipe, out: Path, progress: Steps) -> None:
    """The app bundles the recipe asks for, from the run folder just written."""
    from edgeopt._source import run_name

    for target in recipe.package.targets:
        from edgeopt.package import package_run

        bundle = out / f"{run_name(recipe)}-{target}.zip"
        with progress.step(f"package {bundle.name}"):
            package_run(out, target, bundle, palettize=recipe.package.palettize,
                        group_size=recipe.package.group_size,
                        max_accuracy_drop=recipe.quant.max_accuracy_drop)
