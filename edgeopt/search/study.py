"""The search loop: an Optuna study in ``DIR/study.db``, asked ahead, told in order.

Trials are asked in the driver (every value is drawn here, never in a worker), ``batch``
ahead of the last told one, built by the executor, timed, then told in trial-number
order. So a seeded sampler with estimated latency draws the same trials on ``local`` and
``ray``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.errors import UsageError
from edgeopt.recipe import Recipe
from edgeopt.search.objectives import Constraints, Objectives, objective_values, violations
from edgeopt.search.space import Space, suggest, trial_recipe

__all__ = ["SAMPLERS", "Plan", "make_sampler", "open_study", "run_trials", "trial_rows"]

SAMPLERS = ("nsga2", "tpe", "random", "grid")
STUDY = "edgeopt-search"


@dataclass
class Plan:
    """Everything the loop needs, resolved before the first trial."""

    base: Recipe
    space: Space
    objectives: Objectives
    constraints: Constraints
    reference_metric: float
    latency: dict[str, dict[str, str]]          # runtime -> device -> measured | estimated
    bases: dict[str, dict | None]               # device -> pinned estimate basis
    protocol: dict
    out: Path
    work: Path
    trials: int
    batch: int
    build_seconds: list[float] = field(default_factory=list)
    # CPU seconds of this process and its children during the builds: a local build's
    # cores in use (CPU / wall) bound what parallel builds can gain on this machine
    build_cpu_seconds: list[float] = field(default_factory=list)
    measure_seconds: list[float] = field(default_factory=list)   # measured benchmarks


def _optuna():
    try:
        import optuna
    except ImportError as e:
        msg = "edgeopt search needs the search extra: pip install 'edgeopt[search]'"
        raise UsageError(msg) from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_sampler(name: str, seed: int | None, space: Space, trials: int):
    """NSGA-II (default), TPE (multi-objective), random, or grid (every point, in order)."""
    optuna = _optuna()
    # Constraints reach NSGA-II and TPE through each trial's set_constraint (_tell).
    if name == "nsga2":
        population = min(50, max(4, trials // 2))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=min(10, max(2, trials // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    grid = {p.name: p.grid() for p in space.params}
    return optuna.samplers.GridSampler(grid, seed=seed)


def open_study(plan: Plan, sampler, resume: bool):
    """The study in ``DIR/study.db``: new, or (``resume``) the interrupted one, its
    unfinished trials failed and queued again with the same values."""
    optuna = _optuna()
    storage = f"sqlite:///{(plan.out / 'study.db').absolute()}"
    if resume:
        try:
            study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler)
        except KeyError as e:
            msg = f"--resume: {plan.out}/study.db holds no edgeopt search"
            raise UsageError(msg) from e
        if list(study.user_attrs.get("objectives", [])) != plan.objectives.names:
            msg = (f"--resume: the study's objectives {study.user_attrs.get('objectives')} "
                   f"differ from this search's {plan.objectives.names}; same devices and data")
            raise UsageError(msg)
        plan.bases = study.user_attrs.get("bases", plan.bases)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params)
        return study
    study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                                directions=plan.objectives.directions)
    study.set_user_attr("objectives", plan.objectives.names)
    study.set_user_attr("bases", plan.bases)
    study.set_user_attr("reference_metric", plan.reference_metric)
    return study


def _finished(study) -> int:
    """Trials that ran to an outcome (built, or failed to build); an interrupted one has
    none and is run again."""
    return len(trial_rows(study))


def run_trials(study, plan: Plan, executor, on_told=None) -> None:
    """Ask, build, time and tell until the study holds ``plan.trials`` finished trials.

    A sliding window of ``plan.batch`` trials: the first ``batch`` are asked, then each
    told trial is followed by one ask. So trial N is drawn once trial N - batch is told,
    on every executor: the study sees the same asks and tells in the same order, while
    Ray builds the window's trials as workers free up (no batch waits for its longest).
    """
    from collections import deque

    window: deque = deque()
    clock = _BuildClock(plan, executor)
    while True:
        left = plan.trials - _finished(study) - len(window)
        while len(window) < plan.batch and left > 0:
            trial = study.ask()
            job = _job(trial, plan)
            if "error" not in job:
                plan.work.mkdir(parents=True, exist_ok=True)
                executor.submit(job)
                clock.submitted()
            window.append((trial, job))
            left -= 1
        if not window:
            return
        trial, job = window.popleft()
        if "error" in job:
            outcome = {"number": job["number"], "status": "failed", "error": job["error"]}
        else:
            with clock:
                outcome = executor.result(job["number"])
        _time_trials([outcome], plan, executor)
        _tell(study, trial, job, outcome, plan)
        if on_told is not None:
            on_told(trial.number, outcome)


class _BuildClock:
    """The build phase: the wall (and CPU) seconds the driver waits for builds, plus, on
    Ray, the time it spends timing and telling a trial while other builds go on (less any
    measured benchmark, which runs with no build beside it)."""

    def __init__(self, plan: Plan, executor) -> None:
        self.plan, self.executor = plan, executor
        self.ended, self.busy, self.measured = 0.0, False, 0.0

    def __enter__(self) -> None:
        self.started, self.cpu = time.perf_counter(), _cpu_seconds()
        if self.busy:                   # builds ran while the last trial was timed and told
            measured = sum(self.plan.measure_seconds) - self.measured
            self.plan.build_seconds.append(self.started - self.ended - measured)

    def __exit__(self, *exc) -> None:
        self.ended = time.perf_counter()
        self.plan.build_seconds.append(self.ended - self.started)
        self.plan.build_cpu_seconds.append(_cpu_seconds() - self.cpu)
        self.busy, self.measured = self.executor.building(), sum(self.plan.measure_seconds)

    def submitted(self) -> None:
        """A submitted trial that started building at once (Ray, a worker free) starts
        the clock, if no build was running."""
        if not self.busy and self.executor.building():
            self.busy, self.ended = True, time.perf_counter()
            self.measured = sum(self.plan.measure_seconds)


def _cpu_seconds() -> float:
    """User and system CPU seconds of this process (all its threads) and its children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _job(trial, plan: Plan) -> dict:
    """The trial's build job, or its values' recipe problem (``error``: never built)."""
    values = suggest(trial, plan.space)
    try:
        recipe = trial_recipe(plan.base, values).to_dict()
    except UsageError as e:
        return {"number": trial.number, "recipe": None, "error": f"recipe: {e}"}
    name = f"trial-{trial.number:04d}"
    return {"number": trial.number, "recipe": recipe, "out": str(plan.work / name),
            "cwd": str(Path.cwd()), "log": str(plan.work / f"{name}.log"), "threads": None}


