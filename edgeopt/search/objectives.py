"""What a search optimizes: the metric, p50 latency on each device, the artifact's size.

A trial's outcome is a plain dict (JSON-able, the same from every executor)::

    {"metric": 0.9907, "size_bytes": 40390, "latency": {"host-cpu:cpu": {"p50_ms": 0.0645,
     "label": "estimated"}}, ...}

:func:`objective_values` turns it into the numbers Optuna sees, :func:`violations` into
the constraints (<= 0 is feasible), :func:`pareto_front` keeps the non-dominated trials and
:func:`choose_best` picks the recipe written to ``DIR/best``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeopt.errors import UsageError

__all__ = ["Constraints", "Objectives", "choose_best", "dominates", "objective_values",
           "parse_latency_limits", "pareto_front", "violations"]


@dataclass(frozen=True)
class Objectives:
    """The objectives' names and directions, in the order of a trial's values."""

    metric: str
    higher_is_better: bool
    devices: tuple[str, ...]                  # target labels, e.g. host-cpu:cpu

    @property
    def names(self) -> list[str]:
        return [self.metric, *(f"p50_ms {d}" for d in self.devices), "size_mb"]

    @property
    def directions(self) -> list[str]:
        first = "maximize" if self.higher_is_better else "minimize"
        return [first, *(["minimize"] * len(self.devices)), "minimize"]


@dataclass(frozen=True)
class Constraints:
    """``--max-accuracy-drop`` (absolute), ``--max-latency-ms DEVICE=MS``, ``--max-size-mb``."""

    max_accuracy_drop: float | None = None
    max_latency_ms: dict[str, float] = field(default_factory=dict)
    max_size_mb: float | None = None


def parse_latency_limits(items: list[str] | None, devices: tuple[str, ...]) -> dict[str, float]:
    """``["rpi5=20"]`` -> {target label: ms}; a device must be one the search targets."""
    limits: dict[str, float] = {}
    for item in items or []:
        name, _, ms = item.partition("=")
        try:
            value = float(ms)
        except ValueError:
            value = float("nan")
        if not value > 0:
            msg = f"--max-latency-ms {item!r}: expected DEVICE=MS with MS > 0, e.g. rpi5=20"
            raise UsageError(msg)
        matches = [d for d in devices if d == name or d.split(":")[0] == name]
        if not matches:
            msg = (f"--max-latency-ms {item!r}: {name} is not a searched device "
                   f"({', '.join(devices)}); add --device {name}")
            raise UsageError(msg)
        for d in matches:
            limits[d] = value
    return limits


def objective_values(outcome: dict, objectives: Objectives) -> list[float]:
    """The trial's values in the objectives' order (size in MB)."""
    latency = outcome["latency"]
    return [float(outcome["metric"]),
            *(float(latency[d]["p50_ms"]) for d in objectives.devices),
            outcome["size_bytes"] / 1e6]


def violations(outcome: dict, objectives: Objectives, constraints: Constraints,
               reference_metric: float) -> list[float]:
    """One number per constraint, <= 0 where it holds (Optuna's convention)."""
    out = []
    if constraints.max_accuracy_drop is not None:
        sign = 1 if objectives.higher_is_better else -1
        drop = sign * (reference_metric - float(outcome["metric"]))
        out.append(drop - constraints.max_accuracy_drop)
    for device, ms in sorted(constraints.max_latency_ms.items()):
        out.append(float(outcome["latency"][device]["p50_ms"]) - ms)
    if constraints.max_size_mb is not None:
        out.append(outcome["size_bytes"] / 1e6 - constraints.max_size_mb)
    return out


def _oriented(values: list[float], directions: list[str]) -> list[float]:
    return [-v if d == "maximize" else v for v, d in zip(values, directions, strict=True)]


def dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one."""
    a, b = _oriented(a, directions), _oriented(b, directions)
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: dict[int, list[float]], directions: list[str]) -> list[int]:
    """The keys of the non-dominated points, in key order (equal points all stay)."""
    return [k for k, v in sorted(points.items())
            if not any(dominates(w, v, directions) for j, w in points.items() if j != k)]


def choose_best(points: dict[int, list[float]], feasible: dict[int, bool],
                directions: list[str]) -> int | None:
    """The chosen point: among feasible trials, the best metric, then the lowest latency
    on the devices in order, then the smallest size, then the earliest trial."""
    keys = [k for k in sorted(points) if feasible.get(k)]
    if not keys:
        return None
    return min(keys, key=lambda k: (*_oriented(points[k], directions), k))
