"""K-means weight palettization of ONNX models, for mobile bundles (smaller download, not RAM).

Each weight tensor feeding a Conv / MatMul / Gemm weight input (or a Gather embedding table)
is split into groups of ``group_size`` output channels; each group gets a lookup table (LUT)
of 2^bits centroids from weighted 1-D k-means of its values, and every weight becomes a
bits-bit index into its group's table. In the graph:

    indices (uint4 for bits <= 4, packed two per byte; uint8 for 5-8 bits), shape [G, M]
      -> Cast(int64) -> GatherElements(LUT fp16 [G, 2^bits], axis=1) -> Cast(float)
      -> Reshape (-> Transpose for [K, N] MatMul weights) -> the original weight's name

so every consumer is untouched. ONNX Runtime and OpenVINO constant-fold the chain at load.
On a QDQ INT8 graph the int8 weight codes (the initializers of weight ``DequantizeLinear``s)
are clustered instead: the LUT holds int8 codes and the chain (without the float Cast) feeds
the existing ``DequantizeLinear``, which ONNX Runtime still fuses into integer kernels.

Output channels are axis 0 of Conv weights and of Gemm ``B`` with ``transB=1``, the last
axis of MatMul / Gemm (``transB=0``) weights and of embedding tables (a lookup is a one-hot
MatMul). A weight is palettized only when it pays (``_PAY_RULE``).

``uniform_blockwise_onnx`` is the baseline at the same granularity: uniform 4-bit weights,
one scale and zero point per group of output channels, decoded by an opset-21 blockwise
``DequantizeLinear``.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.calibrate.errors import CalibrationError
from edgeopt.convert.errors import first_line

__all__ = ["PalettizeError", "assign", "kmeans_1d", "palettize_onnx", "uniform_blockwise_onnx",
           "uniform_grid"]

_WEIGHT_INPUT = {"Conv": 1, "MatMul": 1, "Gemm": 1, "Gather": 0}
_PAY_RULE = ("at least 16 x 2^bits elements, rank >= 2 (never a bias), and the tables no "
             "larger than the packed indices")
_UINT4_OPSET = 21


class PalettizeError(CalibrationError):
    """Palettization cannot run as asked: bad bits or group size, or nothing to palettize."""


@dataclass(frozen=True)
class _Target:
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


# ---------------------------------------------------------------- k-means maths (numpy only)


def _batched_searchsorted(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row g: how many of the sorted ``x[g]`` are < ``b[g, j]``."""
    g, m = x.shape
    lo = x[:, :1]
    span = np.maximum(x[:, -1:] - lo, 1e-30)
    offset = 4.0 * np.arange(g)[:, None]
    xs = (x - lo) / span + offset
    bs = np.clip((b - lo) / span, -1.0, 2.0) + offset
    return np.searchsorted(xs.ravel(), bs.ravel(), side="left").reshape(b.shape) - m * np.arange(g)[:, None]


