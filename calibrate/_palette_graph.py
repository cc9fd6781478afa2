"""The ONNX side of palettization: which initializers are weights (with their output-channel
axis), and the decoder nodes that compute them in a copy of the graph.

The encoding is described in :mod:`edgeopt.calibrate.palettize`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_WEIGHT_INPUT = {"Conv": 1, "MatMul": 1, "Gemm": 1, "Gather": 0}


@dataclass(frozen=True)
class Target:
    """One weight initializer: its values as [channels, rest] (output channels first)."""

    name: str
    shape: tuple[int, ...]
    ops: tuple[str, ...]
    channel_axis: int          # 0, or the last axis (stored transposed, decoded by Transpose)
    matrix: np.ndarray         # [C, M]: output channels first
    codes: bool                # int8/uint8 codes of a weight DequantizeLinear
    dq_scale: np.ndarray | None = None    # [C, 1] per output channel, for SQNR of codes
    dq_zero: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return self.matrix.shape[0]

    @property
    def original_bytes(self) -> int:
        return self.matrix.size * self.matrix.dtype.itemsize

    def float_values(self, matrix: np.ndarray) -> np.ndarray:
        """What the runtime multiplies with: the codes dequantized, or the floats."""
        if not self.codes:
            return matrix.astype(np.float64)
        return (matrix.astype(np.float64) - self.dq_zero) * self.dq_scale


@dataclass(frozen=True)
class Palette:
    lut: np.ndarray            # [G, 2^bits] float16 (or int8/uint8 codes)
    indices: np.ndarray        # [G, group_size * M] uint8 values < 2^bits
    sqnr_db: float
    bytes: int
    scale: np.ndarray | None = None    # [C] float16 per output channel (shared tables only)


# ---------------------------------------------------------------- finding the weights


def _channel_axis(node, rank: int) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and rank == 2:
        return 1
    if node.op_type == "Gather" and rank == 2:
        return 1 if next((a.i for a in node.attribute if a.name == "axis"), 0) == 0 else None
    return None


def weight_targets(model) -> tuple[list[Target], list[dict]]:
    """Weights that could be palettized, and the skipped ones with the reason."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    targets, skipped = [], []
    for name, init in inits.items():
        uses = consumers.get(name, [])
        if not uses or len(init.dims) < 2:
            continue
        readers, dqs = [], []
        for node, index in uses:
            if node.op_type == "DequantizeLinear" and index == 0:
                dqs.append(node)
                readers += consumers.get(node.output[0], [])
            else:
                readers.append((node, index))
        if not readers or not all(_WEIGHT_INPUT.get(n.op_type) == i for n, i in readers):
            continue
        rank = len(init.dims)
        axes = {_channel_axis(n, rank) for n, _ in readers}
        ops = tuple(sorted({n.op_type for n, _ in readers}))
        if len(axes) != 1 or None in axes:
            skipped.append({"name": name, "ops": ops, "reason": "its readers disagree on the "
                            "output-channel axis, or it is not a 2-D MatMul/embedding weight"})
            continue
        axis = axes.pop()
        array = numpy_helper.to_array(init)
        codes = bool(dqs)
        if codes and (array.dtype not in (np.int8, np.uint8) or len(dqs) != 1):
            skipped.append({"name": name, "ops": ops, "reason": f"{array.dtype} codes"})
            continue
        if not codes and array.dtype != np.float32:
            skipped.append({"name": name, "ops": ops, "reason": f"{array.dtype} weights"})
            continue
        matrix = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        scale = zero = None
        if codes:
            found = _dq_params(dqs[0], inits, array.shape, axis)
            if found is None:
                skipped.append({"name": name, "ops": ops,
                                "reason": "blockwise or non-constant DequantizeLinear"})
                continue
            scale, zero = found
        targets.append(Target(name, tuple(array.shape), ops, axis, matrix, codes, scale, zero))
    return targets, skipped


