"""Which layers lose most to quantization: the SQNR of each quantized activation against
the same tensor of the FP32 model (ONNX Runtime's QDQ here; OpenVINO's in ov_sqnr.py),
and the order in which layers go back to FP32 when an accuracy budget is broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import numpy as np

from edgeopt.runtimes import capture_onnx


def layer_sqnr(fp32_model, qdq_model, samples: Sequence[dict[str, np.ndarray]],
               limit: int = 8) -> list[dict]:
    """SQNR of each quantized activation (its DequantizeLinear output) against the same
    tensor in the FP32 model, over ``limit`` samples; worst first. Errors accumulate from
    the layers before, as they do at run time."""
    consumers: dict[str, list] = {}
    for node in qdq_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pairs = _quantized_activations(fp32_model, qdq_model, consumers)
    if not pairs:
        return []
    db = _onnx_sqnr_db(fp32_model, qdq_model, pairs, list(islice(samples, limit)))
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    rows = [_onnx_row(name, db, producer, consumers) for name in pairs]
    return sorted(rows, key=lambda r: r["sqnr_db"])


def _quantized_activations(fp32_model, qdq_model, consumers: dict) -> dict[str, str]:
    """FP32 tensor -> the output of the DequantizeLinear that gives it back quantized."""
    inits = {i.name for i in qdq_model.graph.initializer}
    fp32_names = {o for n in fp32_model.graph.node for o in n.output}
    fp32_names |= {i.name for i in fp32_model.graph.input}
    pairs = {}
    for node in qdq_model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        if node.input[0] not in fp32_names:
            continue
        dq = next((c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"), None)
        if dq is not None:
            pairs[node.input[0]] = dq.output[0]
    return pairs


def _onnx_sqnr_db(fp32_model, qdq_model, pairs: dict[str, str], samples) -> dict[str, float]:
    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    fp32_runs = capture_onnx(fp32_model, samples, list(pairs))
    q_runs = capture_onnx(qdq_model, samples, list(pairs.values()))
    for ref, got in zip(fp32_runs, q_runs, strict=True):
        for name, a, b in zip(pairs, ref, got, strict=True):
            # float64 sums of squares, in place (the same values as (a - b) ** 2)
            a, b = a.astype(np.float64), b.astype(np.float64)
            np.subtract(a, b, out=b)
            np.multiply(a, a, out=a)
            signal[name] += float(np.sum(a))
            np.multiply(b, b, out=b)
            noise[name] += float(np.sum(b))
    return {name: 10 * np.log10(max(signal[name], 1e-30) / noise[name]) if noise[name] > 0
            else float("inf") for name in pairs}


def _onnx_row(name: str, db: dict[str, float], producer: dict, consumers: dict) -> dict:
    node = producer.get(name)
    # SQNR of the node's quantized inputs (DQ <- Q <- tensor), to tell the error a
    # layer adds from the error it inherits.
    inherited = []
    for edge in (node.input if node is not None else ()):
        dq = producer.get(edge)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in db:
            inherited.append(db[q.input[0]])
    # the nodes that read the quantized tensor: with its producer, the group that
    # returns to FP32 together (ONNX Runtime quantizes a tensor for any quantized reader)
    readers = [c.name for q in consumers.get(name, []) if q.op_type == "QuantizeLinear"
               for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"
               for c in consumers.get(d.output[0], []) if c.name]
    return {"tensor": name, "node": node.name if node is not None else "(input)",
            "readers": list(dict.fromkeys(readers)),
            "op": node.op_type if node is not None else "input",
            "sqnr_db": round(float(db[name]), 2),
            "input_sqnr_db": round(float(min(inherited)), 2) if inherited else None}


def sensitivity_order(rows: Sequence[dict], limit_db: float = 60.0) -> list[tuple[str, ...]]:
    """Groups of nodes (a quantized tensor's producer and readers), most damaging first: by
    the SQNR lost between the producer's quantized inputs and the tensor (a tensor fed by
    float data, or a graph input, counts from ``limit_db``)."""
    scored = []
    for r in rows:
        before = r["input_sqnr_db"] if r["input_sqnr_db"] is not None else limit_db
        group = tuple(n for n in (r["node"] if r["op"] != "input" else "", *r["readers"]) if n)
        if group:
            scored.append((min(before, limit_db) - min(r["sqnr_db"], limit_db), group))
    return list(dict.fromkeys(g for _, g in sorted(scored, key=lambda t: -t[0])))
