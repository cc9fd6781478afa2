"""The search loop with Optuna and its sqlite study, trials built by a fake executor (the
real builds are in tests/e2e/test_search.py): resume, the front against trials.csv."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("optuna")

from edgeopt.recipe import Recipe  # noqa: E402
from edgeopt.search import SearchSettings, search  # noqa: E402
from edgeopt.search.objectives import dominates  # noqa: E402

CALIBRATORS = ["mean-minmax", "minmax", "kmeans", "mse"]


def _outcome(job: dict) -> dict:
    """Figures that depend on the recipe only, as a real build's do."""
    recipe = Recipe.from_dict(job["recipe"])
    ratio = recipe.prune.ratio if recipe.prune else 0.0
    metric = 0.99 - 0.004 * CALIBRATORS.index(recipe.quant.calibrator) - 0.3 * ratio
    size = int(40_000 * (1 - ratio) + (3_000 if recipe.quant.keep_first_fp32 else 0))
    return {"number": job["number"], "status": "ok", "runtime": recipe.runtimes[0],
            "precision": "int8", "artifact": f"{job['out']}/m.int8.onnx", "format": "onnx",
            "size_bytes": size, "sha256": f"{job['number']:064d}", "metric_name": "accuracy",
            "metric": round(metric, 6), "artifact_status": "ok", "build_s": 0.0}


class FakeExecutor:
    name = "fake"

    def __init__(self, interrupt_on_result: int | None = None) -> None:
        self.results, self.interrupt_on_result = 0, interrupt_on_result
        self.jobs: dict[int, dict] = {}

    def warm(self) -> None:
        pass

    def submit(self, job) -> None:
        self.jobs[job["number"]] = job

    def result(self, number):
        self.results += 1
        if self.results == self.interrupt_on_result:
            raise KeyboardInterrupt
        return _outcome(self.jobs.pop(number))

    def building(self) -> bool:
        return False

    def drain(self) -> None:
        pass

    def measure(self, jobs):
        raise AssertionError("every latency here is estimated")

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch):
    import edgeopt.search._finish as finish
    import edgeopt.search.executors as executors
    import edgeopt.search.run as run

    state = {"executor": FakeExecutor()}
    monkeypatch.setattr(run, "_reference", lambda recipe, work, steps:
                        ("accuracy", True, 0.99, "torch"))
    monkeypatch.setattr(run, "_bases", lambda latency: {})
    monkeypatch.setattr(executors, "make_executor", lambda *a: state["executor"])
    monkeypatch.setattr(executors, "estimate_latency", lambda artifact, device, runtime, basis:
                        {"label": "estimated", "p50_ms": 0.05 + len(artifact) % 7 / 1000})
    monkeypatch.setattr(finish, "_best_dir", lambda *a: True)
    return state


def _settings(out, **kw) -> SearchSettings:
    recipe = Recipe(model="ref:digits-cnn", devices=("rpi5",))
    return SearchSettings(recipe=recipe, out=out, seed=0, latency="estimated", quiet=True, **kw)


def test_a_resumed_search_keeps_its_finished_trials(fake, tmp_path):
    out = tmp_path / "S"
    fake["executor"] = FakeExecutor(interrupt_on_result=5)    # trials 0-3 told, 4 and 5 asked
    with pytest.raises(KeyboardInterrupt):
        search(_settings(out, trials=8, batch=2))
    import optuna

    storage = f"sqlite:///{out / 'study.db'}"
    before = optuna.load_study(study_name="edgeopt-search", storage=storage).trials
    finished = {t.number: (t.params, t.values) for t in before if t.state.name == "COMPLETE"}
    interrupted = [t.params for t in before if t.state.name == "RUNNING"]
    assert len(finished) == 4 and len(interrupted) == 2

    fake["executor"] = FakeExecutor()
    summary = search(_settings(out, trials=8, resume=True, batch=2))
    after = optuna.load_study(study_name="edgeopt-search", storage=storage).trials
    kept = {t.number: (t.params, t.values) for t in after if t.number in finished}
    assert kept == finished                                   # untouched, same numbers
    assert summary["complete"] == 8
    rerun = [t.params for t in after if t.number >= 6][:2]
    assert rerun == interrupted                               # the interrupted values, again
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3, 6, 7, 8, 9]


def test_every_pareto_point_is_non_dominated_among_the_trials(fake, tmp_path):
    out = tmp_path / "S"
    search(_settings(out, trials=12, max_size_mb=0.035))
    pareto = json.loads((out / "pareto.json").read_text())
    names = [o["name"] for o in pareto["objectives"]]
    directions = [o["direction"] for o in pareto["objectives"]]
    rows = [r for r in csv.DictReader((out / "trials.csv").open()) if r["state"] == "COMPLETE"]
    points = {int(r["trial"]): [float(r[names[0]]), float(r[f"p50_ms {names[1][7:]}"]),
                                float(r["size_bytes"]) / 1e6] for r in rows}
    front = [p["trial"] for p in pareto["front"]]
    assert front and set(front) == {int(r["trial"]) for r in rows if r["pareto"] == "yes"}
    for k in front:
        assert not any(dominates(points[j], points[k], directions) for j in points if j != k)
    for k in set(points) - set(front):                        # and nothing non-dominated left out
        assert any(dominates(points[j], points[k], directions) for j in points)
    best = pareto["best_trial"]
    assert best is None or points[best][2] <= 0.035           # the chosen point meets the limit
    assert all(label == "estimated" for p in pareto["front"] for label in p["labels"].values())
    assert (out / "plot-rpi5_cpu.png").stat().st_size > 0


def test_a_seeded_search_draws_the_same_trials(fake, tmp_path):
    search(_settings(tmp_path / "a", trials=6))
    search(_settings(tmp_path / "b", trials=6))
    assert (tmp_path / "a" / "pareto.json").read_bytes() == \
        (tmp_path / "b" / "pareto.json").read_bytes()


def test_a_non_empty_out_is_refused_without_resume(fake, tmp_path):
    from edgeopt.errors import UsageError

    out = tmp_path / "S"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        search(_settings(out, trials=2))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
