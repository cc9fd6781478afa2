"""An ONNX Runtime QDQ graph simulated in torch, for quantization-aware fine-tuning (qat.py).

The FP32 graph runs op by op in torch (``quant=False``: its own weights), or with the QDQ
graph's quantizers simulated (``quant=True``): per-tensor uint8 activations at the tensors
ONNX Runtime quantizes, trainable weights fake-quantized on the per-channel scales it
chose, straight-through gradients. Only the ops in ``SUPPORTED_OPS`` run.
"""

from __future__ import annotations

import numpy as np

from edgeopt.calibrate.bias_correction import dequantized, dq_axis
from edgeopt.calibrate.errors import CalibrationError

SCALED_PRODUCERS = frozenset({"input", "Conv", "Gemm", "Add", "Relu", "Clip"})
SCALE_SHARING_READERS = frozenset({"Reshape", "Flatten", "MaxPool", "AveragePool", "Concat",
                                   "Transpose", "Squeeze", "Unsqueeze", "Identity",
                                   "GlobalAveragePool", "ReduceMean", "Resize", "Split"})


class QdqSimulation:
    """The FP32 ONNX graph in torch (``quant=False``: its own weights), or the QDQ graph
    simulated (``quant=True``: trainable weights, fake-quantized as the QDQ graph stores
    them, and its activation quantizers)."""

    def __init__(self, fp32_model, qdq_model) -> None:
        import onnx
        from onnx import numpy_helper

        self.graph = fp32_model.graph
        self.consts = _constants(self.graph)
        # node wrappers are made afresh on each access: keep one list, with the attributes
        self.nodes = [(n, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
                      for n in self.graph.node]
        q_protos = {i.name: i for i in qdq_model.graph.initializer}
        q_inits = {name: numpy_helper.to_array(i) for name, i in q_protos.items()}
        self.acts = _activation_quantizers(qdq_model, q_inits)
        self.log_scales = self._movable_scales()
        self.params: dict = {}
        self.weight_q: dict = {}
        self.write_back: list[tuple[str, object, str]] = []   # (param, DQ node or None, kind)
        self._trainable_weights(qdq_model, q_protos, q_inits)

    def _movable_scales(self) -> dict:
        """Activation scales that may move: tensors a Conv/Gemm/Add/activation (or the
        graph) produces and no shape or pooling op reads (ONNX Runtime drops the Q/DQ
        around those only when both sides share one scale)."""
        import torch

        producers = {o: n.op_type for n in self.graph.node for o in n.output}
        readers: dict[str, set[str]] = {}
        for n in self.graph.node:
            for name in n.input:
                readers.setdefault(name, set()).add(n.op_type)
        log_scales: dict[str, torch.nn.Parameter] = {}
        for name, (scale_name, *_rest) in self.acts.items():
            if producers.get(name, "input") in SCALED_PRODUCERS and \
                    not readers.get(name, set()) & SCALE_SHARING_READERS:
                log_scales[scale_name] = torch.nn.Parameter(torch.zeros(()))
        return log_scales

    def _trainable_weights(self, qdq_model, q_protos: dict, q_inits: dict) -> None:
        """Conv/Gemm weights and biases as parameters: quantized ones keep the QDQ graph's
        per-channel scales, the ones it keeps FP32 train as floats."""
        import torch

        producer = {o: n for n in qdq_model.graph.node for o in n.output}
        q_nodes = {n.name: n for n in qdq_model.graph.node if n.name}
        for node in self.graph.node:
            if node.op_type not in {"Conv", "Gemm"} or len(node.input) < 2:
                continue
            q_node = q_nodes.get(node.name)
            for slot, name in enumerate(node.input[1:3], start=1):
                if not name or name not in self.consts or name in self.params:
                    continue
                dq = producer.get(q_node.input[slot]) if q_node is not None and \
                    len(q_node.input) > slot else None
                if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in q_inits:
                    value = dequantized(q_protos, dq).astype(np.float32)
                    if slot == 1:
                        self.weight_q[name] = _weight_grid(dq, q_inits, value.ndim)
                    self.write_back.append((name, dq, "weight" if slot == 1 else "bias"))
                elif q_node is not None and q_node.input[slot] == name:
                    value = self.consts[name]                       # kept FP32 in the graph
                    self.write_back.append((name, None, "float"))
                else:
                    continue
                self.params[name] = torch.nn.Parameter(torch.tensor(value.astype(np.float32)))

    def _fq(self, x, name: str):
        import torch

        scale_name, scale, zero, qmin, qmax = self.acts[name]
        if scale_name not in self.log_scales:
            lo, hi = (qmin - zero) * scale, (qmax - zero) * scale
            x = torch.clamp(x, lo, hi)
            return x + (torch.round(x / scale) * scale - x).detach()
        # a learned step size (LSQ, Esser et al. 2020), as a log-factor on the calibrated one
        step = scale * torch.exp(self.log_scales[scale_name])
        v = x / step
        v = v + (torch.round(v) - v).detach()
        return (torch.clamp(v + zero, qmin, qmax) - zero) * step

    def _weight(self, name: str, quant: bool):
        import torch

        w = self.params.get(name)
        if w is None or not quant:                      # the FP32 model's own value
            return torch.from_numpy(self.consts[name].astype(np.float32))
        if name not in self.weight_q:
            return w
        scale, qmin, qmax = self.weight_q[name]
        return w + (torch.clamp(torch.round(w / scale), qmin, qmax) * scale - w).detach()

    def __call__(self, feeds: dict, quant: bool):
        env = {}
        for name, value in feeds.items():
            env[name] = self._fq(value, name) if quant and name in self.acts else value
        for node, attrs in self.nodes:
            if node.op_type == "Constant":
                continue
            outs = self._run(node, attrs, env, quant)
            for name, value in zip(node.output, outs, strict=False):
                env[name] = self._fq(value, name) if quant and name in self.acts else value
        return [env[o.name] for o in self.graph.output]

    def _input(self, env: dict, name: str, quant: bool):
        import torch

        if name in env:
            return env[name]
        if name in self.params:
            return self._weight(name, quant)
        return torch.from_numpy(np.asarray(self.consts[name]))

    def _run(self, node, a: dict, env: dict, quant: bool) -> list:
        run = _OPS.get(node.op_type)
        if run is None:                                            # unsupported_ops() guards
            msg = f"quantization-aware fine-tuning cannot simulate ONNX op {node.op_type}"
            raise CalibrationError(msg)
        x = [self._input(env, n, quant) if n else None for n in node.input]
        w = self._weight(node.input[1], quant) if node.op_type in {"Conv", "Gemm"} else None
        return [run(x, a, w)]


def _constants(graph) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' values, as writable copies (torch refuses to share
    read-only arrays)."""
    from onnx import numpy_helper

    consts = {i.name: np.array(numpy_helper.to_array(i)) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = np.array(numpy_helper.to_array(node.attribute[0].t))
    return consts


def _activation_quantizers(qdq_model, q_inits: dict) -> dict[str, tuple]:
    """Tensor -> (scale initializer, scale, zero point, qmin, qmax) of each activation the
    QDQ graph quantizes."""
    acts = {}
    for node in qdq_model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in q_inits:
            scale = float(q_inits[node.input[1]])
            zero = int(q_inits[node.input[2]]) if len(node.input) > 2 else 0
            info = np.iinfo(q_inits[node.input[2]].dtype) if len(node.input) > 2 \
                else np.iinfo(np.uint8)
            acts[node.input[0]] = (node.input[1], scale, zero, int(info.min), int(info.max))
    return acts


def _weight_grid(dq, q_inits: dict, ndim: int) -> tuple:
    """(scale broadcast over the weight, qmin, qmax) of a weight's int grid; int8 keeps
    -127..127, as ONNX Runtime's quantizer does."""
    import torch

    scale = q_inits[dq.input[1]].astype(np.float32)
    shape = [1] * ndim
    if scale.ndim:
        shape[dq_axis(dq)] = -1
    info = np.iinfo(q_inits[dq.input[0]].dtype)
    qmin = -127 if info.min == -128 else int(info.min)
    return torch.tensor(scale.reshape(shape)), qmin, int(info.max)