def _time_trials(outcomes: list[dict], plan: Plan, executor) -> None:
    """Each built artifact's p50 on every device: measured ones through the executor (one
    benchmark per device at a time), estimated ones here from the pinned basis."""
    from edgeopt.search.executors import estimate_latency

    measured = []
    for outcome in outcomes:
        if outcome["status"] != "ok":
            continue
        outcome["latency"] = {}
        for device, how in plan.latency[outcome["runtime"]].items():
            if how == "measured":
                measured.append((outcome, device, {
                    "artifact": outcome["artifact"], "device": device,
                    "runtime": outcome["runtime"], "protocol": plan.protocol}))
                continue
            try:
                outcome["latency"][device] = estimate_latency(
                    outcome["artifact"], device, outcome["runtime"], plan.bases.get(device))
            except Exception as e:  # an estimate that cannot be made fails the trial
                outcome.update(status="failed", error=f"no latency on {device}: {e}")
    figures = []
    if measured:
        executor.drain()                    # no build shares the CPU with a benchmark
        started = time.perf_counter()
        figures = executor.measure([job for _, _, job in measured])
        plan.measure_seconds.append(time.perf_counter() - started)
    for (outcome, device, _), figure in zip(measured, figures, strict=True):
        outcome["latency"][device] = figure
    for outcome in outcomes:
        missing = [d for d, f in outcome.get("latency", {}).items() if f.get("p50_ms") is None]
        if outcome["status"] == "ok" and missing:
            outcome.update(status="failed", error=f"no p50 on {', '.join(missing)}")


def _tell(study, trial, job: dict, outcome: dict, plan: Plan) -> None:
    import optuna

    trial.set_user_attr("recipe", job["recipe"])
    trial.set_user_attr("outcome", json.loads(json.dumps(outcome)))
    if outcome["status"] != "ok":
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    held = violations(outcome, plan.objectives, plan.constraints, plan.reference_metric)
    trial.set_user_attr("constraints", held)
    for i, value in enumerate(held):
        trial.set_constraint(f"c{i}", value)
    study.tell(trial, objective_values(outcome, plan.objectives))


def trial_rows(study) -> list[dict]:
    """Every finished trial as a row: number, state, params, recipe, outcome, constraints."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL) \
                or "outcome" not in t.user_attrs:
            continue
        rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                     "recipe": t.user_attrs.get("recipe"), "outcome": t.user_attrs.get("outcome"),
                     "values": list(t.values) if t.values else None,
                     "constraints": t.user_attrs.get("constraints", [])})
    return rows
