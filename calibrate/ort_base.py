"""The stages every ONNX Runtime build of one FP32 model shares, whatever it keeps FP32
or how it refines the int8 values: what the FP32 file alone decides, and ONNX Runtime's
pre-processing with the depthwise inputs equalized (equalize.py) and the equalized
tensors' ranges from the equalized model's statistics. Each comes from the process's memo
(reuse.py) when a build of the same content made it; quantize.py builds on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeopt.calibrate import reuse
from edgeopt.calibrate.calibrators import compute_ranges
from edgeopt.calibrate.equalize import equalize_depthwise_inputs
from edgeopt.calibrate.float_ops import qdq_notes
from edgeopt.calibrate.output_ranges import protected_ranges
from edgeopt.calibrate.qdq_graph import first_conv, linear_nodes, stem_block
from edgeopt.calibrate.stats import DEFAULT_RESERVOIR, collect_stats

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
            ranges = equalized_ranges(model, equalized, calib, config.calibrator)
    data = model.SerializeToString()
    found = Base(key, data, tuple(first), tuple(stem), tuple(linear), len(equalized),
                 tuple(ranges.items()))
    reuse.memo().put(key, found, len(data))
    return found


def equalized_ranges(model, equalized, calib, calibrator: str) -> dict:
    """The calibrator's ranges of the equalized tensors, from the equalized model (the
    statistics of the original no longer describe them). Each range also goes to the
    convolution output its activation is folded into."""
    ranges = compute_ranges(collect_stats(model, calib, names=list(equalized),
                                          reservoir=reservoir_for(calibrator)), calibrator)
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for name, r in ranges.items():
        for tensor in (name, producer[name].input[0]):
            found[tensor] = r
    return found


def reservoir_for(calibrator: str) -> int:
    """The reservoir size statistics need for ``calibrator``: none for the min-max ones."""
    return 0 if calibrator in ("minmax", "mean-minmax") else DEFAULT_RESERVOIR