# ---------------------------------------------------------------- ops: (inputs, attributes, weight)

def _conv(x, a, w):
    import torch.nn.functional as F

    pads = a.get("pads", [0, 0, 0, 0])
    half = len(pads) // 2
    inp = x[0]
    if list(pads[:half]) != list(pads[half:]):
        flat = [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])]
        inp, pads = F.pad(inp, flat), [0] * len(pads)
    return F.conv2d(inp, w, x[2] if len(x) > 2 else None, a.get("strides", [1, 1]),
                    tuple(pads[:half]), a.get("dilations", [1, 1]), a.get("group", 1))


def _gemm(x, a, w):
    xa = x[0].T if a.get("transA", 0) else x[0]
    y = a.get("alpha", 1.0) * (xa @ (w.T if a.get("transB", 0) else w))
    if len(x) > 2 and x[2] is not None:
        y = y + a.get("beta", 1.0) * x[2]
    return y


def _clip(x, a, w):
    import torch

    lo = float(x[1]) if len(x) > 1 and x[1] is not None else a.get("min", -np.inf)
    hi = float(x[2]) if len(x) > 2 and x[2] is not None else a.get("max", np.inf)
    return torch.clamp(x[0], lo, hi)


def _binary(fn: str):
    def run(x, a, w):
        import torch

        return getattr(torch, fn)(x[0], x[1])
    return run


