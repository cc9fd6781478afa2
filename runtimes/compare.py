"""How far a model's outputs are from reference outputs: the figures and the parity verdict.

One module for the arithmetic every output check shares: a conversion step's parity
(torch -> ONNX, ONNX -> OpenVINO IR), ``edgeopt verify`` (a bundle against the reference
outputs stored at build time) and ARM emulation (the emulated core against this host).
Numpy only, so it runs wherever a runtime does.

Conventions, the same for every caller:
- differences and norms are taken in float64, whatever the outputs' dtype;
- two all-zero outputs have cosine 1 (they agree), a zero output against a non-zero
  one has cosine 0;
- an output with a NaN or an infinity on either side is as far as it gets: max abs diff
  ``inf``, cosine 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgeopt.runtimes.errors import ParityError

__all__ = [
    "DEFAULT_COSINE_LIMIT",
    "DEFAULT_RELATIVE_LIMIT",
    "OutputDiff",
    "Parity",
    "check",
    "compare",
    "cosine",
    "max_abs_diff",
    "output_diff",
    "peak_abs",
    "row_cosines",
]

# FP32 -> FP32 conversions reorder float arithmetic (fused BN, other kernels): a few
# ulps per layer, so a relative-to-scale absolute limit plus a near-one cosine.
DEFAULT_COSINE_LIMIT = 0.9999
DEFAULT_RELATIVE_LIMIT = 1e-3


# --- one output ----------------------------------------------------------------------------

def max_abs_diff(reference: np.ndarray, output: np.ndarray) -> float:
    """The largest ``|reference - output|``, in float64; 0 for empty arrays."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(output, dtype=np.float64)
    return float(np.abs(a - b).max(initial=0.0))


def cosine(reference: np.ndarray, output: np.ndarray) -> float:
    """Cosine similarity of the two arrays flattened, in float64 (zero vectors: see above)."""
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(output, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def row_cosines(reference: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Cosine of each sample (first axis, the rest flattened), vectorised over samples.

    Same zero-vector rule as :func:`cosine`; the sums run along each row, so a row's figure
    may differ from :func:`cosine` of that row in the last bits.
    """
    a = np.asarray(outputs).reshape(len(outputs), -1).astype(np.float64)
    b = np.asarray(reference).reshape(len(reference), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    norms = na * nb
    return np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300),
                    np.where((na == 0) & (nb == 0), 1.0, 0.0))


def peak_abs(values: np.ndarray) -> float:
    """The largest ``|value|`` (0 for an empty array): the scale relative limits are taken of."""
    return float(np.abs(np.asarray(values, dtype=np.float64)).max(initial=0.0))


@dataclass(frozen=True)
class OutputDiff:
    """How one output differs from its reference (same shape, any dtype)."""

    max_abs_diff: float
    cosine: float
    peak_abs: float            # max |reference|


def output_diff(reference: np.ndarray, output: np.ndarray) -> OutputDiff:
    """The figures of one output against its reference; non-finite values give inf / 0."""
    reference, output = np.asarray(reference), np.asarray(output)
    peak = peak_abs(reference)
    if not (np.isfinite(reference).all() and np.isfinite(output).all()):
        return OutputDiff(float("inf"), 0.0, peak)
    return OutputDiff(max_abs_diff(reference, output), cosine(reference, output), peak)


# --- parity of a conversion step -------------------------------------------------------------

@dataclass(frozen=True)
class Parity:
    """How closely a converted model reproduces its source."""

    step: str
    samples: int
    max_abs_diff: float
    max_abs_limit: float
    cosine: float          # the worst per-sample cosine over all outputs
    cosine_limit: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.max_abs_limit and self.cosine >= self.cosine_limit

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(
    step: str,
    reference_outputs: Sequence[Sequence[np.ndarray]],
    outputs: Sequence[Sequence[np.ndarray]],
    *,
    cosine_limit: float = DEFAULT_COSINE_LIMIT,
    relative_limit: float = DEFAULT_RELATIVE_LIMIT,
) -> Parity:
    """Compare per-sample output lists of a source and its conversion.

    ``reference_outputs[i]`` and ``outputs[i]`` are the outputs for sample ``i``. The
    absolute limit scales with the largest reference magnitude, so logits in the tens and
    embeddings near one are held to the same relative standard. An output of another shape
    (not merely another layout of as many values) fails.

    Raises:
        ValueError: the sample counts, or a sample's output counts, differ.
    """
    if len(reference_outputs) != len(outputs) or not reference_outputs:
        msg = (f"{step}: {len(reference_outputs)} reference samples vs {len(outputs)} "
               "candidate samples")
        raise ValueError(msg)
    samples = len(reference_outputs)
    max_diff, worst_cos, scale = 0.0, 1.0, 0.0
    for ref_outs, outs in zip(reference_outputs, outputs, strict=True):
        if len(ref_outs) != len(outs):
            msg = f"{step}: {len(ref_outs)} outputs vs {len(outs)}"
            raise ValueError(msg)
        for ref, out in zip(ref_outs, outs, strict=True):
            ref, out = np.asarray(ref), np.asarray(out)
            if ref.shape != out.shape and out.size == ref.size:
                out = out.reshape(ref.shape)
            if ref.shape != out.shape:
                return Parity(step, samples, float("inf"), 0.0, 0.0, cosine_limit)
            diff = output_diff(ref, out)
            max_diff = max(max_diff, diff.max_abs_diff)
            scale = max(scale, diff.peak_abs)
            worst_cos = min(worst_cos, diff.cosine)
    limit = relative_limit * max(scale, 1.0)
    return Parity(step, samples, max_diff, limit, worst_cos, cosine_limit)


def check(parity: Parity) -> Parity:
    """Return ``parity`` if it holds, else raise ParityError naming the step."""
    if not parity.ok:
        raise ParityError(parity.step, parity)
    return parity
