"""Bias correction for ONNX Runtime QDQ graphs: undo the mean shift that weight rounding
causes, as NNCF's fast bias correction does for OpenVINO.

For a convolution y = W * x + b, rounding W to W_q shifts the mean of each output channel
by (W - W_q) applied to the mean of its input. That shift is computed from the
per-channel means of each convolution's (quantized) input over calibration samples, one
pass, and folded into the int32 bias: the integers change, the graph and its speed do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import numpy as np

from edgeopt.calibrate.stats import channel_mean

MAX_SAMPLES = 32


def _channel_means(model, names: list[str], samples) -> dict[str, np.ndarray]:
    from edgeopt.runtimes import capture_onnx

    sums: dict[str, np.ndarray] = {}
    for values in capture_onnx(model, samples, names):
        for name, value in zip(names, values, strict=True):
            sums[name] = sums.get(name, 0.0) + channel_mean(value)
    return {name: total / len(samples) for name, total in sums.items()}


def dq_axis(dq) -> int:
    """A DequantizeLinear node's per-channel axis (ONNX's default: 1)."""
    return next((a.i for a in dq.attribute if a.name == "axis"), 1)


def dequantized(inits: dict, dq) -> np.ndarray:
    """The float values of a DequantizeLinear node over initializers (``inits``: protos)."""
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale))
    shape = [1] * q.ndim
    if scale.ndim == 1:
        shape[dq_axis(dq)] = -1
    return (q - zero.reshape(shape)) * scale.reshape(shape)


def _bias_jobs(fp32_model, qdq_model):
    """(conv, weight DQ, bias DQ, FP32 weight) of each quantized Conv with an int32 bias."""
    fp32_weights = {i.name: i for i in fp32_model.graph.initializer}
    inits = {i.name for i in qdq_model.graph.initializer}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    for node in qdq_model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3:
            continue
        w_dq, b_dq = producer.get(node.input[1]), producer.get(node.input[2])
        if not (w_dq and b_dq and w_dq.op_type == b_dq.op_type == "DequantizeLinear"):
            continue
        original = fp32_weights.get(w_dq.input[0].removesuffix("_quantized"))
        if original is None or w_dq.input[0] not in inits or b_dq.input[0] not in inits:
            continue
        yield node, w_dq, b_dq, original


def bias_inputs(fp32_model, qdq_model) -> list[str]:
    """The tensors whose channel means :func:`correct_weight_bias` reads."""
    return sorted({node.input[0] for node, *_ in _bias_jobs(fp32_model, qdq_model)})


def correct_weight_bias(fp32_model, qdq_model, samples: Sequence[dict[str, np.ndarray]],
                        means: dict[str, np.ndarray] | None = None) -> int:
    """Fold each quantized Conv's weight-rounding mean shift into its int32 bias, in place.

    ``fp32_model`` is the model that was quantized (its weight initializers keep their
    names; ONNX Runtime names the quantized ones ``<name>_quantized``). ``means``: the
    per-channel means of the convolutions' inputs (:func:`bias_inputs`) if already known,
    else a pass over ``samples`` measures them. Returns the number of convolutions
    corrected.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq_model.graph.initializer}
    jobs = []
    for node, w_dq, b_dq, original in _bias_jobs(fp32_model, qdq_model):
        error = numpy_helper.to_array(original).astype(np.float64) - dequantized(inits, w_dq)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        jobs.append((node.input[0], error, group, b_dq))
    if not jobs:
        return 0
    names = sorted({j[0] for j in jobs})
    if means is None or any(name not in means for name in names):
        means = _channel_means(qdq_model, names, list(islice(samples, MAX_SAMPLES)))
    for x, error, group, b_dq in jobs:
        mu = means[x]
        c_out, c_in_group = error.shape[:2]
        per_group = c_out // group
        # the input channels each output channel sees (its group's slice)
        index = (np.arange(c_out)[:, None] // per_group) * c_in_group + np.arange(c_in_group)
        shift = (error.reshape(c_out, c_in_group, -1).sum(axis=2) * mu[index]).sum(axis=1)
        bias_scale = numpy_helper.to_array(inits[b_dq.input[1]]).astype(np.float64)
        bias = numpy_helper.to_array(inits[b_dq.input[0]]).astype(np.int64)
        corrected = np.clip(bias + np.round(shift / bias_scale), -2**31, 2**31 - 1)
        inits[b_dq.input[0]].CopyFrom(
            numpy_helper.from_array(corrected.astype(np.int32), b_dq.input[0]))
    return len(jobs)