def _unary(fn: str):
    def run(x, a, w):
        import torch

        return getattr(torch, fn)(x[0])
    return run


def _reduce_mean(x, a, w):
    axes = a.get("axes") if len(x) < 2 or x[1] is None else [int(v) for v in x[1]]
    return x[0].mean(dim=tuple(axes) if axes else None, keepdim=bool(a.get("keepdims", 1)))


def _global_average_pool(x, a, w):
    return x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)


def _pool(kind: str):
    def run(x, a, w):
        import torch.nn.functional as F

        pads = a.get("pads", [0, 0, 0, 0])
        args = (x[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]),
                tuple(pads[:len(pads) // 2]))
        if kind == "MaxPool":
            return F.max_pool2d(*args, ceil_mode=bool(a.get("ceil_mode", 0)))
        return F.avg_pool2d(*args, ceil_mode=bool(a.get("ceil_mode", 0)),
                            count_include_pad=bool(a.get("count_include_pad", 0)))
    return run


def _flatten(x, a, w):
    axis = a.get("axis", 1)
    return x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)


def _reshape(x, a, w):
    shape = [int(v) for v in x[1]]
    shape[0] = x[0].shape[0] if shape[0] in (0, 1) else shape[0]   # the batch axis
    return x[0].reshape(shape)


def _concat(x, a, w):
    import torch

    return torch.cat(x, dim=a["axis"])


def _batch_norm(x, a, w):
    import torch

    shape = (1, -1) + (1,) * (x[0].dim() - 2)
    scale = x[1] / torch.sqrt(x[4] + a.get("epsilon", 1e-5))
    return (x[0] - x[3].reshape(shape)) * scale.reshape(shape) + x[2].reshape(shape)


_OPS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": lambda x, a, w: x[0] @ x[1],
    "Relu": _unary("relu"), "Clip": _clip, "Sigmoid": _unary("sigmoid"),
    "Add": _binary("add"), "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _binary("div"),
    "ReduceMean": _reduce_mean, "GlobalAveragePool": _global_average_pool,
    "AveragePool": _pool("AveragePool"), "MaxPool": _pool("MaxPool"),
    "Flatten": _flatten, "Reshape": _reshape, "Concat": _concat,
    "Identity": lambda x, a, w: x[0], "BatchNormalization": _batch_norm,
}
# what the simulation runs (Constant nodes are read as values)
SUPPORTED_OPS = frozenset({*_OPS, "Constant"})
