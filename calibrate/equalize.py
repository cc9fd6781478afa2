"""Depthwise-input equalization: per-channel activation ranges inside per-tensor quantizers.

ONNX Runtime's integer convolutions take one scale per activation tensor. The input of a
depthwise convolution (in MobileNetV2, each expand convolution's ReLU6 output) has channels
whose ranges differ widely, so one 8-bit grid over the tensor leaves the small
channels a few levels. Each channel ``i`` of such a tensor is scaled by ``M / m_i`` (``m_i``
its largest value over the calibration samples, ``M`` the largest of them): the producing
convolution's filter ``i`` and bias are multiplied by it, and the depthwise filter ``i``
divided by it. The pair computes the same function, every channel now spans ``[0, M]`` on
the calibration data, and the calibrator then picks the tensor's range from the equalized
model's statistics (quantize.py).

Both changed convolutions have per-output-channel int8 weights, and each of their output
channels is scaled as a whole, so their weight quantization is unchanged: the gain in the
activation costs nothing elsewhere, and the graph, its kernels and its speed are the same.
The activation between them must commute with a positive per-channel scale: ReLU does;
ReLU6's clip at ``c`` becomes ``c M / m_i`` per channel, at or above ``M`` because
``m_i <= c``, and the graph keeps one scalar ``Clip(0, M)``: against the original model
that clips each channel at its calibrated maximum, a range no calibrator exceeds (every one
of them picks at most the maximum), so the 8-bit artifact is the same as with the exact
per-channel clip.

The same rescaling between a depthwise convolution and the 1x1 projection after it was
tried and is not done: the projection's weights are per output channel, so the scale lands
inside each of its weight rows, and the accuracy went down, at half strength and at full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeopt.runtimes import capture_onnx

# A channel never positive on the calibration data is scaled as if its range were this
# fraction of the tensor's: it stays near zero, as it was, instead of being blown up.
MIN_RANGE_FRACTION = 1 / 256


@dataclass(frozen=True)
class _Pair:
    producer: object           # Conv whose output channels are multiplied by M / m_i
    activation: object         # Relu or Clip(0, c) between them
    depthwise: object          # Conv(group = channels) whose filters are divided by it
    tensor: str                # the depthwise convolution's input


def _attr(node, name: str, default):
    return next((a.i for a in node.attribute if a.name == name), default)


def depthwise_pairs(model) -> list[_Pair]:
    """Conv -> Relu/Clip(0, c) -> depthwise Conv chains with constant weights read by no
    other node, and no other reader in between."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for dw in model.graph.node:
        if dw.op_type != "Conv" or len(dw.input) < 2 or dw.input[1] not in inits:
            continue
        weight = inits[dw.input[1]]
        group = _attr(dw, "group", 1)
        if group == 1 or weight.dims[0] != group or weight.dims[1] != 1:
            continue
        act = producer.get(dw.input[0])
        if act is None or act.op_type not in {"Relu", "Clip"}:
            continue
        if act.op_type == "Clip":
            bounds = [numpy_helper.to_array(inits[n]) if n in inits else None
                      for n in list(act.input[1:3]) + [""] * (3 - len(act.input))]
            if bounds[0] is None or float(bounds[0]) != 0.0 or bounds[1] is None:
                continue
        conv = producer.get(act.input[0])
        if (conv is None or conv.op_type != "Conv"
                or _attr(conv, "group", 1) != 1
                or conv.input[1] not in inits or inits[conv.input[1]].dims[0] != group
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)):
            continue
        if (readers.get(conv.output[0]) != 1 or readers.get(act.output[0]) != 1
                or {conv.output[0], act.output[0]} & outputs):
            continue
        weights = [n for n in (conv.input[1], dw.input[1], *conv.input[2:3]) if n]
        if any(readers.get(n) != 1 for n in weights):
            continue                          # shared with another node: rescaling changes it
        pairs.append(_Pair(conv, act, dw, act.output[0]))
    return pairs


def _channel_max(model, names: list[str], samples) -> dict[str, np.ndarray]:
    peak: dict[str, np.ndarray] = {}
    for values in capture_onnx(model, samples, names):
        for name, value in zip(names, values, strict=True):
            channel = np.asarray(value).max(axis=tuple(i for i in range(value.ndim) if i != 1))
            peak[name] = channel if name not in peak else np.maximum(peak[name], channel)
    return peak


def _replace(inits: dict, name: str, array: np.ndarray) -> None:
    """Overwrite an initializer's values, keeping its name and dtype."""
    from onnx import numpy_helper

    dtype = numpy_helper.to_array(inits[name]).dtype
    inits[name].CopyFrom(numpy_helper.from_array(array.astype(dtype), name))


def equalize_depthwise_inputs(model, samples: Sequence[dict[str, np.ndarray]],
                              stats: dict | None = None) -> dict[str, np.ndarray]:
    """Equalize every depthwise input's channels in place (module docstring) over the
    calibration ``samples``. Returns each equalized tensor's channel maxima ``m_i`` (in
    the original model's units; the equalized channels all reach ``max(m_i)``).

    ``stats`` (stats.py, of the same model over the same samples) give the channel maxima
    when they hold every tensor's; else they come from a pass over ``samples``."""
    from onnx import numpy_helper

    pairs = depthwise_pairs(model)
    if not pairs:
        return {}
    inits = {i.name: i for i in model.graph.initializer}
    tensors = [p.tensor for p in pairs]
    known = {t: getattr((stats or {}).get(t), "channel_max", None) for t in tensors}
    peaks = (known if all(v is not None for v in known.values())
             else _channel_max(model, tensors, samples))
    done = {}
    for pair in pairs:
        m = np.maximum(peaks[pair.tensor].astype(np.float64), 0.0)
        top = float(m.max())
        if top <= 0.0:
            continue                                       # never positive: nothing to fit
        m = np.maximum(m, top * MIN_RANGE_FRACTION)
        gain = top / m                                     # per channel, >= 1
        w = numpy_helper.to_array(inits[pair.producer.input[1]]).astype(np.float64)
        dw = numpy_helper.to_array(inits[pair.depthwise.input[1]]).astype(np.float64)
        shape = (-1,) + (1,) * (w.ndim - 1)
        _replace(inits, pair.producer.input[1], w * gain.reshape(shape))
        if len(pair.producer.input) > 2 and pair.producer.input[2]:
            b = numpy_helper.to_array(inits[pair.producer.input[2]]).astype(np.float64)
            _replace(inits, pair.producer.input[2], b * gain)
        _replace(inits, pair.depthwise.input[1], dw / gain.reshape(shape))
        if pair.activation.op_type == "Clip":
            # the clip at c becomes c * gain_i per channel, all >= top: Clip(0, top) (a new
            # initializer: other nodes may read the old bound)
            bound = f"{pair.tensor}_equalized_max"
            dtype = numpy_helper.to_array(inits[pair.activation.input[2]]).dtype
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(top, dtype), bound))
            pair.activation.input[2] = bound
        done[pair.tensor] = m
    return done

