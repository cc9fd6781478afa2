"""Where the ONNX Runtime QDQ graph is quantized, and the fix-ups after ONNX Runtime's
quantizer: which nodes stay FP32 (a CNN's stem, the first convolution, a transformer's
non-linear ops), FP32 layers kept float at load time, graph outputs kept float.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgeopt.calibrate.quantize import QuantConfig

def first_conv(model) -> list[str]:
    """The first Conv fed by a graph input (ONNX)."""
    inputs = {i.name for i in model.graph.input}
    first = next((n for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs), None)
    return [first.name] if first is not None and first.name else []


STEM_MAX_CONVS = 3          # stem conv, depthwise, projection (MobileNet's first block)
STEM_MAX_SHARE = 0.1        # and at most this share of the model's convolutions


def stem_block(model) -> list[str]:
    """The stem of an inverted-residual CNN, left FP32 by default (``QuantConfig.fp32_stem``):
    the first Conv (it reads a graph input) and the single-reader chain of Convs after it,
    through Relu/Clip, up to and including the first Conv that narrows the channels
    (MobileNetV2: the 3->32 stem, the 32-channel depthwise, the projection to 16 channels).

    The int8 part then starts at the stem's narrowest tensor, where converting to int8
    costs least, and the early layers' quantization error, which every later layer carries
    forward, is gone: the first activation quantizers hold a large share of the logits'
    quantization noise, and these are small convolutions where ONNX Runtime's int8 kernels
    gain little, so keeping them FP32 costs about no speed. ONNX Runtime only: in OpenVINO
    the same stem costs speed and does not help accuracy. Empty when the chain branches,
    meets another op, has no narrowing Conv within ``STEM_MAX_CONVS``, or would be more
    than ``STEM_MAX_SHARE`` of the model's convolutions."""
    inputs = {i.name for i in model.graph.input}
    inits = {i.name: i for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    node = next((n for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs), None)
    chain: list[str] = []
    while node is not None and len(chain) < STEM_MAX_CONVS:
        if node.op_type == "Conv":
            weight = inits.get(node.input[1]) if len(node.input) > 1 else None
            if weight is None or len(weight.dims) != 4 or not node.name:
                return []
            chain.append(node.name)
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if weight.dims[0] < weight.dims[1] * group:
                convs = sum(n.op_type == "Conv" for n in model.graph.node)
                return chain if len(chain) <= STEM_MAX_SHARE * convs else []
        elif node.op_type not in {"Relu", "Clip"}:
            return []
        after = readers.get(node.output[0], [])
        if len(after) != 1 or node.output[0] in outputs:
            return []
        node = after[0]
    return []


def linear_nodes(model) -> list[str]:
    """For a graph without convolutions (a transformer): its MatMul/Gemm nodes whose weights
    are constants, and its embedding lookups (Gather from a constant table). Quantizing only
    those keeps a sentence encoder's embeddings close to FP32 where quantizing every op
    (quantize_static's default) does not, and still runs faster; the int8 embedding table
    shrinks the file most. Empty for CNNs."""
    if any(n.op_type == "Conv" for n in model.graph.node):
        return []
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    linear = [n.name for n in model.graph.node
              if n.op_type in {"MatMul", "Gemm"} and n.name and len(n.input) > 1
              and n.input[1] in constants]
    if not linear:
        return []
    return linear + [n.name for n in model.graph.node
                     if n.op_type == "Gather" and n.name and n.input[0] in constants]


def fp32_nodes(config: QuantConfig, find_first: Callable[[], list[str]],
               find_stem: Callable[[], list[str]] = list) -> tuple[list[str], list[str]]:
    """The nodes left in FP32 (the user's, the stem unless ``fp32_stem`` is off, the first
    convolution if asked)."""
    excluded = list(config.exclude_nodes)
    notes = []
    if config.fp32_stem:
        stem = find_stem()
        excluded += [n for n in stem if n not in excluded]
        if stem:
            notes.append(f"kept FP32 (the stem, up to its first narrowing convolution; "
                         f"--int8-stem quantizes it): {', '.join(stem)}")
    if config.keep_first_fp32:
        first = find_first()
        excluded += [n for n in first if n not in excluded]
        if first:
            notes.append(f"kept FP32 (first convolution, sees raw input): {', '.join(first)}")
    return excluded, notes


def keep_float(model) -> int:
    """Keep FP32 convolutions and Gemms float in ONNX Runtime; returns how many needed it.

    ONNX Runtime's ``WeightBiasQuantization`` optimizer (session level 1, on by default)
    takes any Conv/ConvTranspose/Gemm with float weights whose input comes from a
    per-tensor DequantizeLinear (and whose output feeds a QuantizeLinear) for an
    unfinished QDQ unit, and quantizes its weights to per-tensor int8 when the session
    loads: a layer excluded to stay FP32 silently runs as a coarse QLinearConv. It only
    takes a scalar input scale, so each such node gets a DequantizeLinear of its own with
    the same scale and zero point repeated per channel (axis 1): the same values, and the
    node stays float.
    """
    from onnx import helper, numpy_helper

    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return 0                                      # no per-axis DequantizeLinear before 13
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    done = 0
    for node in list(model.graph.node):
        if node.op_type not in {"Conv", "ConvTranspose", "Gemm"} or len(node.input) < 2:
            continue
        weight, dq = inits.get(node.input[1]), producer.get(node.input[0])
        if weight is None or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if len(dq.input) < 2 or dq.input[1] not in inits or any(
                name not in inits for name in dq.input[2:3] if name):
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        if scale.size != 1:
            continue
        attrs = {a.name: a.i for a in node.attribute if a.name in {"group", "transB"}}
        if node.op_type == "Conv":
            channels = weight.dims[1] * attrs.get("group", 1)
        elif node.op_type == "ConvTranspose":
            channels = weight.dims[0]
        else:
            channels = weight.dims[1] if attrs.get("transB", 0) else weight.dims[0]
        name = f"{node.input[0]}_float_{node.name or node.output[0]}"
        model.graph.initializer.append(numpy_helper.from_array(
            np.full(channels, scale.reshape(-1)[0], scale.dtype), f"{name}_scale"))
        per_channel = [dq.input[0], f"{name}_scale"]
        if len(dq.input) > 2 and dq.input[2]:
            zero = numpy_helper.to_array(inits[dq.input[2]])
            model.graph.initializer.append(numpy_helper.from_array(
                np.full(channels, zero.reshape(-1)[0], zero.dtype), f"{name}_zero_point"))
            per_channel.append(f"{name}_zero_point")
        own = helper.make_node("DequantizeLinear", per_channel, [name], axis=1,
                               name=f"{name}_DequantizeLinear")
        model.graph.node.insert(list(model.graph.node).index(node), own)
        node.input[0] = name
        done += 1
    if done:
        drop_unread(model)
    return done


def drop_unread(model) -> None:
    """Remove DequantizeLinear nodes whose output no one reads, then unread initializers."""
    read = {name for n in model.graph.node for name in n.input}
    read |= {o.name for o in model.graph.output}
    for node in [n for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and not set(n.output) & read]:
        model.graph.node.remove(node)
    read = {name for n in model.graph.node for name in n.input}
    for init in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(init)


def float_outputs(model) -> int:
    """Take the graph outputs out of quantization: Q -> DQ right before an output is removed,
    so the last layer gives float (QGemm/QLinearMatMul with float output). Returns how many."""
    producer = {o: n for n in model.graph.node for o in n.output}
    removed = 0
    for out in model.graph.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        consumers = [n for n in model.graph.node if source in n.input and n is not q]
        if consumers or source in {o.name for o in model.graph.output}:
            continue                                   # the float tensor is used elsewhere too
        producer[source].output[list(producer[source].output).index(source)] = out.name
        model.graph.node.remove(q)
        model.graph.node.remove(dq)
        removed += 1
    drop_unread(model)
    return removed
