"""Numerical parity between a conversion step's source and result on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgeopt.convert.errors import ParityError

# FP32 -> FP32 conversions reorder float arithmetic (fused BN, other kernels): a few
# ulps per layer, so a relative-to-scale absolute limit plus a near-one cosine.
DEFAULT_COSINE_LIMIT = 0.9999
DEFAULT_RELATIVE_LIMIT = 1e-3


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


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(
    step: str,
    reference: Sequence[Sequence[np.ndarray]],
    candidate: Sequence[Sequence[np.ndarray]],
    *,
    cosine_limit: float = DEFAULT_COSINE_LIMIT,
    relative_limit: float = DEFAULT_RELATIVE_LIMIT,
) -> Parity:
    """Compare per-sample output lists of a source and its conversion.

    ``reference[i]`` and ``candidate[i]`` are the outputs for sample ``i``. The
    absolute limit scales with the largest reference magnitude, so logits in the
    tens and embeddings near one are held to the same relative standard.
    """
    if len(reference) != len(candidate) or not reference:
        msg = f"{step}: {len(reference)} reference samples vs {len(candidate)} candidate samples"
        raise ValueError(msg)
    max_diff, worst_cos, scale = 0.0, 1.0, 0.0
    for ref_outs, cand_outs in zip(reference, candidate, strict=True):
        if len(ref_outs) != len(cand_outs):
            msg = f"{step}: {len(ref_outs)} outputs vs {len(cand_outs)}"
            raise ValueError(msg)
        for r, c in zip(ref_outs, cand_outs, strict=True):
            r = np.asarray(r)
            c = np.asarray(c)
            if r.shape != c.shape:
                c = c.reshape(r.shape) if c.size == r.size else c
            if r.shape != c.shape:
                return Parity(step, len(reference), float("inf"), 0.0, 0.0, cosine_limit)
            max_diff = max(max_diff, float(np.max(np.abs(r.astype(np.float64) - c))))
            scale = max(scale, float(np.max(np.abs(r))) if r.size else 0.0)
            worst_cos = min(worst_cos, _cosine(r, c))
    limit = relative_limit * max(scale, 1.0)
    return Parity(step, len(reference), max_diff, limit, worst_cos, cosine_limit)


def check(parity: Parity) -> Parity:
    """Return ``parity`` if it holds, else raise ParityError naming the step."""
    if not parity.ok:
        raise ParityError(parity.step, parity)
    return parity
