"""The stages every ONNX Runtime build of one FP32 model shares, whatever it keeps FP32
or how it refines the int8 values: what the FP32 file alone decides, and ONNX Runtime's
pre-processing with the depthwise inputs equalized (equalize.py) and the equalized
tensors' ranges from the equalized model's statistics. Each comes from the process's memo
(reuse.py) when a build of the same content made it; quantize.py builds on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeopt.calibrate import reuse
from edgeopt.calibrate.calibrators import compute_ranges
from edgeopt.calibrate.equalize import equalize_depthwise_inputs
from edgeopt.calibrate.float_ops import qdq_notes
from edgeopt.calibrate.output_ranges import protected_ranges
from edgeopt.calibrate.qdq_graph import first_conv, linear_nodes, stem_block
from edgeopt.calibrate.stats import DEFAULT_RESERVOIR, TensorStats, collect_stats

__all__ = ["Base", "Source", "equalized_ranges", "fp32_source", "prepared_base", "reservoir_for"]


@dataclass(frozen=True)
class Source:
    """What the FP32 model alone decides: its digest, the ranges never clipped, notes."""

    digest: str
    protected: tuple
    notes: tuple[str, ...]


def fp32_source(fp32_onnx: Path) -> Source:
    """:class:`Source` of ``fp32_onnx``, or the memo's."""
    import onnx

    file_digest = reuse.file_digest(fp32_onnx)
    found = reuse.memo().get(("ort-source", file_digest))
    if found is None:
        model = onnx.load(str(fp32_onnx))
        found = Source(file_digest, tuple(protected_ranges(model).items()),
                       tuple(qdq_notes(model)))
        reuse.memo().put(("ort-source", file_digest), found, 0)
    return found


@dataclass(frozen=True)
class Base:
    """ONNX Runtime's pre-processing of the FP32 model with its depthwise inputs equalized
    (serialized), the nodes the QDQ graph may keep FP32, and the equalized tensors' ranges
    from the equalized model's statistics."""

    key: str
    data: bytes
    first: tuple[str, ...]
    stem: tuple[str, ...]
    linear: tuple[str, ...]
    equalized: int
    ranges: tuple          # (tensor, QuantRange): the equalized tensors and their producers

    def model(self):
        """A copy of the pre-processed, equalized model, the caller's own."""
        import onnx

        return onnx.load_from_string(self.data)


def prepared_base(fp32_onnx: Path, prepped: Path, calib, stats: dict, config,
                  fp32_digest: str) -> Base:
    """:class:`Base` of ``fp32_onnx`` (written to ``prepped`` on the way) for ``config``'s
    calibrator and equalization, over ``calib`` with ``stats``, or the memo's."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    maxima = {n: s.channel_max for n, s in stats.items() if s.channel_max is not None}
    key = reuse.digest("ort-base", fp32_digest, reuse.samples_digest(calib), config.equalize,
                       config.calibrator, maxima)
    found = reuse.memo().get(key)
    if found is not None:
        return found
    quant_pre_process(str(fp32_onnx), str(prepped), skip_symbolic_shape=True)
    model = onnx.load(str(prepped))
    first, stem, linear = first_conv(model), stem_block(model), linear_nodes(model)
    equalized, ranges = {}, {}
    if config.equalize and not linear:
        equalized = equalize_depthwise_inputs(model, calib, stats)
        if equalized:
            ranges = equalized_ranges(model, equalized, calib, config.calibrator, stats)
    data = model.SerializeToString()
    found = Base(key, data, tuple(first), tuple(stem), tuple(linear), len(equalized),
                 tuple(ranges.items()))
    reuse.memo().put(key, found, len(data))
    return found


def equalized_ranges(model, equalized, calib, calibrator: str, stats: dict | None = None
                     ) -> dict:
    """The calibrator's ranges of the equalized tensors, from the equalized model (the
    statistics of the original no longer describe them). Each range also goes to the
    convolution output its activation is folded into.

    For a min-max calibrator they follow from ``stats`` of the original model when those
    kept each tensor's per-sample channel maxima and every sample reached 0 (a ReLU's):
    channel ``i`` of the equalized tensor is channel ``i`` times its gain, so each sample's
    maximum is the largest of its channel maxima times their gains, and its minimum stays
    0. Otherwise a pass over ``calib`` measures them."""
    known = {name: _scaled(stats.get(name), m) for name, m in equalized.items()
             } if stats and not reservoir_for(calibrator) else {}
    measured = (known if known and all(v is not None for v in known.values()) else
                collect_stats(model, calib, names=list(equalized),
                              reservoir=reservoir_for(calibrator)))
    ranges = compute_ranges(measured, calibrator)
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for name, r in ranges.items():
        for tensor in (name, producer[name].input[0]):
            found[tensor] = r
    return found


def _scaled(stats: TensorStats | None, peaks: np.ndarray) -> TensorStats | None:
    """The min-max statistics of a tensor whose channels are scaled by ``max(peaks) /
    peaks`` (equalize.py's gains), from the original's per-sample channel maxima; None
    when they are not kept, or a sample's minimum was not 0."""
    rows = getattr(stats, "sample_peaks", None)
    if rows is None or stats.min != 0.0 or stats.sum_min != 0.0 or rows.shape[1] != peaks.size:
        return None
    tops = (rows.astype(np.float64) * (float(peaks.max()) / peaks)).max(axis=1)
    return replace(stats, min=0.0, max=float(tops.max()), sum_min=0.0,
                   sum_max=float(tops.sum()), reservoir=np.empty(0, np.float32),
                   channel_max=None, channel_sum=None, sample_peaks=None)


def reservoir_for(calibrator: str) -> int:
    """The reservoir size statistics need for ``calibrator``: none for the min-max ones."""
    return 0 if calibrator in ("minmax", "mean-minmax") else DEFAULT_RESERVOIR
