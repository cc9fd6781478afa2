"""Activation statistics in bounded memory: exact min/max plus a reservoir per tensor.

Each calibration sample contributes an equal share of each tensor's reservoir, so memory
is fixed by the reservoir size, never by the number of samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_RESERVOIR = 1 << 16


@dataclass
class TensorStats:
    name: str
    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0                                  # values seen
    reservoir: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))

    def sample(self) -> np.ndarray:
        return self.reservoir


def _float_tensors(model) -> list[str]:
    """Outputs of every node that the quantizer may wrap, plus the graph's float inputs."""
    import onnx

    float_types = {onnx.TensorProto.FLOAT}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    for node in model.graph.node:
        if node.op_type in {"Constant", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}:
            continue
        names += [o for o in node.output if o and types.get(o) in float_types]
    return list(dict.fromkeys(names))


def collect_stats(onnx_path: Path, samples: Sequence[dict[str, np.ndarray]],
                  reservoir: int = DEFAULT_RESERVOIR, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, TensorStats]:
    """Run the FP32 model over ``samples`` and gather per-tensor statistics."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    names = _float_tensors(model)
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    per_sample = max(1, reservoir // max(len(samples), 1))
    stats = {n: TensorStats(n) for n in names}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    input_names = {i.name for i in session.get_inputs()}
    for i, sample in enumerate(samples):
        feeds = {k: v for k, v in sample.items() if k in input_names}
        values = session.run(names, feeds)
        for name, value in zip(names, values, strict=True):
            flat = np.asarray(value, dtype=np.float32).ravel()
            s = stats[name]
            if flat.size:
                s.min = min(s.min, float(flat.min()))
                s.max = max(s.max, float(flat.max()))
                s.count += flat.size
                take = rng.choice(flat.size, size=min(per_sample, flat.size), replace=False)
                parts[name].append(flat[take])
        if progress is not None:
            progress(i + 1, len(samples))
    for name, s in stats.items():
        if parts[name]:
            s.reservoir = np.concatenate(parts[name])[:reservoir]
    return stats
