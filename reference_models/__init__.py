"""Real models with their data, preprocessing and task metrics (``ref:NAME`` in the CLI).

Importing this package imports neither torch nor any reference model module: the table below
is resolved on first use.
"""

from __future__ import annotations

import difflib
from importlib import import_module

from edgeopt.reference_models.base import EvalSet, ReferenceModel

__all__ = [
    "REFERENCE_MODELS",
    "EvalSet",
    "ReferenceModel",
    "UnknownReferenceModel",
    "get_reference",
    "list_references",
]

REFERENCE_MODELS = {
    "digits-cnn": "edgeopt.reference_models.digits_cnn:DIGITS_CNN",
    "mobilenet-v2": "edgeopt.reference_models.mobilenet_v2:MOBILENET_V2",
    "minilm": "edgeopt.reference_models.minilm:MINILM",
}


class UnknownReferenceModel(LookupError):
    """A reference model name that is not in ``REFERENCE_MODELS``."""

    def __init__(self, name: str) -> None:
        self.name = name
        known = list_references()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        super().__init__(f"unknown reference model '{name}'{hint} (known: {', '.join(known)})")


def list_references() -> list[str]:
    """Names of the reference models, sorted."""
    return sorted(REFERENCE_MODELS)


def get_reference(name: str) -> ReferenceModel:
    """The reference model registered as ``name`` (e.g. ``"digits-cnn"``).

    Raises:
        UnknownReferenceModel: ``name`` is not registered; the message suggests a close one.
    """
    if name not in REFERENCE_MODELS:
        raise UnknownReferenceModel(name)
    module, _, attr = REFERENCE_MODELS[name].partition(":")
    return getattr(import_module(module), attr)
