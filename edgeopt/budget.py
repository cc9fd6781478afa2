"""The accuracy budget: while an INT8 artifact's metric drop is over the budget, the most
damaged node groups return to FP32, one at a time, kept only where they help.

The search knows nothing of runtimes: it calls ``build(excluded)``, ``evaluate(artifact)``
and ``rank(artifact)``, which the pipeline binds to a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgeopt.backends import Artifact

__all__ = ["Budget", "BudgetOutcome", "within_budget"]

EVERYTHING_TRIED = "every candidate node in FP32"


@dataclass
class Budget:
    """The run's budget and, per runtime, how it came out (``report.json``'s
    ``accuracy_budget``)."""

    max_accuracy_drop: str | None        # the user's budget; None: the default gate's
    fp32_value: float
    allowed_drop: float | None           # None: no budget, one build per runtime
    max_fp32_nodes: int | None = None
    max_trials: int | None = None        # rebuilds allowed (the default gate's are few)
    higher_is_better: bool = True
    met: bool = True
    stopped: str = EVERYTHING_TRIED
    runtimes: dict[str, dict] = field(default_factory=dict)
    ranking: list[tuple[str, ...]] | None = None   # most damaged groups first, shared

    def drop(self, value: float) -> float:
        """How much worse than FP32 ``value`` is (positive: worse)."""
        return (self.fp32_value - value) * (1 if self.higher_is_better else -1)

    def record(self, runtime: str, art: Artifact, value: float, reverted: list[str]) -> str | None:
        """Note ``runtime``'s outcome; returns a warning when it stays over the budget."""
        drop = self.drop(value)
        met = self.allowed_drop is None or drop <= self.allowed_drop + 1e-9
        self.runtimes[runtime] = {"value": round(value, 6), "drop": round(drop, 6),
                                  "met": met, "reverted_to_fp32": reverted}
        art.quantization["reverted_to_fp32"] = reverted
        if met:
            return None
        self.met = False
        if self.max_accuracy_drop is None:      # the default gate: the pipeline flags it
            return None
        return (f"{art.file}: metric drop {drop:.4f} stays over the budget "
                f"{self.allowed_drop:.4f} ({self.stopped})")

    def to_dict(self) -> dict:
        return {"max_accuracy_drop": self.max_accuracy_drop,
                "fp32_value": round(self.fp32_value, 6),
                "allowed_drop": None if self.allowed_drop is None else round(self.allowed_drop, 6),
                "met": self.met, "stopped": self.stopped, "runtimes": self.runtimes}


@dataclass(frozen=True)
class BudgetOutcome:
    artifact: Artifact
    value: float                # the artifact's metric
    reverted: list[str]         # nodes returned to FP32 for the budget


def within_budget(label: str, budget: Budget, build: Callable[[list[str]], Artifact],
                  evaluate: Callable[[Artifact], float],
                  rank: Callable[[Artifact], list[tuple[str, ...]]],
                  warn: Callable[[str], None]) -> BudgetOutcome:
    """Quantize; while the metric drop is over the budget, try the next most damaged node
    group in FP32 and keep it only if the drop shrinks (the metric is noisy: a revert that
    does not help is undone). The ranking is kept in ``budget`` for the next runtime."""
    allowed = budget.allowed_drop
    current: list[str] = []
    art = build(current)
    value = evaluate(art)
    best_drop, best = budget.drop(value), current
    tried: set[tuple[str, ...]] = set()
    while allowed is not None and best_drop > allowed + 1e-9:
        if budget.max_trials is not None and len(tried) >= budget.max_trials:
            budget.stopped = f"{budget.max_trials} node groups tried"
            break
        if budget.ranking is None:
            budget.ranking = rank(art)
        done = {*best, *art.quantization["excluded_nodes"]}
        left = [g for g in budget.ranking if g not in tried and not set(g) <= done]
        if not left:
            break
        group = left[0]
        tried.add(group)
        trial = best + [n for n in group if n not in done]
        if budget.max_fp32_nodes is not None and len(trial) > budget.max_fp32_nodes:
            budget.stopped = f"--max-fp32-nodes {budget.max_fp32_nodes} reached"
            break
        warn(f"{label}: metric drop {best_drop:.4f} is over the budget {allowed:.4f}; "
             f"trying {', '.join(group)} in FP32")
        current = trial
        art = build(current)
        value = evaluate(art)
        if budget.drop(value) < best_drop:
            best_drop, best = budget.drop(value), current
    if current != best:                  # the last trial did not help: rebuild the best
        art = build(best)
        value = evaluate(art)
    if budget.ranking is None and art.sensitivity:
        budget.ranking = list(art.sensitivity)
    return BudgetOutcome(art, value, best)
