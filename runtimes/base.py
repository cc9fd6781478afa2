"""The shapes every runtime adapter shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                            # numpy dtype name
    shape: tuple[int | str, ...]          # str for a dynamic dimension


class Loaded(Protocol):
    """A model loaded and compiled for one device, ready to run. It may also have
    ``run_many(samples)``: every sample's outputs, in sample order, a few samples in flight
    at once (``runtimes/_many.py``); the evaluation passes use it where it is, and run
    ``run`` one sample at a time where it is not."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    load_ms: float
    info: dict

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class RuntimeAdapter(Protocol):
    name: ClassVar[str]
    runtime: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]

    def available(self, unit=None) -> Availability: ...
    def version(self) -> str: ...
    def load(self, model: Path, unit=None, threads: int | None = None,
             shapes: dict | None = None) -> Loaded: ...
    def unsupported_ops(self, model: Path, shapes: dict | None = None) -> list[str]: ...