def _cluster_sums(prefix: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.take_along_axis(prefix, edges[:, 1:], 1) - np.take_along_axis(prefix, edges[:, :-1], 1)


def _lloyd(x, cw, cwx, cwx2, c, iterations):
    """Lloyd iterations on sorted rows with weight prefix sums; returns centroids, cost."""
    g, m = x.shape
    ends = (np.zeros((g, 1), np.int64), np.full((g, 1), m, np.int64))
    for step in range(iterations + 1):
        c = np.sort(c, axis=1)
        edges = np.concatenate([ends[0], _batched_searchsorted(x, (c[:, 1:] + c[:, :-1]) / 2), ends[1]], 1)
        sw, swx = _cluster_sums(cw, edges), _cluster_sums(cwx, edges)
        if step == iterations:
            break
        c = np.where(sw > 0, swx / np.where(sw > 0, sw, 1.0), c)
    cost = (_cluster_sums(cwx2, edges) - 2 * c * swx + c * c * sw).sum(1)
    return c, cost


def kmeans_1d(values: np.ndarray, k: int, importance: np.ndarray | None = None,
              iterations: int = 30) -> np.ndarray:
    """Weighted 1-D k-means of each row of ``values`` ([G, M]): the sorted centroids [G, k].

    Lloyd iterations from three starts (weighted quantiles, the min-max uniform grid, the
    symmetric abs-max grid), keeping each row's best. Lloyd never raises the cost, so the
    result is never worse in weighted MSE than either uniform grid of the same size.
    Deterministic (no random start).
    """
    x = np.asarray(values, dtype=np.float64)
    w = np.ones_like(x) if importance is None else np.asarray(importance, dtype=np.float64)
    order = np.argsort(x, axis=1, kind="stable")
    x = np.take_along_axis(x, order, 1)
    w = np.take_along_axis(w, order, 1) + 1e-12 * max(float(w.mean()), 1e-30)
    zero = np.zeros((len(x), 1))
    cw, cwx, cwx2 = (np.concatenate([zero, np.cumsum(v, axis=1)], 1) for v in (w, w * x, w * x * x))
    lo, hi = x[:, :1], x[:, -1:]
    steps = np.arange(k) / max(k - 1, 1)
    absmax = np.maximum(np.abs(lo), np.abs(hi))
    half = max(k // 2 - 1, 1)
    quantile_pos = np.minimum(_batched_searchsorted(cw[:, 1:], cw[:, -1:] * (np.arange(k) + 0.5) / k),
                              x.shape[1] - 1)
    starts = [np.take_along_axis(x, quantile_pos, 1), lo + (hi - lo) * steps,
              absmax / half * (np.arange(k) - k // 2)]
    best_c, best_cost = None, None
    for start in starts:
        c, cost = _lloyd(x, cw, cwx, cwx2, start, iterations)
        if best_c is None:
            best_c, best_cost = c, cost
        else:
            better = cost < best_cost
            best_c[better], best_cost[better] = c[better], cost[better]
    return best_c


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for every value (rows matched), as uint8."""
    out = np.empty(values.shape, np.uint8)
    rows = max(1, (1 << 22) // max(values.shape[1] * centroids.shape[1], 1))
    for start in range(0, len(values), rows):
        v, c = values[start:start + rows], centroids[start:start + rows]
        out[start:start + rows] = np.abs(v[:, :, None] - c[:, None, :]).argmin(2)
    return out


def uniform_grid(values: np.ndarray, k: int) -> np.ndarray:
    """The min-max uniform grid of ``k`` levels per row (the baseline k-means must beat)."""
    lo, hi = values.min(1, keepdims=True), values.max(1, keepdims=True)
    return lo + (hi - lo) * (np.arange(k) / max(k - 1, 1))


def _sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref - got) ** 2))
    return float("inf") if noise == 0 else round(10 * np.log10(max(float(np.sum(ref * ref)), 1e-30) / noise), 2)


# ---------------------------------------------------------------- finding the weights


def _fail(message: str, cause: BaseException | None = None) -> PalettizeError:
    error = PalettizeError(message)
    error.__cause__ = cause
    return error


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


def _targets(model) -> tuple[list[_Target], list[dict]]:
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
        targets.append(_Target(name, tuple(array.shape), ops, axis, matrix, codes, scale, zero))
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


# ---------------------------------------------------------------- one weight, one setting


@dataclass(frozen=True)
class _Palette:
    lut: np.ndarray            # [G, 2^bits] float16 (or int8/uint8 codes)
    indices: np.ndarray        # [G, group_size * M] uint8 values < 2^bits
    sqnr_db: float
    bytes: int
    scale: np.ndarray | None = None    # [C] float16 per output channel (shared tables only)


# Layers whose output channels have fewer weights than this stay as they are: in
# mobilenet-v2 those are the stem and the first pointwise/depthwise layers, 2% of the
# weights. Palettizing them at 4 bits (8 channels a table) saved 4% of the file and cost
# 0.43 -> 0.16 top-1 agreement on the evaluation crops.
MIN_FAN_IN = 64


def _index_bytes(count: int, bits: int) -> int:
    return (count + 1) // 2 if bits <= 4 else count


def _scaled(target: _Target, group_size: int) -> bool:
    """Float tables shared by several channels hold the weights divided by a per-channel
    scale (BatchNorm-folded channels differ in range by orders of magnitude)."""
    return group_size > 1 and not target.codes


def _pays(target: _Target, bits: int, group_size: int) -> str | None:
    """None if palettizing pays, else why not."""
    k = 1 << bits
    size = target.matrix.size
    lut_bytes = (target.channels // group_size) * k * (1 if target.codes else 2)
    lut_bytes += 2 * target.channels if _scaled(target, group_size) else 0
    if size < 16 * k:
        return f"{size} elements < 16 x 2^{bits}"
    if size // target.channels < MIN_FAN_IN:
        return (f"{size // target.channels} weights per output channel < {MIN_FAN_IN} "
                "(small early layers: little to save, much to lose)")
    if lut_bytes > _index_bytes(size, bits):
        return f"tables ({lut_bytes} B) larger than the packed indices at group size {group_size}"
    if lut_bytes + _index_bytes(size, bits) >= target.original_bytes:
        return f"{bits}-bit indices and tables are no smaller than the weights"
    return None


def _palette(target: _Target, bits: int, group_size: int, importance: str) -> _Palette:
    k = 1 << bits
    matrix, scale, channel_weight = target.matrix, None, target.dq_scale
    if _scaled(target, group_size):
        absmax = np.abs(matrix).max(1).astype(np.float16)
        scale = np.where(absmax > 0, absmax, np.float16(1))
        matrix = matrix / scale.astype(np.float32)[:, None]
        channel_weight = scale.astype(np.float64)[:, None]
    groups = matrix.reshape(target.channels // group_size, -1)
    values = groups.astype(np.float64)
    weight = None
    if importance == "magnitude":
        weight = target.float_values(target.matrix).reshape(groups.shape) ** 2
    elif channel_weight is not None:     # an error in a channel costs its scale squared
        weight = np.broadcast_to(channel_weight ** 2, matrix.shape).reshape(groups.shape)
    centroids = kmeans_1d(values, k, weight)
    if target.codes:
        info = np.iinfo(target.matrix.dtype)
        lut = np.clip(np.round(centroids), info.min, info.max).astype(target.matrix.dtype)
    else:
        lut = centroids.astype(np.float16)
    indices = assign(values, lut.astype(np.float64))
    decoded = np.take_along_axis(lut, indices.astype(np.int64), 1).reshape(target.matrix.shape)
    if scale is not None:                 # as the graph computes it: float32 multiply
        decoded = decoded.astype(np.float32) * scale.astype(np.float32)[:, None]
    sqnr = _sqnr_db(target.float_values(target.matrix), target.float_values(decoded))
    size = lut.nbytes + _index_bytes(indices.size, bits) + (0 if scale is None else scale.nbytes)
    return _Palette(lut, indices, sqnr, size, scale)


# ---------------------------------------------------------------- graph rewriting


def _decode_tail(target: _Target, source: str, nodes: list, inits: list,
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


def _palette_nodes(target: _Target, palette: _Palette, bits: int) -> tuple[list, list]:
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
    _decode_tail(target, gathered, nodes, inits, palette.scale)
    return nodes, inits


def _rewrite(model, replaced: dict[str, tuple[list, list]], opset: int | None):
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


def _load(model: Path, bits: int):
    import onnx

    path = Path(model)
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError...
        msg = f"cannot read ONNX model {path.name}: {first_line(e)[:200]}"
        raise _fail(msg, e) from e
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if bits <= 4 and opset < _UINT4_OPSET:
        from onnx import version_converter

        try:   # packed uint4 needs Cast-21; op semantics that changed meanwhile are converted
            proto = version_converter.convert_version(proto, _UINT4_OPSET)
        except Exception as e:
            msg = (f"cannot convert {path.name} from opset {opset} to {_UINT4_OPSET} for uint4 "
                   f"indices: {first_line(e)[:200]}; use bits 5-8 (uint8 indices)")
            raise _fail(msg, e) from e
    return proto


def _save_atomic(proto, out: Path) -> None:
    import onnx

    out = Path(out)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _deflated(path: Path) -> int:
    from edgeopt.calibrate.pruning import deflated_size

    return deflated_size([path])


def _check_args(model: Path, out: Path, bits: int, group_size: int | None,
                max_accuracy_drop: float | None, evaluate) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        msg = f"bits must be an integer from 2 to 8, got {bits!r}"
        raise PalettizeError(msg)
    if group_size is None:
        group_size = 1
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        msg = f"group size must be a positive number of output channels, got {group_size!r}"
        raise PalettizeError(msg)
    if max_accuracy_drop is not None and (evaluate is None or not max_accuracy_drop >= 0):
        msg = ("max_accuracy_drop needs an evaluate callable and a drop >= 0, got "
               f"{max_accuracy_drop!r}" + ("" if evaluate is not None else " without evaluate"))
        raise PalettizeError(msg)
    if not Path(model).is_file():
        msg = f"model {model} does not exist"
        raise PalettizeError(msg)
    if Path(out).resolve() == Path(model).resolve():
        msg = f"output {out} is the input model; choose another path"
        raise PalettizeError(msg)
    if not Path(out).parent.is_dir():
        msg = f"output folder {Path(out).parent} does not exist"
        raise PalettizeError(msg)
    return group_size


def _select(targets: list[_Target], bits: int, group_size: int, model: Path) -> tuple[list, dict]:
    """Targets that pay at ``bits`` and the reasons of the others; a group size that does not
    divide a target's channels is the user's mistake."""
    chosen, kept = [], {}
    for t in targets:
        if t.matrix.size >= 16 << bits and t.channels % group_size:
            from math import gcd

            common = 0
            for other in targets:
                common = gcd(common, other.channels)
            msg = (f"group size {group_size} does not divide the {t.channels} output channels "
                   f"of '{t.name}' in {Path(model).name}; use a divisor of {common}")
            raise PalettizeError(msg)
        reason = _pays(t, bits, group_size)
        if reason is None:
            chosen.append(t)
        else:
            kept[t.name] = reason
    if not chosen:
        detail = "; ".join(f"{n}: {r}" for n, r in list(kept.items())[:3]) or "no Conv/MatMul/Gemm weights"
        msg = (f"nothing to palettize in {Path(model).name} at {bits} bits, group size "
               f"{group_size} ({detail})")
        raise PalettizeError(msg)
    return chosen, kept


def _layer_row(t: _Target, bits, group_size: int, palette: _Palette | None, reason) -> dict:
    return {"name": t.name, "ops": list(t.ops), "shape": list(t.shape), "bits": bits,
            "groups": t.channels // group_size if palette is not None else None,
            "original_bytes": t.original_bytes,
            "palettized_bytes": palette.bytes if palette is not None else t.original_bytes,
            "weight_sqnr_db": palette.sqnr_db if palette is not None else None,
            "kept_unpalettized": reason}


# ---------------------------------------------------------------- public API


def palettize_onnx(model: Path, out: Path, bits: int, group_size: int | None = None, *,
                   evaluate: Callable[[Path], float] | None = None,
                   max_accuracy_drop: float | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   importance: str = "uniform") -> dict:
    """Palettize the Conv/MatMul/Gemm weights (and embedding tables) of an ONNX model.

    Args:
        model: FP32 ONNX model, or a QDQ INT8 one (its int8 weight codes are clustered).
        out: where to write the palettized model (atomically; never the input).
        bits: 2-8; 2^bits centroids per table. <= 4 packs indices as uint4, else uint8.
        group_size: output channels sharing one table (default 1: one per channel).
        evaluate: ``evaluate(model_path) -> float``, higher is better.
        max_accuracy_drop: allowed drop of ``evaluate``'s value; when broken, the layers
            with the lowest weight SQNR are tried first at more bits, then left alone.
        progress: ``progress(done, total)`` over layers, then over evaluations.
        importance: k-means sample weights, ``"uniform"`` (weight MSE, the default: it
            measured better) or ``"magnitude"`` (squared weight).

    Returns:
        A JSON-able report: settings, per-layer rows, sizes before/after, metrics.

    Raises:
        PalettizeError: bad arguments, an unreadable model, or nothing worth palettizing.
    """
    group_size = _check_args(model, out, bits, group_size, max_accuracy_drop, evaluate)
    if importance not in ("uniform", "magnitude"):
        msg = f"importance must be 'uniform' or 'magnitude', got {importance!r}"
        raise PalettizeError(msg)
    proto = _load(model, bits)
    targets, skipped = _targets(proto)
    chosen, kept = _select(targets, bits, group_size, model)
    cache: dict[tuple[str, int], _Palette] = {}

    def palette(t: _Target, b: int) -> _Palette:
        if (t.name, b) not in cache:
            cache[t.name, b] = _palette(t, b, group_size, importance)
        return cache[t.name, b]

    for i, t in enumerate(chosen):
        palette(t, bits)
        if progress is not None:
            progress(i + 1, len(chosen))
    plan: dict[str, int | None] = {t.name: bits for t in chosen}
    reasons: dict[str, str] = dict(kept)

    def build(p: dict[str, int | None]):
        replaced = {t.name: _palette_nodes(t, palette(t, p[t.name]), p[t.name])
                    for t in chosen if p[t.name] is not None}
        return _rewrite(proto, replaced, _UINT4_OPSET if any(
            b is not None and b <= 4 for b in p.values()) else None)

    report_metric = {}
    if evaluate is not None:
        plan, trials, report_metric = _fit_budget(model, chosen, plan, bits, group_size, build,
                                                  palette, evaluate, max_accuracy_drop, progress)
        reasons.update(trials)
    final = build(plan)
    try:
        _save_atomic(final, out)
    except Exception as e:
        msg = f"cannot write {out}: {first_line(e)[:200]}"
        raise _fail(msg, e) from e
    layers = []
    for t in targets:
        b = plan.get(t.name)
        layers.append(_layer_row(t, b, group_size, palette(t, b) if b is not None else None,
                                 reasons.get(t.name)))
    encoding = ("per group of output channels a LUT of 2^bits centroids ("
                + ("int8 codes feeding the existing weight DequantizeLinear" if any(
                    t.codes for t in chosen) else "float16")
                + ") and indices (uint4 packed two per byte for <= 4 bits, uint8 above), decoded "
                "by Cast(int64) -> GatherElements(axis=1) -> [Cast(float)] -> Reshape "
                "[-> Mul(fp16 per-channel scale, when channels share a float table)] "
                "[-> Transpose] into the original weight name")
    return {
        "bits": bits, "group_size": group_size, "importance": importance,
        "encoding": encoding, "rule": _PAY_RULE, "layers": layers,
        "skipped": skipped,
        "palettized_layers": sum(b is not None for b in plan.values()),
        "size_bytes": {"before": Path(model).stat().st_size, "after": Path(out).stat().st_size},
        "size_zipped_bytes": {"before": _deflated(Path(model)), "after": _deflated(Path(out))},
        **report_metric,
    }


def _fit_budget(model, chosen, plan, bits, group_size, build, palette, evaluate,
                max_drop, progress):
    """Most sensitive layers first (lowest weight SQNR), more bits until the budget holds."""
    with tempfile.TemporaryDirectory(prefix="edgeopt-palettize-") as tmp:
        calls = [0]

        def score(p) -> float:
            calls[0] += 1
            path = Path(tmp) / f"trial{calls[0]}.onnx"
            _save_atomic(build(p), path)
            try:
                value = float(evaluate(path))
            finally:
                path.unlink(missing_ok=True)
            if progress is not None:
                progress(calls[0], total)
            return value

        total = 2 + len(chosen) * (9 - bits) if max_drop is not None else 2
        before = float(evaluate(Path(model)))
        current = score(plan)
        reasons: dict[str, str] = {}
        if max_drop is not None and before - current > max_drop:
            order = sorted(chosen, key=lambda t: palette(t, bits).sqnr_db)
            for t in order:
                options = [b for b in range(bits + 1, 9) if _pays(t, b, group_size) is None] + [None]
                tried = [(bits, current)]
                met = False
                for b in options:
                    value = score({**plan, t.name: b})
                    tried.append((b, value))
                    if before - value <= max_drop:
                        met = True
                        break
                best_bits, best_value = max(tried, key=lambda bv: bv[1])   # first of ties
                if met:
                    best_bits, best_value = tried[-1]
                text = ", ".join(f"{'unpalettized' if b is None else f'{b}-bit'}: {v:.4f}"
                                 for b, v in tried)
                if best_bits != bits:
                    plan = {**plan, t.name: best_bits}
                    current = best_value
                    reasons[t.name] = (f"sensitive (weight SQNR {palette(t, bits).sqnr_db} dB at "
                                       f"{bits} bits); metric with it at {text}")
                if met:
                    break
    report = {"metric_before": before, "metric_after": current,
              "max_accuracy_drop": max_drop, "evaluations": calls[0] + 1,
              "budget_met": None if max_drop is None else before - current <= max_drop}
    for name, b in plan.items():
        if b is None:
            reasons[name] = "kept unpalettized: " + reasons.get(name, "")
    return plan, reasons, report


def uniform_blockwise_onnx(model: Path, out: Path, bits: int = 4,
                           group_size: int | None = None) -> dict:
    """The baseline: uniform ``bits``-bit weights (asymmetric min-max uint4, or uint8 above
    4 bits), one scale and zero point per group of ``group_size`` output channels, decoded by
    ``DequantizeLinear`` (opset 21, ``block_size`` = the group's element count, on the weight
    stored as [groups, group elements]) -> Reshape [-> Transpose]. Same layers as
    ``palettize_onnx`` would take at these settings. Returns the same kind of report."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    group_size = _check_args(model, out, bits, group_size, None, None)
    proto = _load(model, 4)          # DequantizeLinear with block_size is opset 21
    targets, skipped = _targets(proto)
    if any(t.codes for t in targets):
        msg = f"{Path(model).name} is a quantized graph; give the FP32 model"
        raise PalettizeError(msg)
    chosen, kept = _select(targets, bits, group_size, model)
    levels = (1 << bits) - 1
    replaced, rows = {}, {}
    for t in chosen:
        groups = t.matrix.reshape(t.channels // group_size, -1).astype(np.float64)
        lo = np.minimum(groups.min(1, keepdims=True), 0)
        hi = np.maximum(groups.max(1, keepdims=True), 0)
        scale = np.maximum((hi - lo) / levels, 1e-12).astype(np.float32)
        zero = np.clip(np.round(-lo / scale), 0, levels)
        q = np.clip(np.round(groups / scale) + zero, 0, levels)
        decoded = ((q - zero) * scale).reshape(t.matrix.shape)
        dtype = ml_dtypes.uint4 if bits <= 4 else np.uint8
        name = t.name
        inits = [numpy_helper.from_array(q.astype(np.uint8).astype(dtype), f"{name}.block_q"),
                 numpy_helper.from_array(scale, f"{name}.block_scale"),
                 numpy_helper.from_array(zero.astype(np.uint8).astype(dtype), f"{name}.block_zero")]
        nodes = [helper.make_node("DequantizeLinear", [i.name for i in inits],
                                  [f"{name}.block_float"], axis=1, block_size=groups.shape[1],
                                  name=f"{name}/block/DequantizeLinear")]
        _decode_tail(t, f"{name}.block_float", nodes, inits)
        replaced[name] = (nodes, inits)
        size = _index_bytes(q.size, bits) + scale.nbytes + _index_bytes(zero.size, bits)
        rows[name] = _Palette(scale, q, _sqnr_db(t.matrix.astype(np.float64), decoded), size)
    try:
        _save_atomic(_rewrite(proto, replaced, _UINT4_OPSET), out)
    except Exception as e:
        msg = f"cannot write {out}: {first_line(e)[:200]}"
        raise _fail(msg, e) from e
    return {
        "bits": bits, "group_size": group_size,
        "encoding": ("uniform asymmetric min-max, one fp32 scale and uint zero point per group "
                     "of output channels; DequantizeLinear(axis=1, block_size=group elements) "
                     "on [groups, group elements] -> Reshape [-> Transpose]"),
        "rule": _PAY_RULE,
        "layers": [_layer_row(t, bits if t.name in rows else None, group_size, rows.get(t.name),
                              kept.get(t.name)) for t in targets],
        "skipped": skipped, "palettized_layers": len(rows),
        "size_bytes": {"before": Path(model).stat().st_size, "after": Path(out).stat().st_size},
        "size_zipped_bytes": {"before": _deflated(Path(model)), "after": _deflated(Path(out))},
    }
