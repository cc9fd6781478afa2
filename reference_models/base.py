"""What a reference model is: a real model with its data, its preprocessing and its metric.

A ``ReferenceModel`` is a frozen description plus three private factories (model, calibration
samples, evaluation samples). The factories import torch themselves, so describing a reference
model never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgeopt.calibrate.spill import spill

if TYPE_CHECKING:
    import torch

METRICS = ("accuracy", "top1_agreement", "lee_pearson")


@dataclass(frozen=True)
class EvalSet:
    """Batch-1 evaluation inputs, with task labels when the metric needs them.

    Attributes:
        inputs: one ``{input_name: array of input_shape}`` dict per sample.
        labels: task labels, one per sample; ``None`` when the metric compares with the
            FP32 model instead.
    """

    inputs: list[dict[str, np.ndarray]]
    labels: np.ndarray | None


@dataclass(frozen=True)
class ReferenceModel:
    """A real model with its calibration/evaluation data and its task metric.

    Attributes:
        name: registry name, e.g. ``"digits-cnn"``.
        description: one line.
        input_name: name of the single input, e.g. ``"input"``.
        input_shape: batch-1 input shape, e.g. ``(1, 3, 224, 224)``.
        output_name: name of the logits output, e.g. ``"logits"``.
        metric: ``"accuracy"`` (argmax against labels) or ``"top1_agreement"`` (argmax
            against the FP32 model's argmax).
        preprocessing: JSON-able description of the preprocessing, for reports and manifests.
        calib_samples: default calibration set size.
        eval_samples: default evaluation set size.
    """

    name: str
    description: str
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    metric: str
    preprocessing: dict
    calib_samples: int
    eval_samples: int
    # Factories: () -> nn.Module in eval mode; (n) -> (n, *input_shape[1:]) float array;
    # (n) -> (that array, labels or None). Calibration and evaluation draw disjoint samples.
    _build: Callable[[], torch.nn.Module] = field(repr=False, compare=False)
    _calibration: Callable[[int], np.ndarray] = field(repr=False, compare=False)
    _evaluation: Callable[[int], tuple[np.ndarray, np.ndarray | None]] = field(
        repr=False, compare=False)
    # Upper bounds on n (None: unbounded), for finite datasets.
    _max_calib: int | None = field(default=None, repr=False, compare=False)
    _max_eval: int | None = field(default=None, repr=False, compare=False)
    # Models with several (or integer) inputs: (name, numpy dtype, batch-1 shape) each, and
    # factories returning lists of input dicts; the first entry is input_name/input_shape.
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    # Metrics other than the two classifier ones: (outputs, eval_set, fp32_outputs) -> float,
    # and (outputs, fp32_outputs) -> {name: value} of secondary figures.
    _score: Callable | None = field(default=None, repr=False, compare=False)
    _extra: Callable | None = field(default=None, repr=False, compare=False)
    # Fine-tuning after pruning: () -> (arrays or input dicts, labels or None), disjoint from
    # evaluation; None when the model has no such set (a user passes --finetune-data).
    _finetune: Callable | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Checked once here: these are written in code, so a bad one is a programming error.
        if self.metric not in METRICS:
            msg = f"reference model {self.name!r}: metric {self.metric!r} not in {METRICS}"
            raise ValueError(msg)
        if not self.input_shape or self.input_shape[0] != 1:
            msg = f"reference model {self.name!r}: input_shape {self.input_shape} is not batch 1"
            raise ValueError(msg)

    @property
    def input_specs(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """(name, numpy dtype, batch-1 shape) of every input."""
        return self.inputs or ((self.input_name, "float32", tuple(self.input_shape)),)

    def extra_metrics(self, outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict:
        """Secondary figures beside the metric (e.g. embedding cosine to FP32)."""
        return dict(self._extra(outputs, fp32_outputs)) if self._extra is not None else {}

    def build(self) -> torch.nn.Module:
        """The model in eval mode with its weights loaded."""
        return self._build().eval()

    def calibration_set(self, n: int | None = None) -> list[dict[str, np.ndarray]]:
        """``n`` (default ``calib_samples``) batch-1 input dicts, disjoint from evaluation."""
        n = self._count(n, self.calib_samples, self._max_calib, "calibration")
        return self._to_dicts(self._calibration(n), n)

    @property
    def has_finetune_set(self) -> bool:
        return self._finetune is not None

    def finetune_set(self) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
        """Samples to fine-tune on after pruning (disjoint from evaluation), with labels
        for the task loss, or ``None`` to distil from the unpruned model."""
        if self._finetune is None:
            msg = f"{self.name} has no fine-tuning set"
            raise ValueError(msg)
        arrays, labels = self._finetune()
        n = len(arrays)
        return self._to_dicts(arrays, n), (None if labels is None else np.asarray(labels))

    def evaluation_set(self, n: int | None = None) -> EvalSet:
        """``n`` (default ``eval_samples``) batch-1 inputs with labels (or ``None``)."""
        n = self._count(n, self.eval_samples, self._max_eval, "evaluation")
        arrays, labels = self._evaluation(n)
        if labels is not None:
            labels = np.ascontiguousarray(labels)
            if labels.shape != (n,):
                msg = f"{self.name}: {labels.shape} labels for {n} evaluation samples"
                raise ValueError(msg)
        return EvalSet(self._to_dicts(arrays, n), labels)

    def score(self, outputs: np.ndarray, eval_set: EvalSet,
              fp32_outputs: np.ndarray | None = None) -> float:
        """The model's metric of stacked ``(N, classes)`` logits from any runtime.

        Args:
            outputs: logits of the evaluated artifact, one row per ``eval_set`` sample.
            eval_set: the set the outputs were computed on.
            fp32_outputs: the FP32 model's logits on the same set; needed by
                ``top1_agreement``.

        Returns:
            The fraction of samples whose top-1 class is right (``accuracy``) or matches the
            FP32 model's top-1 class (``top1_agreement``).

        Raises:
            ValueError: the metric's reference (labels or ``fp32_outputs``) is missing, or
                the number of rows does not match the evaluation set.
        """
        if self._score is not None:
            return float(self._score(outputs, eval_set, fp32_outputs))
        predicted = self._top1(outputs, len(eval_set.inputs), "outputs")
        if self.metric == "accuracy":
            if eval_set.labels is None:
                msg = f"{self.name}: accuracy needs labels, and this evaluation set has none"
                raise ValueError(msg)
            expected = np.asarray(eval_set.labels)
        else:
            if fp32_outputs is None:
                msg = f"{self.name}: top1_agreement needs fp32_outputs (the FP32 model's logits)"
                raise ValueError(msg)
            expected = self._top1(fp32_outputs, len(eval_set.inputs), "fp32_outputs")
        if len(predicted) == 0:
            msg = f"{self.name}: cannot score an empty evaluation set"
            raise ValueError(msg)
        return float(np.mean(predicted == expected))

    def _top1(self, logits: np.ndarray, n: int, what: str) -> np.ndarray:
        logits = np.asarray(logits)
        if logits.ndim == 0 or len(logits) != n:
            msg = (f"{self.name}: {what} has shape {logits.shape}, expected {n} rows "
                   "(one per evaluation sample)")
            raise ValueError(msg)
        # Batch-1 outputs stacked as (N, 1, classes) are accepted too.
        return logits.reshape(n, -1).argmax(axis=1)

    def _count(self, n: int | None, default: int, limit: int | None, what: str) -> int:
        n = default if n is None else int(n)
        if n < 1:
            msg = f"{self.name}: {what} set size must be at least 1, got {n}"
            raise ValueError(msg)
        if limit is not None and n > limit:
            msg = f"{self.name}: {what} set size {n} exceeds the {limit} samples available"
            raise ValueError(msg)
        return n

    def _to_dicts(self, arrays, n: int) -> list[dict[str, np.ndarray]]:
        if isinstance(arrays, list):                       # input dicts already
            specs = self.input_specs
            if len(arrays) != n:
                msg = f"{self.name}: factory gave {len(arrays)} samples, expected {n}"
                raise ValueError(msg)
            for sample in arrays:
                for name, dtype, shape in specs:
                    a = sample.get(name)
                    if a is None or a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
                        msg = f"{self.name}: factory sample does not match input {name} {dtype} {shape}"
                        raise ValueError(msg)
            return spill(arrays)
        if not isinstance(arrays, Sequence):
            arrays = np.asarray(arrays, dtype=np.float32)
        expected = (n, *self.input_shape[1:])
        shape = (len(arrays), *np.shape(arrays[0])) if len(arrays) else (0,)
        if shape != expected:
            msg = f"{self.name}: factory gave shape {shape}, expected {expected}"
            raise ValueError(msg)
        # Spilled to disk one sample at a time (a lazy factory decodes one at a time):
        # memory holds one sample, and a caller mutating one cannot change another.
        return spill({self.input_name: np.asarray(a, dtype=np.float32)[None]} for a in arrays)
