"""`edgeopt search`: the accuracy / latency / size Pareto front of recipes, per device.

An Optuna study over a recipe space (:mod:`.space`), with the metric, p50 latency on each
device (measured where the device is here, else estimated, and labelled) and artifact
size as objectives (:mod:`.objectives`); trials run in this process or as Ray tasks
(:mod:`.executors`); the results are ``trials.csv``, ``pareto.json``, a plot per device
and ``best/`` (:mod:`.outputs`)::

    from edgeopt.search import SearchSettings, search
    search(SearchSettings(Recipe(model="ref:digits-cnn"), out=Path("S"), trials=16))
"""

from __future__ import annotations

from edgeopt.search.run import SearchSettings, search
from edgeopt.search.space import load_space

__all__ = ["SearchSettings", "load_space", "search"]
