"""Where mobilenet-v2's INT8 error comes from: the ONNX Runtime QDQ artifact taken apart.

`edgeopt.optimize` builds the FP32 ONNX and the post-training INT8 artifact; the same
quantization without depthwise-input equalization (calibrate/equalize.py) is the second
row. Variants of the shipped INT8 graph then put back one part of FP32 at a time, and each
is scored by top-1 agreement with FP32 on the 300 evaluation crops:

- weights only: every activation Quantize/Dequantize pair becomes a Clip to its 8-bit
  grid's range (ONNX Runtime's quantizer drops ReLU6 into the quantizer, so the clip must
  stay), i.e. activations clipped but not rounded;
- clip only: the same, with the FP32 weights and biases (equalized, as quantized);
- activations only: FP32 weights and biases (equalized), activation quantizers kept;
- one activation unrounded: for each quantized tensor in turn, only that tensor clipped and
  not rounded; the table lists the largest gains.

    python benchmarks/int8_ablation.py [--top 8]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from _timing import ort_runner, outputs
from onnx import helper, numpy_helper
from rich.console import Console
from rich.table import Table

NAME = "mobilenet-v2"


def _activation_pairs(model) -> list[tuple]:
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = []
    for node in model.graph.node:
        q = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
            pairs.append((q, node))
    return pairs


def unrounded(model, keep=lambda tensor: True):
    """A copy whose activation Q/DQ pairs (those ``keep`` names) are Clips to their range."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    swap = {}
    for q, dq in _activation_pairs(out):
        if not keep(q.input[0]):
            continue
        scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])
        lo, hi = f"{dq.output[0]}_lo", f"{dq.output[0]}_hi"
        out.graph.initializer.extend([numpy_helper.from_array(np.float32(-zero * scale), lo),
                                      numpy_helper.from_array(np.float32((255 - zero) * scale),
                                                              hi)])
        swap[dq.output[0]] = helper.make_node("Clip", [q.input[0], lo, hi], [dq.output[0]])
    nodes = [swap.get(n.output[0], n) for n in out.graph.node]
    used = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if n.op_type != "QuantizeLinear" or n.output[0] in used]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def fp32_weights(model, fp32):
    """A copy whose weight and bias DequantizeLinear nodes are the FP32 initializers, each
    such layer reading its input through its own per-channel DequantizeLinear so that ONNX
    Runtime does not quantize those weights again when it loads the graph (qdq_graph.py's
    ``keep_float``; without it this row measured 0.70, ONNX Runtime's per-tensor int8)."""
    from edgeopt.calibrate.qdq_graph import keep_float

    out = onnx.ModelProto()
    out.CopyFrom(model)
    originals = {i.name: i for i in fp32.graph.initializer}
    nodes, extra = [], []
    for node in out.graph.node:
        source = node.input[0].removesuffix("_quantized")
        if node.op_type == "DequantizeLinear" and node.input[0] != source and source in originals:
            t = onnx.TensorProto()
            t.CopyFrom(originals[source])
            t.name = node.output[0]
            extra.append(t)
            continue
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(extra)
    keep_float(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=8, help="single tensors to list")
    args = parser.parse_args()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    os.environ.setdefault("EDGEOPT_QUIET", "1")
    import edgeopt
    from edgeopt.calibrate import QuantConfig, quantize_onnx_for_ort
    from edgeopt.calibrate.equalize import equalize_depthwise_inputs
    from edgeopt.reference_models import get_reference
    from edgeopt.runtimes import BenchProtocol

    console = Console(stderr=True)
    inputs = get_reference(NAME).evaluation_set().inputs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        console.log("FP32 and post-training INT8 (edgeopt optimize)")
        edgeopt.optimize(f"ref:{NAME}", out=work, runtimes=("onnxruntime",), bench=BenchProtocol(
            warmup=0, min_iterations=1, min_seconds=0.0, repeats=1))
        fp32 = onnx.load(str(work / f"{NAME}.fp32.onnx"))
        int8 = onnx.load(str(work / f"{NAME}.int8-ort.onnx"))
        calib = get_reference(NAME).calibration_set()
        console.log("the same without depthwise-input equalization")
        plain = quantize_onnx_for_ort(work / f"{NAME}.fp32.onnx", work / "plain.onnx", calib,
                                      QuantConfig(equalize=False))
        # the FP32 weights the shipped graph was quantized from: equalized as it was
        equalized = onnx.ModelProto()
        equalized.CopyFrom(fp32)
        equalize_depthwise_inputs(equalized, calib)

        def top1(model) -> np.ndarray:
            path = work / "variant.onnx"
            onnx.save(model, str(path))
            run = ort_runner(path, 2)
            return outputs(run, inputs).argmax(axis=1)

        reference = top1(fp32)
        agree = lambda model: float(np.mean(top1(model) == reference))  # noqa: E731
        rows = [("INT8 (post-training, as shipped)", agree(int8)),
                ("INT8 without depthwise-input equalization", agree(onnx.load(str(plain.path)))),
                ("weights only (activations clipped, not rounded)", agree(unrounded(int8))),
                ("clip only (FP32 weights, activations clipped)",
                 agree(unrounded(fp32_weights(int8, equalized)))),
                ("activations only (FP32 weights and biases)",
                 agree(fp32_weights(int8, equalized)))]
        base = rows[0][1]
        singles = []
        tensors = [q.input[0] for q, _dq in _activation_pairs(int8)]
        for i, tensor in enumerate(tensors):
            console.log(f"one activation unrounded: {tensor} ({i + 1}/{len(tensors)})")
            singles.append((agree(unrounded(int8, lambda t, tensor=tensor: t == tensor)) - base,
                            tensor))
    table = Table(title=f"{NAME}: ONNX Runtime INT8 taken apart, top-1 agreement with FP32 "
                        f"on {len(inputs)} evaluation crops")
    table.add_column("variant")
    table.add_column("agreement", justify="right")
    for what, value in rows:
        table.add_row(what, f"{value:.4f}")
    for gain, tensor in sorted(singles, reverse=True)[:args.top]:
        table.add_row(f"only '{tensor}' unrounded", f"{base + gain:.4f} ({gain:+.4f})")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
