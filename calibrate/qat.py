"""Quantization-aware fine-tuning of an ONNX Runtime QDQ graph (distillation, weights only).

Post-training quantization leaves each layer's rounding where the calibration put it; on
mobilenet-v2 that costs 13 points of top-1 agreement however the ranges are chosen. Here
the FP32 graph is run in torch with the QDQ graph's own quantizers simulated (per-tensor
uint8 activations at the tensors ONNX Runtime quantizes, per-channel int8 weights on the
scales it chose, straight-through gradients), and the weights and biases are trained to
match the FP32 model's outputs (KL of the softmax for logits, else mean squared error).
The trained values are written back as the QDQ graph's int8 weights and int32 biases:
the scales, the quantizer placement and so the integer kernels do not change, only the
stored integers, so the artifact runs exactly as fast as before.

The result is kept only when it lowers the loss on a held-out part of the data, so it is
never worse than the post-training graph there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeopt.calibrate.bias_correction import dequantized, dq_axis
from edgeopt.calibrate.errors import CalibrationError

BATCH = 16
HELD_OUT = 0.1
SUPPORTED_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Relu", "Clip", "Sigmoid", "Add", "Sub", "Mul", "Div",
    "ReduceMean", "GlobalAveragePool", "AveragePool", "MaxPool", "Flatten", "Reshape",
    "Concat", "Identity", "Constant", "BatchNormalization",
})

SCALED_PRODUCERS = frozenset({"input", "Conv", "Gemm", "Add", "Relu", "Clip"})
SCALE_SHARING_READERS = frozenset({"Reshape", "Flatten", "MaxPool", "AveragePool", "Concat",
                                   "Transpose", "Squeeze", "Unsqueeze", "Identity",
                                   "GlobalAveragePool", "ReduceMean", "Resize", "Split"})
SCALE_LR = 1e-3            # Adam step of the log step-size factors

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class QatResult:
    epochs: int
    samples: int                     # training samples (the held-out ones not counted)
    held_out: int
    loss_before: float               # on the held-out samples, the post-training graph
    loss_after: float                # the same after fine-tuning
    kept: bool                       # False: it did not help on the held-out samples
    layers: int                      # weight tensors trained
    loss: str                        # "kl" or "mse"
    scales: int = 0                  # activation scales that moved


def unsupported_ops(model) -> list[str]:
    """Op types of ``model`` the torch simulation cannot run (sorted)."""
    return sorted({n.op_type for n in model.graph.node} - SUPPORTED_OPS)


class _Simulation:
    """The FP32 ONNX graph in torch (``quant=False``: its own weights), or the QDQ graph
    simulated (``quant=True``: trainable weights, fake-quantized as the QDQ graph stores
    them, and its activation quantizers)."""

    def __init__(self, fp32_model, qdq_model) -> None:
        import onnx
        import torch
        from onnx import numpy_helper

        self.graph = fp32_model.graph
        # copies: torch refuses to share read-only arrays
        self.consts = {i.name: np.array(numpy_helper.to_array(i)) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = np.array(numpy_helper.to_array(node.attribute[0].t))
        # node wrappers are made afresh on each access: keep one list, with the attributes
        self.nodes = [(n, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
                      for n in self.graph.node]
        q_protos = {i.name: i for i in qdq_model.graph.initializer}
        q_inits = {name: numpy_helper.to_array(i) for name, i in q_protos.items()}
        producer = {o: n for n in qdq_model.graph.node for o in n.output}
        q_nodes = {n.name: n for n in qdq_model.graph.node if n.name}
        self.acts = {}
        for node in qdq_model.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] not in q_inits:
                scale = float(q_inits[node.input[1]])
                zero = int(q_inits[node.input[2]]) if len(node.input) > 2 else 0
                info = np.iinfo(q_inits[node.input[2]].dtype) if len(node.input) > 2 \
                    else np.iinfo(np.uint8)
                self.acts[node.input[0]] = (node.input[1], scale, zero, int(info.min),
                                            int(info.max))
        # activation scales that may move: tensors a Conv/Gemm/Add/activation (or the graph)
        # produces and no shape or pooling op reads (ONNX Runtime drops the Q/DQ around
        # those only when both sides share one scale)
        producers = {o: n.op_type for n in self.graph.node for o in n.output}
        readers: dict[str, set[str]] = {}
        for n in self.graph.node:
            for name in n.input:
                readers.setdefault(name, set()).add(n.op_type)
        self.log_scales: dict[str, torch.nn.Parameter] = {}
        for name, (scale_name, *_rest) in self.acts.items():
            if producers.get(name, "input") in SCALED_PRODUCERS and \
                    not readers.get(name, set()) & SCALE_SHARING_READERS:
                self.log_scales[scale_name] = torch.nn.Parameter(torch.zeros(()))
        # trainable weights/biases: quantized ones keep the QDQ graph's per-channel scales
        self.params: dict[str, torch.nn.Parameter] = {}
        self.weight_q: dict[str, tuple[torch.Tensor, int, int]] = {}
        self.write_back: list[tuple[str, object, str]] = []   # (param, DQ node or None, kind)
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
                        scale = q_inits[dq.input[1]].astype(np.float32)
                        shape = [1] * value.ndim
                        if scale.ndim:
                            shape[dq_axis(dq)] = -1
                        info = np.iinfo(q_inits[dq.input[0]].dtype)
                        qmin = -127 if info.min == -128 else int(info.min)
                        self.weight_q[name] = (torch.tensor(scale.reshape(shape)), qmin,
                                               int(info.max))
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
        import torch
        import torch.nn.functional as F

        op = node.op_type
        x = [self._input(env, n, quant) if n else None for n in node.input]
        if op == "Conv":
            pads = a.get("pads", [0, 0, 0, 0])
            half = len(pads) // 2
            inp = x[0]
            if list(pads[:half]) != list(pads[half:]):
                flat = [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])]
                inp, pads = F.pad(inp, flat), [0] * len(pads)
            y = F.conv2d(inp, self._weight(node.input[1], quant),
                         x[2] if len(x) > 2 else None, a.get("strides", [1, 1]),
                         tuple(pads[:half]), a.get("dilations", [1, 1]), a.get("group", 1))
        elif op == "Gemm":
            w = self._weight(node.input[1], quant)
            xa = x[0].T if a.get("transA", 0) else x[0]
            y = a.get("alpha", 1.0) * (xa @ (w.T if a.get("transB", 0) else w))
            if len(x) > 2 and x[2] is not None:
                y = y + a.get("beta", 1.0) * x[2]
        elif op == "MatMul":
            y = x[0] @ x[1]
        elif op == "Relu":
            y = torch.relu(x[0])
        elif op == "Clip":
            lo = float(x[1]) if len(x) > 1 and x[1] is not None else a.get("min", -np.inf)
            hi = float(x[2]) if len(x) > 2 and x[2] is not None else a.get("max", np.inf)
            y = torch.clamp(x[0], lo, hi)
        elif op == "Sigmoid":
            y = torch.sigmoid(x[0])
        elif op in {"Add", "Sub", "Mul", "Div"}:
            fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
            y = fn(x[0], x[1])
        elif op == "ReduceMean":
            axes = a.get("axes") if len(x) < 2 or x[1] is None else [int(v) for v in x[1]]
            y = x[0].mean(dim=tuple(axes) if axes else None, keepdim=bool(a.get("keepdims", 1)))
        elif op == "GlobalAveragePool":
            y = x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)
        elif op in {"AveragePool", "MaxPool"}:
            pads = a.get("pads", [0, 0, 0, 0])
            args = (x[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]),
                    tuple(pads[:len(pads) // 2]))
            y = F.max_pool2d(*args, ceil_mode=bool(a.get("ceil_mode", 0))) if op == "MaxPool" \
                else F.avg_pool2d(*args, ceil_mode=bool(a.get("ceil_mode", 0)),
                                  count_include_pad=bool(a.get("count_include_pad", 0)))
        elif op == "Flatten":
            axis = a.get("axis", 1)
            y = x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)
        elif op == "Reshape":
            shape = [int(v) for v in x[1]]
            shape[0] = x[0].shape[0] if shape[0] in (0, 1) else shape[0]   # the batch axis
            y = x[0].reshape(shape)
        elif op == "Concat":
            y = torch.cat(x, dim=a["axis"])
        elif op == "Identity":
            y = x[0]
        elif op == "BatchNormalization":
            shape = (1, -1) + (1,) * (x[0].dim() - 2)
            scale = x[1] / torch.sqrt(x[4] + a.get("epsilon", 1e-5))
            y = (x[0] - x[3].reshape(shape)) * scale.reshape(shape) + x[2].reshape(shape)
        else:                                                      # unsupported_ops() guards
            msg = f"quantization-aware fine-tuning cannot simulate ONNX op {op}"
            raise CalibrationError(msg)
        return [y]


def _batch(samples: Sequence[dict[str, np.ndarray]], idx) -> dict:
    import torch

    return {k: torch.from_numpy(np.concatenate([samples[i][k] for i in idx])) for k in samples[0]}


def _loss_kind(outputs) -> str:
    return "kl" if all(o.dim() == 2 and o.shape[1] > 1 for o in outputs) else "mse"


def _loss(student, teacher, kind: str):
    import torch
    import torch.nn.functional as F

    total = 0.0
    for s, t in zip(student, teacher, strict=True):
        if kind == "kl":
            total = total + F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1),
                                     log_target=True, reduction="batchmean")
        else:
            total = total + ((s - t) ** 2).mean() / torch.clamp((t ** 2).mean(), min=1e-12)
    return total


def finetune_qdq(fp32_model, qdq_model, samples: Sequence[dict[str, np.ndarray]], epochs: int,
                 lr: float = 1e-5, progress: Progress = None, seed: int = 0,
                 learn_ranges: bool = True) -> QatResult:
    """Train the int8 weights and int32 biases of ``qdq_model`` (made by quantizing
    ``fp32_model``), and with ``learn_ranges`` the activation scales that can move, to
    match ``fp32_model``'s outputs on ``samples``; in place."""
    import torch
    from onnx import numpy_helper

    missing = unsupported_ops(fp32_model)
    if missing:
        msg = (f"quantization-aware fine-tuning cannot run op(s) {', '.join(missing)} "
               f"(it runs CNN graphs: {', '.join(sorted(SUPPORTED_OPS))})")
        raise CalibrationError(msg)
    if len(samples) < 4:
        msg = f"quantization-aware fine-tuning needs at least 4 samples, got {len(samples)}"
        raise CalibrationError(msg)
    bad = [k for k, v in samples[0].items() if v.ndim == 0 or v.shape[0] != 1]
    if bad:
        msg = (f"quantization-aware fine-tuning needs one sample per input (batch axis 1); "
               f"input '{bad[0]}' has shape {samples[0][bad[0]].shape}")
        raise CalibrationError(msg)
    torch.manual_seed(seed)
    sim = _Simulation(fp32_model, qdq_model)
    order = np.random.default_rng(seed).permutation(len(samples))
    n_held = max(1, int(round(len(samples) * HELD_OUT)))
    train_idx = order[n_held:]
    with torch.no_grad():
        teacher = {i: [o.detach() for o in sim({k: torch.from_numpy(v) for k, v in
                                                samples[i].items()}, quant=False)]
                   for i in range(len(samples))}
        kind = _loss_kind(teacher[0])

        def targets(idx) -> list:
            return [torch.cat([teacher[i][j] for i in idx]) for j in range(len(teacher[0]))]

        held = [(len(idx), _batch(samples, idx), targets(idx))
                for idx in np.array_split(order[:n_held], -(-n_held // BATCH))]

        def held_loss() -> float:
            return sum(float(_loss(sim(batch, quant=True), t, kind)) * n
                       for n, batch, t in held) / n_held

        before = held_loss()
    if not learn_ranges:
        sim.log_scales.clear()
    trained = {**sim.params, **sim.log_scales}
    initial = {k: p.detach().clone() for k, p in trained.items()}
    optimizer = torch.optim.Adam([{"params": list(sim.params.values()), "lr": lr},
                                  {"params": list(sim.log_scales.values()), "lr": SCALE_LR}])
    steps = epochs * ((len(train_idx) + BATCH - 1) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for epoch in range(epochs):
        shuffled = np.random.default_rng(seed + 1 + epoch).permutation(train_idx)
        for start in range(0, len(shuffled), BATCH):
            idx = shuffled[start:start + BATCH]
            loss = _loss(sim(_batch(samples, idx), quant=True), targets(idx), kind)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    with torch.no_grad():
        after = held_loss()
    kept = after < before
    if not kept:
        with torch.no_grad():
            for k, p in trained.items():
                p.copy_(initial[k])
    inits = {i.name: i for i in qdq_model.graph.initializer}
    moved = _write_scales(sim, qdq_model, inits) if kept else 0
    for name, dq, kind_of in sim.write_back:
        value = sim.params[name].detach().numpy().astype(np.float64)
        if dq is None:
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            continue
        stored = inits[dq.input[0]]
        dtype = numpy_helper.to_array(stored).dtype
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        if scale.ndim:
            shape = [1] * value.ndim
            shape[dq_axis(dq)] = -1
            scale = scale.reshape(shape)
        if kind_of == "weight":
            _, qmin, qmax = sim.weight_q[name]
        else:
            info = np.iinfo(dtype)
            qmin, qmax = int(info.min), int(info.max)
        zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64).reshape(scale.shape)
                if len(dq.input) > 2 and dq.input[2] else 0.0)
        q = np.clip(np.round(value / scale + zero), qmin, qmax).astype(dtype)
        stored.CopyFrom(numpy_helper.from_array(q, dq.input[0]))
    return QatResult(epochs, len(train_idx), n_held, before, after if kept else before, kept,
                     sum(1 for _, _, k in sim.write_back if k in {"weight", "float"}), kind,
                     moved)


def _write_scales(sim: _Simulation, qdq_model, inits: dict) -> int:
    """The learned activation scales into the QDQ graph, and the int32 bias scales of the
    layers reading them (input scale x weight scale, as ONNX Runtime's quantizer sets
    them); the biases themselves are written after. Returns how many scales moved."""
    import torch
    from onnx import numpy_helper

    new = {name: np.float32(float(numpy_helper.to_array(inits[name]))
                            * float(torch.exp(t.detach())))
           for name, t in sim.log_scales.items()}
    for name, value in new.items():
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    for node in qdq_model.graph.node:
        if node.op_type not in {"Conv", "Gemm"} or len(node.input) < 3:
            continue
        x_dq, w_dq, b_dq = (producer.get(n) for n in node.input[:3])
        if not all(d is not None and d.op_type == "DequantizeLinear" for d in (x_dq, w_dq, b_dq)) \
                or x_dq.input[1] not in new:
            continue
        w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float32)
        bias_scale = (new[x_dq.input[1]] * w_scale).astype(np.float32)
        inits[b_dq.input[1]].CopyFrom(numpy_helper.from_array(bias_scale, b_dq.input[1]))
    return len(new)
