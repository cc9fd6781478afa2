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
MatMul). A weight is palettized only when it pays (``PAY_RULE``).

``uniform_blockwise_onnx`` is the baseline at the same granularity: uniform 4-bit weights,
one scale and zero point per group of output channels, decoded by an opset-21 blockwise
``DequantizeLinear``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeopt.calibrate._palette_graph import (
    Palette,
    Target,
    decode_tail,
    palette_nodes,
    rewrite,
    save_atomic,
    weight_targets,
)
from edgeopt.calibrate._palette_kmeans import assign, kmeans_1d, sqnr_db, uniform_grid
from edgeopt.calibrate._palette_rules import (  # noqa: F401 (MIN_FAN_IN: re-exported)
    MIN_FAN_IN,
    PAY_RULE,
    UINT4_OPSET,
    PalettizeError,
    check_args,
    deflated,
    index_bytes,
    layer_row,
    load_model,
    palettize_error,
    pays,
    scaled,
    select_targets,
)
from edgeopt.runtimes.errors import short_reason

__all__ = ["PalettizeError", "assign", "kmeans_1d", "palettize_onnx", "uniform_blockwise_onnx",
           "uniform_grid"]


# ---------------------------------------------------------------- one weight, one setting


def _palette(target: Target, bits: int, group_size: int, importance: str) -> Palette:
    k = 1 << bits
    matrix, scale, channel_weight = target.matrix, None, target.dq_scale
    if scaled(target, group_size):
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
    sqnr = sqnr_db(target.float_values(target.matrix), target.float_values(decoded))
    size = lut.nbytes + index_bytes(indices.size, bits) + (0 if scale is None else scale.nbytes)
    return Palette(lut, indices, sqnr, size, scale)


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
            kept more accuracy) or ``"magnitude"`` (squared weight).

    Returns:
        A JSON-able report: settings, per-layer rows, sizes before/after, metrics.

    Raises:
        PalettizeError: bad arguments, an unreadable model, or nothing worth palettizing.
    """
    group_size = check_args(model, out, bits, group_size, max_accuracy_drop, evaluate)
    if importance not in ("uniform", "magnitude"):
        msg = f"importance must be 'uniform' or 'magnitude', got {importance!r}"
        raise PalettizeError(msg)
    proto = load_model(model, bits)
    targets, skipped = weight_targets(proto)
    chosen, kept = select_targets(targets, bits, group_size, model)
    palette = _palette_cache(group_size, importance)
    for i, t in enumerate(chosen):
        palette(t, bits)
        if progress is not None:
            progress(i + 1, len(chosen))
    plan: dict[str, int | None] = {t.name: bits for t in chosen}
    reasons: dict[str, str] = dict(kept)
    build = _builder(proto, chosen, palette)
    report_metric = {}
    if evaluate is not None:
        plan, trials, report_metric = _fit_budget(model, chosen, plan, bits, group_size, build,
                                                  palette, evaluate, max_accuracy_drop, progress)
        reasons.update(trials)
    _write(build(plan), out)
    layers = [layer_row(t, plan.get(t.name), group_size,
                        palette(t, plan[t.name]) if plan.get(t.name) is not None else None,
                        reasons.get(t.name)) for t in targets]
    return {
        "bits": bits, "group_size": group_size, "importance": importance,
        "encoding": _encoding(chosen), "rule": PAY_RULE, "layers": layers,
        "skipped": skipped,
        "palettized_layers": sum(b is not None for b in plan.values()),
        "size_bytes": {"before": Path(model).stat().st_size, "after": Path(out).stat().st_size},
        "size_zipped_bytes": {"before": deflated(Path(model)), "after": deflated(Path(out))},
        **report_metric,
    }


def _palette_cache(group_size: int, importance: str) -> Callable[[Target, int], Palette]:
    """``palette(target, bits)``, each computed once."""
    cache: dict[tuple[str, int], Palette] = {}

    def palette(t: Target, b: int) -> Palette:
        if (t.name, b) not in cache:
            cache[t.name, b] = _palette(t, b, group_size, importance)
        return cache[t.name, b]

    return palette


def _builder(proto, chosen: list[Target], palette: Callable[[Target, int], Palette]):
    """``build(plan)``: the model with each chosen weight palettized at its planned bits
    (None: left as it is)."""
    def build(p: dict[str, int | None]):
        replaced = {t.name: palette_nodes(t, palette(t, p[t.name]), p[t.name])
                    for t in chosen if p[t.name] is not None}
        return rewrite(proto, replaced, UINT4_OPSET if any(
            b is not None and b <= 4 for b in p.values()) else None)

    return build


def _write(proto, out: Path) -> None:
    try:
        save_atomic(proto, out)
    except Exception as e:
        msg = f"cannot write {out}: {short_reason(e, 200)}"
        raise palettize_error(msg, e) from e


def _encoding(chosen: list[Target]) -> str:
    return ("per group of output channels a LUT of 2^bits centroids ("
            + ("int8 codes feeding the existing weight DequantizeLinear" if any(
                t.codes for t in chosen) else "float16")
            + ") and indices (uint4 packed two per byte for <= 4 bits, uint8 above), decoded "
            "by Cast(int64) -> GatherElements(axis=1) -> [Cast(float)] -> Reshape "
            "[-> Mul(fp16 per-channel scale, when channels share a float table)] "
            "[-> Transpose] into the original weight name")


def _fit_budget(model, chosen, plan, bits, group_size, build, palette, evaluate,
                max_drop, progress):
    """Most sensitive layers first (lowest weight SQNR), more bits until the budget holds."""
    with tempfile.TemporaryDirectory(prefix="edgeopt-palettize-") as tmp:
        calls = [0]

        def score(p) -> float:
            calls[0] += 1
            path = Path(tmp) / f"trial{calls[0]}.onnx"
            save_atomic(build(p), path)
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
                options = [b for b in range(bits + 1, 9) if pays(t, b, group_size) is None] + [None]
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

    group_size = check_args(model, out, bits, group_size, None, None)
    proto = load_model(model, 4)          # DequantizeLinear with block_size is opset 21
    targets, skipped = weight_targets(proto)
    if any(t.codes for t in targets):
        msg = f"{Path(model).name} is a quantized graph; give the FP32 model"
        raise PalettizeError(msg)
    chosen, kept = select_targets(targets, bits, group_size, model)
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
        decode_tail(t, f"{name}.block_float", nodes, inits)
        replaced[name] = (nodes, inits)
        size = index_bytes(q.size, bits) + scale.nbytes + index_bytes(zero.size, bits)
        rows[name] = Palette(scale, q, sqnr_db(t.matrix.astype(np.float64), decoded), size)
    _write(rewrite(proto, replaced, UINT4_OPSET), out)
    return {
        "bits": bits, "group_size": group_size,
        "encoding": ("uniform asymmetric min-max, one fp32 scale and uint zero point per group "
                     "of output channels; DequantizeLinear(axis=1, block_size=group elements) "
                     "on [groups, group elements] -> Reshape [-> Transpose]"),
        "rule": PAY_RULE,
        "layers": [layer_row(t, bits if t.name in rows else None, group_size, rows.get(t.name),
                              kept.get(t.name)) for t in targets],
        "skipped": skipped, "palettized_layers": len(rows),
        "size_bytes": {"before": Path(model).stat().st_size, "after": Path(out).stat().st_size},
        "size_zipped_bytes": {"before": deflated(Path(model)), "after": deflated(Path(out))},
    }
