"""`edgeopt search`: the recipe search, from its settings to ``DIR`` written.

    plan (devices, latency source, space, reference metric)
      -> study (DIR/study.db) -> trials (executor) -> trials.csv, pareto.json, plots, best/
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from edgeopt.errors import UsageError
from edgeopt.recipe import Recipe, parse_budget
from edgeopt.search.objectives import (
    Constraints,
    Objectives,
    parse_latency_limits,
)
from edgeopt.search.space import Space, default_space_path, load_space
from edgeopt.search.study import Plan, make_sampler, open_study, run_trials

__all__ = ["SearchSettings", "search"]


@dataclass(frozen=True)
class SearchSettings:
    """One search: the base recipe (model, devices, data) and how to search around it."""

    recipe: Recipe
    out: Path
    trials: int = 16
    space: str | None = None                  # YAML file; None: the model kind's default
    sampler: str = "nsga2"
    seed: int | None = None
    batch: int = 4                            # trials in flight (asked ahead of the last told)
    executor: str = "local"
    ray_address: str | None = None
    work_dir: Path | None = None              # shared by every worker; default DIR/work
    latency: str = "measured"                 # measured (where present) | estimated
    max_accuracy_drop: str | None = None
    max_latency_ms: tuple[str, ...] = ()
    max_size_mb: float | None = None
    resume: bool = False
    quiet: bool = False


def search(settings: SearchSettings, peers: list[dict] | None = None) -> dict:
    """Run the search; returns the summary (also ``DIR/search.json``)."""
    from edgeopt._progress import Steps
    from edgeopt.search.study import _optuna

    _optuna()                                  # the extra, before any work
    steps = Steps(quiet=settings.quiet)
    _check_out(settings)
    plan = _plan(settings, steps)
    sampler = make_sampler(settings.sampler, settings.seed, plan.space, settings.trials)
    plan.out.mkdir(parents=True, exist_ok=True)
    study = open_study(plan, sampler, settings.resume)
    measured = sorted({d for per in plan.latency.values() for d, how in per.items()
                       if how == "measured"})
    from edgeopt.search.executors import make_executor

    with steps.step(f"start the {settings.executor} executor"):
        executor = make_executor(settings.executor, settings.ray_address, tuple(measured),
                                 plan.work)
        warm_started = time.perf_counter()
        executor.warm()
        warm_s = time.perf_counter() - warm_started
    try:
        from edgeopt.search._progress import TrialProgress

        with TrialProgress(steps.console, plan, study) as progress:
            run_trials(study, plan, executor, on_told=progress.told)
    except KeyboardInterrupt:
        steps.console.print(f"interrupted: the finished trials are kept in {plan.out}/study.db; "
                            "run the same command with --resume to continue")
        raise
    finally:
        executor.close()
    from edgeopt.search._finish import finish

    return finish(study, plan, settings, steps, peers, {"executor": settings.executor,
                                                        "warm_s": round(warm_s, 2)})


def _check_out(settings: SearchSettings) -> None:
    out = settings.out
    if settings.resume:
        if not (out / "study.db").is_file():
            msg = f"--resume: {out}/study.db not found; start the search without --resume"
            raise UsageError(msg)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        msg = (f"--out {out} is not empty; give a new folder, or --resume to continue the "
               "search there")
        raise UsageError(msg)
    if settings.ray_address and settings.executor != "ray":
        msg = "--ray-address applies to --executor ray"
        raise UsageError(msg)
    if settings.executor == "ray":
        from edgeopt.search.executors import import_ray

        import_ray()                          # the extra, before any work
    if settings.trials < 1 or settings.batch < 1:
        msg = "--trials and --batch must be >= 1"
        raise UsageError(msg)


def _plan(settings: SearchSettings, steps) -> Plan:
    """Devices, the latency source of each, the space, the reference metric: all checked
    before a trial runs."""
    from edgeopt.search.study import SAMPLERS

    if settings.sampler not in SAMPLERS:
        msg = f"--sampler {settings.sampler}: one of {', '.join(SAMPLERS)}"
        raise UsageError(msg)
    if settings.latency not in ("measured", "estimated"):
        msg = f"--latency {settings.latency}: measured or estimated"
        raise UsageError(msg)
    recipe = settings.recipe
    work = Path(settings.work_dir or settings.out / "work").absolute()
    latency = _latency_plan(recipe, settings.latency)
    devices = tuple(dict.fromkeys(d for per in latency.values() for d in per))
    limits = parse_latency_limits(list(settings.max_latency_ms), devices)
    _absolute_drop(settings.max_accuracy_drop, 1.0)        # checked before the model loads
    space = load_space(settings.space) if settings.space else None
    metric, higher, reference, kind = _reference(recipe, work, steps)
    space = _runtimes_in_space(space or load_space(default_space_path(kind)), latency, recipe)
    if "runtime" not in [p.name for p in space.params]:    # one runtime built per trial
        recipe = recipe.override(runtimes=(next(iter(latency)),))
    objectives = Objectives(metric, higher, devices)
    constraints = Constraints(_absolute_drop(settings.max_accuracy_drop, reference), limits,
                              settings.max_size_mb)
    if space.size() is None and settings.sampler == "grid":
        msg = "--sampler grid needs every option stepped or listed (a step for each range)"
        raise UsageError(msg)
    return Plan(recipe, space, objectives, constraints, reference, latency,
                _bases(latency), dict(vars(recipe.bench)), settings.out.absolute(), work,
                settings.trials, settings.batch)


def _reference(recipe: Recipe, work: Path, steps) -> tuple[str, bool, float, str]:
    """The metric's name and direction, the source model's own figure, the model kind."""
    from edgeopt._outputs import run_all, stack_first, torch_outputs
    from edgeopt._progress import Steps
    from edgeopt.backends import onnx_runner
    from edgeopt.pipeline import load

    quiet = Steps(quiet=True)
    with steps.step("reference metric of the FP32 model"):
        state = load(recipe.override(benchmark=False), work / "reference", quiet)
        prepared, source = state.prepared, state.prepared.source
        if source.is_torch:     # the source model itself, on the evaluation set
            outs = torch_outputs(source.module, state.input_names, prepared.eval_inputs)
        else:
            outs = run_all(onnx_runner().load(source.path), prepared.eval_inputs)
        fp32 = stack_first(outs)
        value = float(prepared.score(fp32, fp32))
    kind = "torch" if prepared.source.is_torch else "onnx"
    return prepared.metric, prepared.higher_is_better, value, kind


def _latency_plan(recipe: Recipe, mode: str) -> dict[str, dict[str, str]]:
    """runtime -> device (ID:UNIT) -> measured (here, and asked) or estimated."""
    from edgeopt._measure import target_availability
    from edgeopt._targets import resolve_targets

    plan: dict[str, dict[str, str]] = {r: {} for r in recipe.runtimes}
    for target in resolve_targets(recipe.devices, recipe.runtimes):
        if target.label in plan[target.runtime]:
            continue
        here = mode == "measured" and target_availability(target).ok
        plan[target.runtime][target.label] = "measured" if here else "estimated"
    return {r: per for r, per in plan.items() if per}


def _runtimes_in_space(space: Space, latency: dict, recipe: Recipe) -> Space:
    """Runtimes a trial may pick: those the recipe builds, that run on every device, and
    whose artifact can be estimated where a device is estimated (estimates read ONNX)."""
    from edgeopt.backends import get_backend

    every = set.intersection(*(set(per) for per in latency.values()))
    ok = tuple(r for r, per in latency.items() if set(per) == every and (
        get_backend(r).format == "onnx" or "estimated" not in per.values()))
    if not ok:
        msg = ("no runtime can be timed on every device: estimated devices need an ONNX "
               "artifact; add a device that is here, or --latency measured")
        raise UsageError(msg)
    names = [p.name for p in space.params]
    if "runtime" not in names:
        for runtime in [r for r in latency if r not in ok]:
            del latency[runtime]                # the trials build the first that can be timed
        return space
    space = space.restrict("runtime", ok)
    if not next(p for p in space.params if p.name == "runtime").choices:
        msg = f"--space {space.source}: none of its runtimes can be timed here ({', '.join(ok)})"
        raise UsageError(msg)
    return space


def _bases(latency: dict) -> dict[str, dict | None]:
    """Each estimated device's roofline basis, taken once. The host's bandwidth and clock
    are measured, so its basis is kept per machine in the cache folder: the same model
    gets the same estimate in every worker, on resume and in the next search."""
    from edgeopt._targets import resolve_targets
    from edgeopt.runtimes.estimate import unit_basis

    bases: dict[str, dict | None] = {}
    for runtime, per in latency.items():
        for device, how in per.items():
            if how == "estimated" and device not in bases:
                target = resolve_targets((device,), (runtime,))[0]
                if getattr(target.profile_obj, "host", False):
                    bases[device] = _host_basis(device, target, unit_basis)
                else:
                    bases[device] = json.loads(json.dumps(unit_basis(target.profile_obj,
                                                                     target.unit_obj)))
    return bases


def _host_basis(device: str, target, unit_basis) -> dict:
    from edgeopt._outdir import write_json_atomic
    from edgeopt.runtimes.devices import host_identity
    from edgeopt.runtimes.estimate import calibration_path

    path = calibration_path().parent / "search-host-basis.json"
    key = f"{host_identity()} | {device}"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    if not isinstance(stored, dict) or not isinstance(stored.get(key), dict):
        stored = stored if isinstance(stored, dict) else {}
        stored[key] = json.loads(json.dumps(unit_basis(target.profile_obj, target.unit_obj)))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, stored)
    return stored[key]


def _absolute_drop(text: str | None, reference: float) -> float | None:
    if text is None:
        return None
    try:
        value, relative = parse_budget(text)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return abs(reference) * value / 100 if relative else value

