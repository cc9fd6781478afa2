"""The search space: recipe options and the values a trial may give them, from YAML.

A space file maps recipe options (the names of the ``optimize`` flags, as
:meth:`edgeopt.recipe.Recipe.override` takes them) to their values::

    params:
      calibrator: {choices: [mean-minmax, kmeans]}
      prune_mode: {choices: [null, channels]}
      prune_ratio: {low: 0.1, high: 0.4, step: 0.1, when: {prune_mode: channels}}

A trial's values become an ordinary :class:`~edgeopt.recipe.Recipe` (:func:`trial_recipe`),
the one ``edgeopt optimize --recipe`` replays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.errors import UsageError
from edgeopt.recipe import Recipe

__all__ = ["Param", "Space", "default_space_path", "load_space", "suggest", "trial_recipe"]

_SPACES = Path(__file__).parent / "spaces"
# Search options that are not flat recipe options: the runtime and the prune section.
_PRUNE = {"prune_mode": "mode", "prune_ratio": "ratio", "prune_importance": "importance",
          "epochs": "epochs", "lr": "lr"}


@dataclass(frozen=True)
class Param:
    """One searched option: categorical ``choices``, or a number in ``[low, high]``."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: tuple[tuple[str, Any], ...] = ()

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (self.low, self.high, self.step) if v is not None)

    def grid(self) -> list:
        """Every value (grid search): the choices, or the stepped range."""
        if self.choices is not None:
            return list(self.choices)
        if self.step is None:
            msg = f"grid search needs a step for {self.name} (or choices)"
            raise UsageError(msg)
        count = int(round((self.high - self.low) / self.step)) + 1
        values = [self.low + i * self.step for i in range(count)]
        return [int(v) if self.is_int else round(v, 10) for v in values]


@dataclass(frozen=True)
class Space:
    """The searched options, in file order (the order trials ask for them)."""

    params: tuple[Param, ...]
    source: str

    def size(self) -> int | None:
        """How many distinct points (None: a continuous range)."""
        total = 1
        for p in self.params:
            if p.choices is None and p.step is None:
                return None
            total *= len(p.grid())
        return total

    def restrict(self, name: str, allowed: tuple) -> Space:
        """A copy whose ``name`` choices keep only ``allowed`` (order kept)."""
        params = tuple(dataclasses.replace(p, choices=tuple(c for c in p.choices if c in allowed))
                       if p.name == name and p.choices is not None else p for p in self.params)
        return dataclasses.replace(self, params=params)


def default_space_path(kind: str) -> Path:
    """The default space of a model kind: ``torch`` (PyTorch modules) or ``onnx``."""
    return _SPACES / f"{'torch' if kind == 'torch' else 'onnx'}.yaml"


def load_space(path: str | Path) -> Space:
    """A space from YAML; every problem is named, with the file, before any trial runs."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        msg = f"--space {path}: cannot read it ({e.strerror or e})"
        raise UsageError(msg) from e
    except yaml.YAMLError as e:
        msg = f"--space {path}: not valid YAML ({getattr(e, 'problem', None) or e})"
        raise UsageError(msg) from e
    entries = data.get("params") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        msg = f"--space {path}: expected a mapping 'params:' of option -> values"
        raise UsageError(msg)
    problems: list[str] = []
    params = tuple(p for p in (_param(name, spec, problems) for name, spec in entries.items())
                   if p is not None)
    names = {p.name for p in params}
    problems += [f"{p.name}: 'when' names {k}, which is not in the space"
                 for p in params for k, _ in p.when if k not in names]
    if not problems:
        problems += _recipe_problems(params)
    if problems:
        msg = f"--space {path}: " + "; ".join(problems)
        raise UsageError(msg)
    return Space(params, str(path))


def _param(name: str, spec: Any, problems: list[str]) -> Param | None:
    if not isinstance(spec, dict):
        problems.append(f"{name}: expected a mapping (choices: [...] or low/high)")
        return None
    unknown = set(spec) - {"choices", "low", "high", "step", "log", "when"}
    if unknown:
        problems.append(f"{name}: unknown key(s) {', '.join(sorted(unknown))}")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        problems.append(f"{name}: 'when' must map an option to a value")
        when = {}
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            problems.append(f"{name}: choices must be a non-empty list")
            return None
        return Param(name, choices=tuple(choices), when=tuple(when.items()))
    low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) \
            or low > high or (step is not None and not (isinstance(step, (int, float))
                                                        and step > 0)):
        problems.append(f"{name}: give choices, or numbers low <= high (step > 0)")
        return None
    return Param(name, low=low, high=high, step=step, log=bool(spec.get("log", False)),
                 when=tuple(when.items()))


def _recipe_problems(params: tuple[Param, ...]) -> list[str]:
    """Each option's first value, applied alone to the default recipe: the names and the
    values the recipe itself checks."""
    problems = []
    for p in params:
        values = p.choices if p.choices is not None else (p.low, p.high)
        for value in values:
            given = {p.name: value}
            if p.name in _PRUNE and p.name != "prune_mode":
                given["prune_mode"] = "channels"
            try:
                trial_recipe(Recipe(), given)
            except UsageError as e:
                problems.append(f"{p.name}={value!r}: {e}")
    return problems


def suggest(trial, space: Space) -> dict[str, Any]:
    """The trial's values for every option whose ``when`` holds, asked in space order."""
    values: dict[str, Any] = {}
    for p in space.params:
        if any(values.get(k, _UNSET) != v for k, v in p.when):
            continue
        if p.choices is not None:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.is_int:
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high),
                                               step=int(p.step or 1), log=p.log)
        else:
            value = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step,
                                        log=p.log)
            values[p.name] = round(value, 10)      # 0.30000000000000004 -> 0.3
    return values


_UNSET = object()


def trial_recipe(base: Recipe, values: dict[str, Any]) -> Recipe:
    """``base`` with a trial's values: ``runtime`` picks the one runtime built, the prune
    options make the prune section, the rest are flat recipe options."""
    flat = {k: v for k, v in values.items() if k not in _PRUNE and k != "runtime"}
    if "runtime" in values:
        flat["runtimes"] = (values["runtime"],)
    mode = values.get("prune_mode")
    if mode is not None:
        from edgeopt.recipe import PruneRecipe

        prune = {field: values[k] for k, field in _PRUNE.items() if values.get(k) is not None}
        flat["prune"] = PruneRecipe(**prune)
    elif "prune_mode" in values:
        flat["prune"] = None
    try:
        return base.override(**flat)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from e
