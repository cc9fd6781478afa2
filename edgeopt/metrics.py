"""Accuracy: the run's metric, figures per model output, and the gate every INT8 artifact
passes.

The run's metric reads the model's first output, stacked one row per evaluation sample
(class scores for ``top1``/``top5``/``agreement``). The per-output figures cover every
output separately, so a clipped score head is not hidden behind a box output on another
scale. A custom metric is ``package.module:function(outputs, labels) -> float``, higher
is better, called with the stacked first output and the labels (or None).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeopt.errors import UsageError
from edgeopt.runtimes import row_cosines

__all__ = ["BUILTIN", "GATE", "Metric", "gate", "gate_problems", "output_figures", "resolve_metric"]

# The default gate: an INT8 artifact is "accuracy-drop" past any of these, unless the user
# set a budget (--max-accuracy-drop) on the run's metric, which then replaces it.
GATE = {"max_metric_drop": 0.01, "min_cosine": 0.99, "min_sqnr_db": 10.0}
# An output is "clipped-output" when the artifact's outputs cover less than this much of
# the FP32 outputs' range and pile up at their edge: most values the FP32 model puts beyond
# that edge come out at it (a float output that is merely less accurate has no such wall).
MIN_COVERAGE = 0.99
MAX_LEVELS = 4096          # more distinct values than this: a float output, no grid
MIN_SATURATED = 3           # values at the wall, and at least 1% of the samples


@dataclass(frozen=True)
class Metric:
    """One scalar figure of an artifact's first output on the evaluation set."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], float]
    needs_labels: bool = False
    higher_is_better: bool = True

    def __call__(self, outputs: np.ndarray, fp32: np.ndarray | None,
                 labels: np.ndarray | None) -> float:
        return float(self.fn(outputs, fp32, labels))


def _rows(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).reshape(len(a), -1)


def _top1(outputs, fp32, labels) -> float:
    return float(np.mean(_rows(outputs).argmax(axis=1) == np.asarray(labels)))


def _top5(outputs, fp32, labels) -> float:
    top = np.argsort(-_rows(outputs), axis=1)[:, :5]
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))


def _agreement(outputs, fp32, labels) -> float:
    return float(np.mean(_rows(outputs).argmax(axis=1) == _rows(fp32).argmax(axis=1)))


def _cosine(outputs, fp32, labels) -> float:
    return float(row_cosines(_rows(fp32), _rows(outputs)).mean())


def _sqnr(outputs, fp32, labels) -> float:
    return sqnr_db(np.asarray(fp32), np.asarray(outputs))


def _max_rel_error(outputs, fp32, labels) -> float:
    return max_rel_error(np.asarray(fp32), np.asarray(outputs))


BUILTIN = {
    "top1": Metric("top1", _top1, needs_labels=True),
    "top5": Metric("top5", _top5, needs_labels=True),
    "agreement": Metric("agreement", _agreement),
    "cosine": Metric("cosine", _cosine),
    "sqnr": Metric("sqnr", _sqnr),
    "max-rel-error": Metric("max-rel-error", _max_rel_error, higher_is_better=False),
}


def resolve_metric(spec: str, has_labels: bool) -> Metric:
    """A built-in metric by name, or ``package.module:function`` (outputs, labels) -> float."""
    if spec in BUILTIN:
        metric = BUILTIN[spec]
        if metric.needs_labels and not has_labels:
            msg = (f"--metric {spec} compares with labels, and the evaluation data has none "
                   "(labels.csv, class folders, a 'labels' array in .npz, or (inputs, label) "
                   "pairs from a factory)")
            raise UsageError(msg)
        return metric
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        msg = (f"unknown --metric {spec!r} (built-in: {', '.join(BUILTIN)}; or "
               "package.module:function taking (outputs, labels) and returning a float)")
        raise UsageError(msg)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        msg = f"--metric {spec}: cannot import it ({type(e).__name__}: {e})"
        raise UsageError(msg) from e
    if not callable(fn):
        msg = f"--metric {spec}: {name} is not a function"
        raise UsageError(msg)
    return Metric(spec, lambda outputs, fp32, labels: _custom(spec, fn, outputs, labels))


def _custom(spec: str, fn, outputs, labels) -> float:
    try:
        value = float(fn(outputs, labels))
    except Exception as e:
        msg = f"--metric {spec} failed: {type(e).__name__}: {e}"
        raise UsageError(msg) from e
    if not np.isfinite(value):
        msg = f"--metric {spec} returned {value}; a metric must be a finite number"
        raise UsageError(msg)
    return value


# ----------------------------------------------------------------------- per output

