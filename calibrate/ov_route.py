"""Which INT8 build an OpenVINO artifact gets (``QuantConfig.ov_int8``).

- ``qdq``: the run's QDQ model for ONNX Runtime (quantize.py: its ranges, equalization,
  data-aware rounding, bias correction, FP32 stem, saturation guard), converted to IR by
  OpenVINO, which reads each QuantizeLinear/DequantizeLinear pair as a FakeQuantize and
  runs the same int8 weights and activation ranges. One quantization serves both runtimes,
  in the seconds of a conversion.
- ``nncf``: NNCF's post-training quantization of the OpenVINO model (quantize_ov.py).
- ``auto`` (the default): NNCF where it has something the QDQ route does not, else qdq.
  For a transformer-style graph (no convolution, constant-weight MatMul/Gemm: NNCF's
  transformer model type, with SmoothQuant), and for control flow (If/Loop/Scan: NNCF
  keeps the bodies float) and recurrent ops (LSTM/GRU/RNN: NNCF's check puts them back to
  float when they drift).

What each route measured on mobilenet-v2 and minilm is in docs/quantization.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from edgeopt.calibrate.ov_reuse import reuse
from edgeopt.calibrate.qdq_graph import linear_nodes

__all__ = ["NNCF_OPS", "OV_INT8", "ov_int8_route"]

OV_INT8 = ("auto", "qdq", "nncf")
NNCF_OPS = ("If", "Loop", "Scan", "LSTM", "GRU", "RNN")


def ov_int8_route(fp32_onnx: Path, mode: str) -> tuple[str, str]:
    """("qdq" or "nncf", why) for the OpenVINO INT8 of ``fp32_onnx`` under ``mode``."""
    if mode != "auto":
        return mode, f"ov_int8 {mode}"
    # asked for by every OpenVINO build, variant and per-layer SQNR of a run: keyed by the
    # file's identity (not its digest: no re-read of the model each time)
    stat = Path(fp32_onnx).stat()
    key = (str(Path(fp32_onnx).resolve()), stat.st_mtime_ns, stat.st_size)
    transformer, special = reuse("ov-route", key, lambda: _facts(fp32_onnx))
    if transformer:
        return "nncf", "auto: a transformer-style graph, for NNCF's transformer quantization"
    if special:
        return "nncf", f"auto: {', '.join(special)} ops, which NNCF keeps float where needed"
    return "qdq", "auto: a graph with no transformer, control-flow or recurrent part"


def _facts(fp32_onnx: Path) -> tuple[bool, list[str]]:
    import onnx

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    found = {node.op_type for node in _nodes(model.graph)}
    return bool(linear_nodes(model)), [op for op in NNCF_OPS if op in found]


def _nodes(graph) -> Iterator:
    """Every node of ``graph`` and of the graphs in its nodes' attributes."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _nodes(sub)
