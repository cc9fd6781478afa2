"""The search's live display: a bar over the trials and the best-so-far line."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgeopt.search.objectives import choose_best, objective_values, violations


class TrialProgress:
    """``with TrialProgress(console, plan, study) as p: ... p.told(number, outcome)``."""

    def __init__(self, console, plan, study) -> None:
        from edgeopt.search.study import trial_rows

        self.plan, self.console = plan, console
        self.points: dict[int, list[float]] = {}
        self.feasible: dict[int, bool] = {}
        self.outcomes: dict[int, dict] = {}
        for row in trial_rows(study):               # a resumed study's finished trials
            if row["state"] == "COMPLETE":
                self._add(row["number"], row["outcome"])
        self.progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[best]}"),
                                 console=console, transient=False)
        self.task = self.progress.add_task("trials", total=plan.trials,
                                           completed=len(trial_rows(study)), best=self._best())

    def __enter__(self) -> TrialProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _add(self, number: int, outcome: dict) -> None:
        self.points[number] = objective_values(outcome, self.plan.objectives)
        self.feasible[number] = all(v <= 0 for v in violations(
            outcome, self.plan.objectives, self.plan.constraints, self.plan.reference_metric))
        self.outcomes[number] = outcome

    def _best(self) -> str:
        best = choose_best(self.points, self.feasible, self.plan.objectives.directions)
        if best is None:
            return "best so far: none within the constraints yet"
        out = self.outcomes[best]
        lat = ", ".join(f"{d} {f['p50_ms']:.4g} ms {f['label']}"
                        for d, f in out["latency"].items())
        return (f"best so far: trial {best} {self.plan.objectives.metric} {out['metric']:.4f}, "
                f"{lat}, {out['size_bytes'] / 1e6:.3f} MB")

    def told(self, number: int, outcome: dict) -> None:
        if outcome["status"] == "ok":
            self._add(number, outcome)
        else:
            self.console.print(f"[yellow]trial {number} failed[/yellow]: {outcome.get('error')}")
        self.progress.update(self.task, advance=1, best=self._best())