def sqnr_db(reference: np.ndarray, output: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (99.0 for an exact match)."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    err = np.asarray(output, dtype=np.float64).ravel() - ref
    noise, signal = float(np.sum(err * err)), float(np.sum(ref * ref))
    if noise == 0:
        return 99.0
    return float(10 * np.log10(max(signal, 1e-300) / noise))


def max_rel_error(reference: np.ndarray, output: np.ndarray) -> float:
    """The largest absolute error, relative to the reference's range."""
    ref = np.asarray(reference, dtype=np.float64)
    err = np.abs(np.asarray(output, dtype=np.float64) - ref)
    span = float(ref.max() - ref.min()) if ref.size else 0.0
    return float(err.max() / span) if span > 0 else float(err.max() if err.size else 0.0)


def output_figures(reference: Sequence[Sequence[np.ndarray]],
                   outputs: Sequence[Sequence[np.ndarray]], names: tuple[str, ...] = ()) -> list[dict]:
    """Cosine, SQNR, max error relative to range and range coverage of every output, each
    against the FP32 reference on the same samples (one list of outputs per sample).

    The figures are accumulated one sample at a time, in two passes over the samples (the
    saturation count needs the artifact's final range), so ``reference`` and ``outputs``
    may be read from disk (:class:`edgeopt._outputs.SpilledOutputs`) and memory holds one
    sample; a sample's size may differ from another's (dynamic output shapes)."""
    if not len(reference):
        return []
    count = len(reference[0])
    acc = [_OutputState() for _ in range(count)]
    for ref, out in zip(reference, outputs, strict=True):
        for state, r, o in zip(acc, ref, out, strict=True):
            state.add(_flat(r), _flat(o))
    for ref, out in zip(reference, outputs, strict=True):
        for state, r, o in zip(acc, ref, out, strict=True):
            state.count_saturated(_flat(r), _flat(o))
    return [{"output": names[i] if i < len(names) else f"output {i}", **state.figures()}
            for i, state in enumerate(acc)]


def _flat(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


class _OutputState:
    """One output's running figures over (reference, output) sample pairs."""

    def __init__(self) -> None:
        self.samples, self.cosines = 0, 0.0
        self.noise = self.signal = self.max_err = 0.0
        self.lo = self.lo8 = float("inf")
        self.hi = self.hi8 = float("-inf")
        self.saturated = self.beyond = 0
        self.levels: np.ndarray | None = np.empty(0)   # distinct values, while few (a grid)

    def add(self, ref: np.ndarray, out: np.ndarray) -> None:
        self.samples += 1
        self.cosines += float(row_cosines(ref[None], out[None])[0])
        err = out - ref
        self.noise += float(np.sum(err * err))
        self.signal += float(np.sum(ref * ref))
        if ref.size:
            self.max_err = max(self.max_err, float(np.abs(err).max()))
            self.lo, self.hi = min(self.lo, float(ref.min())), max(self.hi, float(ref.max()))
            self.lo8, self.hi8 = min(self.lo8, float(out.min())), max(self.hi8, float(out.max()))
            if self.levels is not None:
                self.levels = np.union1d(self.levels, out)
                if self.levels.size > MAX_LEVELS:
                    self.levels = None          # a float output: no grid

    def count_saturated(self, ref: np.ndarray, out: np.ndarray) -> None:
        # A value within half a grid step of the output's extreme rounds to it: that is
        # rounding, not clipping (a Softmax output on a 1/255 grid over a span of 0.1).
        step = 0.0 if self.levels is None else _grid_step(self.levels)
        tol = max(1e-6 * max(1.0, abs(self.hi8), abs(self.lo8)), 0.5 * step)
        beyond_hi, beyond_lo = ref > self.hi8 + tol, ref < self.lo8 - tol
        self.saturated += int(np.sum(beyond_hi & (out >= self.hi8 - tol))
                              + np.sum(beyond_lo & (out <= self.lo8 + tol)))
        self.beyond += int(beyond_hi.sum() + beyond_lo.sum())

    def figures(self) -> dict:
        span = self.hi - self.lo
        coverage = (1.0 if span <= 0 else
                    max(0.0, min(self.hi, self.hi8) - max(self.lo, self.lo8)) / span)
        sqnr = 99.0 if self.noise == 0 else float(
            10 * np.log10(max(self.signal, 1e-300) / self.noise))
        rel = self.max_err / span if span > 0 else self.max_err
        return {"cosine": round(self.cosines / self.samples, 6),
                "sqnr_db": round(sqnr, 3),
                "max_rel_error": round(rel, 6),
                "range_coverage": round(coverage, 6),
                "saturated": self.saturated,
                "clipped": bool(span > 0 and coverage < MIN_COVERAGE
                                and self.saturated >= max(MIN_SATURATED, 0.01 * self.samples)
                                and self.saturated >= self.beyond / 2)}


def _grid_step(values: np.ndarray) -> float:
    """The smallest gap between distinct values: an INT8 output's grid step (tiny for
    float outputs)."""
    gaps = np.diff(np.unique(values))
    return float(gaps.min()) if gaps.size else 0.0


def gate_problems(figures: list[dict], metric_drop: float | None) -> list[str]:
    """Why an INT8 artifact fails the default gate (empty: it passes)."""
    problems = []
    if metric_drop is not None and metric_drop > GATE["max_metric_drop"] + 1e-9:
        problems.append(f"metric drop {metric_drop:.4f} > {GATE['max_metric_drop']}")
    for f in figures:
        if f["cosine"] < GATE["min_cosine"]:
            problems.append(f"{f['output']}: cosine {f['cosine']:.4f} < {GATE['min_cosine']}")
        if f["sqnr_db"] < GATE["min_sqnr_db"]:
            problems.append(f"{f['output']}: SQNR {f['sqnr_db']:.1f} dB < "
                            f"{GATE['min_sqnr_db']:g} dB")
    return problems


def gate(state, art, runtime: str) -> None:
    """An INT8 artifact that lost accuracy or clips an output is marked and named, never
    passed as ok: ``accuracy-drop`` (the budget or the default gate) or ``clipped-output``.
    ``state`` is the run's ``edgeopt.steps.RunState``, after its budget is recorded."""
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
