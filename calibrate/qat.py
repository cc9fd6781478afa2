"""Quantization-aware fine-tuning of an ONNX Runtime QDQ graph (distillation, weights only).

Post-training quantization leaves each layer's rounding where the calibration put it, and
that costs accuracy however the ranges are chosen. Here the FP32 graph is run in torch with
the QDQ graph's own quantizers simulated (qdq_simulation.py: per-tensor uint8 activations
at the tensors ONNX Runtime quantizes, per-channel int8 weights on the scales it chose,
straight-through gradients), and the weights and biases are trained to
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

from edgeopt.calibrate.bias_correction import dq_axis
from edgeopt.calibrate.errors import CalibrationError
from edgeopt.calibrate.qdq_simulation import SUPPORTED_OPS, QdqSimulation

BATCH = 16
HELD_OUT = 0.1
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

    _check_inputs(fp32_model, samples)
    torch.manual_seed(seed)
    sim = QdqSimulation(fp32_model, qdq_model)
    order = np.random.default_rng(seed).permutation(len(samples))
    n_held = max(1, int(round(len(samples) * HELD_OUT)))
    train_idx = order[n_held:]
    data = _Distillation(sim, samples, order[:n_held])
    before = data.held_loss()
    if not learn_ranges:
        sim.log_scales.clear()
    trained = {**sim.params, **sim.log_scales}
    initial = {k: p.detach().clone() for k, p in trained.items()}
    _train(sim, data, train_idx, epochs, lr, seed, progress)
    after = data.held_loss()
    kept = after < before
    if not kept:
        with torch.no_grad():
            for k, p in trained.items():
                p.copy_(initial[k])
    inits = {i.name: i for i in qdq_model.graph.initializer}
    moved = _write_scales(sim, qdq_model, inits) if kept else 0
    _write_weights(sim, inits)
    return QatResult(epochs, len(train_idx), n_held, before, after if kept else before, kept,
                     sum(1 for _, _, k in sim.write_back if k in {"weight", "float"}),
                     data.kind, moved)


def _check_inputs(fp32_model, samples: Sequence[dict[str, np.ndarray]]) -> None:
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


class _Distillation:
    """The FP32 graph's outputs for every sample (the teacher), the loss that compares
    with them, and the held-out batches the result is judged on."""

    def __init__(self, sim: QdqSimulation, samples, held_idx: np.ndarray) -> None:
        import torch

        self.sim, self.samples = sim, samples
        with torch.no_grad():
            self.teacher = {i: [o.detach() for o in sim({k: torch.from_numpy(v) for k, v in
                                                         samples[i].items()}, quant=False)]
                            for i in range(len(samples))}
            self.kind = _loss_kind(self.teacher[0])
            self.held = [(len(idx), _batch(samples, idx), self.targets(idx))
                         for idx in np.array_split(held_idx, -(-len(held_idx) // BATCH))]
        self.n_held = len(held_idx)

    def targets(self, idx) -> list:
        import torch

        return [torch.cat([self.teacher[i][j] for i in idx]) for j in range(len(self.teacher[0]))]

    def loss(self, idx):
        """The simulated QDQ graph's loss on the samples ``idx`` (with gradients)."""
        return _loss(self.sim(_batch(self.samples, idx), quant=True), self.targets(idx),
                     self.kind)

    def held_loss(self) -> float:
        import torch

        with torch.no_grad():
            return sum(float(_loss(self.sim(batch, quant=True), t, self.kind)) * n
                       for n, batch, t in self.held) / self.n_held


def _train(sim: QdqSimulation, data: _Distillation, train_idx: np.ndarray, epochs: int,
           lr: float, seed: int, progress: Progress) -> None:
    """Adam on the weights (``lr``) and the log scales (``SCALE_LR``), cosine schedule,
    batches of ``BATCH`` in a seeded order per epoch."""
    import torch

    optimizer = torch.optim.Adam([{"params": list(sim.params.values()), "lr": lr},
                                  {"params": list(sim.log_scales.values()), "lr": SCALE_LR}])
    steps = epochs * ((len(train_idx) + BATCH - 1) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for epoch in range(epochs):
        shuffled = np.random.default_rng(seed + 1 + epoch).permutation(train_idx)
        for start in range(0, len(shuffled), BATCH):
            loss = data.loss(shuffled[start:start + BATCH])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress is not None:
            progress(epoch + 1, epochs)


def _write_weights(sim: QdqSimulation, inits: dict) -> None:
    """The trained weights and biases into the QDQ graph: as integers on their own scales
    where the graph quantizes them, as floats where it keeps them FP32."""
    from onnx import numpy_helper

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


def _write_scales(sim: QdqSimulation, qdq_model, inits: dict) -> int:
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