def _dq_params(dq, inits, shape, axis):
    """The DequantizeLinear's scale and zero point as [C, 1] along the output channels."""
    from onnx import numpy_helper

    if any(a.name == "block_size" and a.i for a in dq.attribute) or dq.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2] in inits else np.zeros_like(scale))
    channels = shape[axis]
    if scale.size == 1:
        return np.full((channels, 1), scale.item()), np.full((channels, 1), zero.item())
    dq_axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % len(shape)
    if dq_axis != axis or scale.size != channels:
        return None
    return scale.reshape(-1, 1), zero.reshape(-1, 1)


# ---------------------------------------------------------------- graph rewriting


def decode_tail(target: Target, source: str, nodes: list, inits: list,
                 scale: np.ndarray | None = None) -> None:
    """Reshape ``source`` [G, group*M] to [C, ...], times the per-channel ``scale`` if any,
    Transposed back for last-axis weights, into the weight's name."""
    from onnx import TensorProto, helper, numpy_helper

    name = target.name
    moved = list(target.shape)
    moved.insert(0, moved.pop(target.channel_axis))
    inits.append(numpy_helper.from_array(np.array(moved, np.int64), f"{name}.palette_shape"))
    steps = [("Reshape", [f"{name}.palette_shape"], {})]
    if scale is not None:
        column = scale.reshape(-1, *[1] * (len(moved) - 1))
        inits.append(numpy_helper.from_array(column, f"{name}.palette_scale"))
        nodes.append(helper.make_node("Cast", [f"{name}.palette_scale"],
                                      [f"{name}.palette_scale32"], to=TensorProto.FLOAT,
                                      name=f"{name}/palette/CastScale"))
        steps.append(("Mul", [f"{name}.palette_scale32"], {}))
    if target.channel_axis != 0:
        perm = list(range(1, len(moved)))
        perm.insert(target.channel_axis, 0)
        steps.append(("Transpose", [], {"perm": perm}))
    for i, (op, extra, attrs) in enumerate(steps):
        result = name if i == len(steps) - 1 else f"{name}.palette_{op.lower()}"
        nodes.append(helper.make_node(op, [source, *extra], [result], name=f"{name}/palette/{op}",
                                      **attrs))
        source = result


def palette_nodes(target: Target, palette: Palette, bits: int) -> tuple[list, list]:
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    name = target.name
    index_type = ml_dtypes.uint4 if bits <= 4 else np.uint8
    inits = [numpy_helper.from_array(palette.indices.astype(index_type), f"{name}.palette_idx"),
             numpy_helper.from_array(palette.lut, f"{name}.palette_lut")]
    gathered = f"{name}.palette_gathered"
    nodes = [
        helper.make_node("Cast", [f"{name}.palette_idx"], [f"{name}.palette_idx64"],
                         to=TensorProto.INT64, name=f"{name}/palette/CastIndices"),
        helper.make_node("GatherElements", [f"{name}.palette_lut", f"{name}.palette_idx64"],
                         [gathered], axis=1, name=f"{name}/palette/GatherElements"),
    ]
    if not target.codes:
        nodes.append(helper.make_node("Cast", [gathered], [f"{name}.palette_float"],
                                      to=TensorProto.FLOAT, name=f"{name}/palette/CastFloat"))
        gathered = f"{name}.palette_float"
    decode_tail(target, gathered, nodes, inits, palette.scale)
    return nodes, inits


def rewrite(model, replaced: dict[str, tuple[list, list]], opset: int | None):
    """A copy of ``model`` whose listed initializers are computed by the given nodes."""
    out = copy.deepcopy(model)
    graph = out.graph
    keep = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for name in [i.name for i in graph.input if i.name in replaced]:
        graph.input.remove(next(i for i in graph.input if i.name == name))
    new_nodes = [n for nodes, _ in replaced.values() for n in nodes]
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + old_nodes)      # decoders first: topological order holds
    for _, inits in replaced.values():
        graph.initializer.extend(inits)
    if opset is not None:
        for entry in out.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = max(entry.version, opset)
        out.ir_version = max(out.ir_version, 10)
    return out


def save_atomic(proto, out: Path) -> None:
    import onnx

    out = Path(out)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
