"""edgeopt: turn a trained model into small, fast, measured artifacts for edge devices.

``edgeopt.optimize(model, recipe=Recipe(...), out=...)`` runs the pipeline and returns a
typed :class:`Report`; ``edgeopt.load_recipe(path)`` reads a run's ``recipe.yaml`` or
``report.json`` back.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module; resolved on first use, so `import edgeopt` (and edgeopt.runtimes, which
# `edgeopt bench` needs on a device) stays free of torch, onnx and nncf.
_LAZY = {
    "optimize": "edgeopt.pipeline",
    "prune": "edgeopt.pruning",
    "Recipe": "edgeopt.recipe",
    "DataRecipe": "edgeopt.recipe",
    "QuantRecipe": "edgeopt.recipe",
    "PruneRecipe": "edgeopt.recipe",
    "PackageRecipe": "edgeopt.recipe",
    "load_recipe": "edgeopt.recipe",
    "Report": "edgeopt.report",
    "ArtifactRecord": "edgeopt.report",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'edgeopt' has no attribute {name!r}"
    raise AttributeError(msg)
