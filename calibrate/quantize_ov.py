"""INT8 for OpenVINO: NNCF's post-training quantization on the OpenVINO model
(PERFORMANCE preset, full bias correction; NNCF's fast one under ``effort="fast"``), then
every per-tensor activation FakeQuantize gets the calibrator's range for its tensor (see
quantize.py for the shared parts), and the AVX2 saturation guard on NNCF's int8 weights."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibrate.calibrators import QuantRange, compute_ranges
from edgeopt.calibrate.errors import CalibrationError
from edgeopt.calibrate.float_ops import OV_RECURRENT, ov_control_flow, ov_recurrent_notes
from edgeopt.calibrate.output_ranges import protected_ranges
from edgeopt.calibrate.ov_bias import one_compile_bias_correction
from edgeopt.calibrate.ov_reuse import file_digest, model_digest, nncf_result, reuse
from edgeopt.calibrate.ov_sqnr import ov_layer_sqnr, worst_output_sqnr
from edgeopt.calibrate.qdq_graph import fp32_nodes, linear_nodes
from edgeopt.calibrate.quantize import (
    Progress,
    QuantConfig,
    QuantResult,
    activation_stats,
    check_calibration,
    staging_path,
)
from edgeopt.calibrate.saturation import reduction_rows, refit
from edgeopt.calibrate.stats import MEAN_SAMPLES, TensorStats, channel_mean
from edgeopt.runtimes import capture_openvino, read_openvino_model
from edgeopt.runtimes.errors import short_reason

RECURRENT_MIN_SQNR_DB = 10.0     # the default gate's floor for an output (edgeopt.metrics)


def _ov_first_conv(model) -> list[str]:
    """The first convolution of an OpenVINO model, by friendly name."""
    ops = [op for op in model.get_ordered_ops()
           if op.get_type_name() in {"Convolution", "GroupConvolution"}]
    return [ops[0].get_friendly_name()] if ops else []


def _ov_names(model, names: Sequence[str], onnx_outputs: dict[str, list[str]]) -> list[str]:
    """OpenVINO friendly names for ONNX node names: the ops named ``n`` or ``n/...`` (e.g.
    ``n/WithoutBiases``), and the ops that produce ``n``'s output tensors (OpenVINO names a
    layer after its output when that is a graph output) with their ``/...`` parts."""
    ops = [op for op in model.get_ops() if op.get_type_name() not in {"Result", "Parameter"}]
    by_tensor = {t: op.get_friendly_name() for op in ops for out in op.outputs()
                 for t in out.get_names()}
    friendly = [op.get_friendly_name() for op in ops]
    result = []
    for name in names:
        roots = {name} | {by_tensor[t] for t in onnx_outputs.get(name, ()) if t in by_tensor}
        found = [f for f in friendly if any(f == r or f.startswith(r + "/") for r in roots)]
        result += found or [name]
    return list(dict.fromkeys(result))


def _aligned(r: QuantRange, levels: int) -> tuple[float, float]:
    """An asymmetric range nudged so that 0.0 falls exactly on the grid (as NNCF does)."""
    lo, hi = min(r.rmin, 0.0), max(r.rmax, 0.0)
    if hi - lo < 1e-12:
        return lo, lo + 1e-6
    scale = (hi - lo) / (levels - 1)
    zero = round(-lo / scale)
    return -zero * scale, (levels - 1 - zero) * scale


def _apply_fq_ranges(model, ranges: dict[str, QuantRange]) -> tuple[int, int]:
    """Set every per-tensor activation FakeQuantize's range from ``ranges`` by the tensor it
    quantizes. NNCF gives depthwise-convolution inputs a range per channel, which OpenVINO
    runs as is and a per-tensor calibrator cannot match (flattening them to one range loses
    accuracy): those keep NNCF's per-channel ranges.
    Returns (set, kept at NNCF's range)."""
    from openvino import opset13 as ops

    applied = missed = 0
    for fq in model.get_ops():
        if fq.get_type_name() != "FakeQuantize":
            continue
        source = fq.input(0).get_source_output()
        if source.get_node().get_type_name() == "Constant":
            continue                                         # a weight
        if int(np.prod(tuple(fq.input(1).get_source_output().get_shape()))) > 1:
            missed += 1                                      # per-channel: NNCF's
            continue
        r = next((ranges[n] for n in source.get_names() if n in ranges), None)
        if r is None:
            missed += 1
            continue
        old = [fq.input_value(port).get_node().get_data().astype(np.float64) for port in (1, 2, 3, 4)]
        lo, hi = float(old[0].ravel()[0]), float(old[1].ravel()[0])
        if lo == 0.0 or abs(lo + hi) <= 1e-2 * abs(hi):
            # NNCF's symmetric quantizer (unsigned [0, a] or signed [-a, a]): keep its shape,
            # which OpenVINO's CPU plugin runs without zero points, and scale it to the range
            wanted = r.rmax if lo == 0.0 else max(-r.rmin, r.rmax)
            if wanted <= 0:
                missed += 1
                continue
            factor = wanted / max(abs(lo), abs(hi))
            values = [v * factor for v in old]
        else:
            a, b = _aligned(r, fq.get_levels())
            values = [np.full(v.shape, x) for v, x in zip(old, (a, b, a, b), strict=True)]
        for port, value in zip((1, 2, 3, 4), values, strict=True):
            const = ops.constant(np.asarray(value, dtype=np.float32))
            fq.input(port).replace_source_output(const.output(0))
        applied += 1
    return applied, missed


def input_means(fp32_model, samples: Sequence[dict[str, np.ndarray]],
                limit: int = MEAN_SAMPLES,
                stats: dict[str, TensorStats] | None = None) -> dict[str, np.ndarray]:
    """Per-channel (last axis for MatMul) means of each Convolution / MatMul input of the
    FP32 OpenVINO model over the first ``limit`` samples, by the op's name: from ``stats``
    (the FP32 ONNX's statistics pass, which keeps them for MEAN_SAMPLES samples) where they
    have the input's tensor, by its name (OpenVINO keeps the ONNX names), else from a run
    of the FP32 model."""
    ops = _linear_ops(fp32_model)
    usable = stats if limit == MEAN_SAMPLES else None
    means = {op.get_friendly_name(): mean for op in ops
             if (mean := _stats_mean(op, usable or {})) is not None}
    if len(means) < len(ops):
        means.update(_captured_means(fp32_model, samples, limit, skip=set(means)))
    return means


def _linear_ops(model) -> list:
    return [op for op in model.get_ops() if op.get_type_name() in {"Convolution", "MatMul"}
            and op.input_value(1).get_node().get_type_name() == "Constant"]


def _stats_mean(op, stats: dict[str, TensorStats]) -> np.ndarray | None:
    """The channel means the statistics pass kept for ``op``'s input, when they fit it."""
    source = op.input_value(0)
    shape = source.get_partial_shape()
    if (shape.rank.is_dynamic or shape.rank.get_length() < 2
            or op.get_attributes().get("transpose_a")):          # MatMul's
        return None
    axis = 1 if op.get_type_name() == "Convolution" else shape.rank.get_length() - 1
    for name in sorted(source.get_names()):
        mean = getattr(stats.get(name), "channel_mean", None)
        if mean is not None and shape[axis].is_static and mean.size == shape[axis].get_length():
            return mean
    return None


def _captured_means(fp32_model, samples, limit: int, skip: set[str]) -> dict[str, np.ndarray]:
    """:func:`input_means` by a run of the FP32 model over ``limit`` samples, for the ops
    not named in ``skip``."""
    model = fp32_model.clone()
    ops = [op for op in _linear_ops(model) if op.get_friendly_name() not in skip]
    if not ops:
        return {}
    # one output per distinct input tensor (a transformer's Q, K and V read the same one)
    tensors = list(dict.fromkeys(op.input_value(0) for op in ops))
    first = len(model.outputs)
    model.add_outputs(tensors)
    if len(model.outputs) != first + len(tensors):
        return {}                               # an input already was an output: no means
    index = {tensor: first + i for i, tensor in enumerate(tensors)}
    sums: dict[str, np.ndarray] = {}
    for result in capture_openvino(model, samples[:limit]):
        for op in ops:
            mean = channel_mean(result[index[op.input_value(0)]],
                                1 if op.get_type_name() == "Convolution" else -1)
            sums[op.get_friendly_name()] = sums.get(op.get_friendly_name(), 0.0) + mean
    count = min(limit, len(samples))
    return {name: total / count for name, total in sums.items()}


def _follow_bias(op, shift: np.ndarray) -> None:
    """Add ``shift`` (one value per output channel) to the constant bias NNCF put after
    ``op`` (its only reader, an Add of a Constant)."""
    import openvino as ov

    readers = list(op.output(0).get_target_inputs())
    if len(readers) != 1 or readers[0].get_node().get_type_name() != "Add":
        return
    add = readers[0].get_node()
    port = 1 - readers[0].get_index()
    bias_node = add.input_value(port).get_node()
    if bias_node.get_type_name() != "Constant":
        return
    bias = bias_node.get_data()
    if bias.size != shift.size:
        return
    new = ov.opset13.constant((bias.astype(np.float64) + shift.reshape(bias.shape))
                              .astype(bias.dtype))
    add.input(port).replace_source_output(new.output(0))


def _output_shift(kind: str, attrs: dict, delta: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Mean change of each output channel when the weights change by ``delta``."""
    if kind == "Convolution":
        return np.einsum("oikl,i->o", delta, mean)
    return delta @ mean if attrs["transpose_b"] else mean @ delta


def fit_weight_scales(model, means: dict[str, np.ndarray] | None = None) -> tuple[int, int]:
    """saturation.py's guard for NNCF's compressed int8 weights (Constant i8 -> Convert ->
    Multiply by per-channel scale -> Convolution / MatMul), in place; returns (channels
    changed, channels looked at). NNCF's own ``OverflowFix`` gives whole layers 7-bit
    weights; here only the channels with a large same-sign pair get a coarser scale. With
    ``means`` (:func:`input_means`), the mean output shift of the requantized weights is
    folded into NNCF's bias, as its bias correction did for its own rounding."""
    import openvino as ov

    changed = seen = 0
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind not in {"Convolution", "MatMul"}:
            continue
        mul = op.input_value(1).get_node()
        if mul.get_type_name() != "Multiply":
            continue
        convert, scale_node = (mul.input_value(i).get_node() for i in (0, 1))
        if convert.get_type_name() != "Convert" or scale_node.get_type_name() != "Constant":
            continue
        const = convert.input_value(0).get_node()
        if const.get_type_name() != "Constant" or const.get_element_type() != ov.Type.i8:
            continue
        q, scale = const.get_data().astype(np.float64), scale_node.get_data()
        if kind == "MatMul" and (op.get_attributes().get("transpose_a") or q.ndim != 2):
            continue
        attrs = {"transpose_b": bool(op.get_attributes().get("transpose_b"))}
        found = reduction_rows(q * scale, kind, attrs, even_channels=True)
        if found is None:
            continue
        rows, back = found
        if scale.size not in (1, rows.shape[0]):
            continue                               # not one scale per output channel
        fitted, new_scale, grow = refit(rows, scale.reshape(-1))
        seen += grow.size
        if not grow.any():
            continue
        new_int = np.ascontiguousarray(back(fitted)).astype(np.int8)
        new_q = ov.opset13.constant(new_int)
        new_s = ov.opset13.constant(new_scale.reshape(scale.shape).astype(scale.dtype))
        mean = (means or {}).get(op.get_friendly_name())
        if mean is not None:
            delta = q * scale - new_int * new_scale.reshape(scale.shape).astype(np.float64)
            _follow_bias(op, _output_shift(kind, attrs, delta, mean))
        convert.input(0).replace_source_output(new_q.output(0))
        mul.input(1).replace_source_output(new_s.output(0))
        changed += int(grow.sum())
    return changed, seen


def quantize_for_openvino(fp32_model: Path, out_xml: Path, calib: Sequence[dict[str, np.ndarray]],
                          config: QuantConfig = QuantConfig(),  # noqa: B008 (frozen)
                          progress: Progress = None,
                          stats: dict[str, TensorStats] | None = None,
                          fp32_onnx: Path | None = None, before_save: Callable | None = None,
                          sqnr: bool = True) -> QuantResult:
    """NNCF post-training INT8 quantization of the OpenVINO model, saved as IR, with the
    calibrator's activation ranges (statistics from ``stats``, or gathered on
    ``fp32_onnx``, the ONNX model the IR was converted from: tensor names carry over).
    ``before_save(model)`` runs on the quantized ``openvino.Model`` just before it is saved.
    ``sqnr=False`` leaves ``layer_sqnr`` empty (ov_sqnr.artifact_layer_sqnr_ov: later).

    Builds of the same FP32 model on the same ``calib`` object in one process share
    NNCF's run (e.g. the build without the saturation guard): see ov_reuse.py."""
    import logging

    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = read_openvino_model(fp32_model)
    check_calibration(calib, _input_specs(model))
    if stats is None and fp32_onnx is not None:
        stats = activation_stats(fp32_onnx, calib)
    samples = calib if isinstance(calib, Sequence) else list(calib)   # read as needed
    excluded, notes = fp32_nodes(config, lambda: _ov_first_conv(model))
    onnx_outputs, transformer, protected = _onnx_facts(fp32_onnx)
    if transformer:
        notes.append("transformer-style graph: NNCF's TRANSFORMER model type")
    excluded = _ov_names(model, excluded, onnx_outputs)
    control_flow = ov_control_flow(model)      # bodies stay float
    notes += control_flow
    fp32_key = model_digest(fp32_model)
    tmp = staging_path(out_xml := Path(out_xml), ".xml")
    applied, fast_bc = 0, bool(control_flow) or config.effort == "fast"
    try:
        quantized, recurrent = _quantized_once(model, samples, excluded, transformer, progress,
                                               bool(control_flow), fp32_key, fast_bc)
        notes += recurrent
        if stats is not None:
            applied, note = _set_calibrator_ranges(quantized, stats, config.calibrator,
                                                   protected)
            notes.append(note)
        if config.saturation_guard:
            notes += _saturation_guard(quantized, model, samples, stats)
        if before_save is not None:    # e.g. stable node names (edgeopt.convert)
            before_save(quantized)
        _save_ir(quantized, tmp, out_xml)
    except Exception as e:
        msg = f"NNCF quantization of {Path(fp32_model).name} failed: {short_reason(e)}"
        raise CalibrationError(msg) from e
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    notes.append(f"NNCF {nncf.__version__} post-training quantization (PERFORMANCE preset, "
                 f"{'fast ' if fast_bc else ''}bias correction) from {len(samples)} "
                 f"samples; {fq} FakeQuantize ops")
    rows = ov_layer_sqnr(model, quantized, samples, fp32_key=fp32_key) if sqnr else ()
    return QuantResult(out_xml, tuple(excluded), tuple(notes), layer_sqnr=tuple(rows),
                       ranges_applied=applied)


def _quantized_once(model, samples, excluded: list[str], transformer: bool,
                    progress: Progress, control_flow: bool, fp32_key: str,
                    fast_bc: bool) -> tuple[Any, list[str]]:
    """NNCF's quantized model (checked for recurrent ops) and its notes: run here, or a
    copy of the one run before on the same FP32 model, samples and settings."""
    import nncf

    return nncf_result(
        (fp32_key, tuple(excluded), transformer, control_flow, fast_bc, nncf.__version__),
        samples,
        lambda: _checked_recurrent(model, samples, lambda types=(): _nncf_quantize(
            model, samples, excluded, transformer, progress, control_flow=control_flow,
            ignored_types=types, fast_bias_correction=fast_bc)))


def _input_specs(model) -> list[tuple[str, str, tuple]]:
    """(name, numpy dtype name, shape with "?" for dynamic dimensions) of each input."""
    return [(p.get_any_name(), p.get_element_type().to_dtype().name,
             tuple(d.get_length() if d.is_static else "?" for d in p.get_partial_shape()))
            for p in model.inputs]


def _onnx_facts(fp32_onnx: Path | None) -> tuple[dict[str, list[str]], bool, dict]:
    """From the ONNX model: node name -> output names (to find excluded nodes in OpenVINO),
    whether it is a transformer-style graph, and the tensors whose ranges are protected
    (output_ranges.py); nothing without the ONNX model. Read once per file content."""
    if fp32_onnx is None:
        return {}, False, {}

    def read() -> tuple[dict[str, list[str]], bool, dict]:
        import onnx

        graph = onnx.load(str(fp32_onnx))
        return ({n.name: list(n.output) for n in graph.graph.node}, bool(linear_nodes(graph)),
                protected_ranges(graph))

    return reuse("onnx-facts", file_digest(fp32_onnx), read)


def _checked_recurrent(model, samples: list, quantize: Callable) -> tuple[Any, list[str]]:
    """``quantize()``, and where NNCF quantized a recurrent op, the model's outputs checked
    against FP32 on the calibration samples: below RECURRENT_MIN_SQNR_DB on any output,
    the recurrent ops are quantized again as float (a state quantized badly drifts over
    every step). Returns the model and one note per recurrent op."""
    quantized = quantize()
    notes = ov_recurrent_notes(quantized)
    kinds = sorted({op.get_type_name() for op in quantized.get_ops()
                    if op.get_type_name() in OV_RECURRENT
                    and any(v.get_node().get_type_name() == "FakeQuantize"
                            for v in op.input_values())})
    if not kinds:
        return quantized, notes
    worst = worst_output_sqnr(model, quantized, samples[:8])
    if worst >= RECURRENT_MIN_SQNR_DB:
        return quantized, notes
    quantized = quantize(tuple(kinds))
    return quantized, [f"{kind} ops stay float: quantized, an output fell to {worst:.1f} dB "
                       f"SQNR against FP32 on the calibration samples (< "
                       f"{RECURRENT_MIN_SQNR_DB} dB)" for kind in kinds]


def _nncf_quantize(model, samples: list, excluded: list[str], transformer: bool,
                   progress: Progress, control_flow: bool = False,
                   ignored_types: tuple[str, ...] = (), fast_bias_correction: bool = False):
    """NNCF's PERFORMANCE preset (symmetric activations, the fastest int8 graph for the
    CPU plugin) with full bias correction, or NNCF's fast one (``fast_bias_correction``:
    ``effort="fast"``: what it saves and costs is in docs/speed.md); the calibrator's
    ranges replace NNCF's after.

    With control flow: fast bias correction (the full one does not take If), and NNCF's
    If-less path (an internal function of nncf 3.x), which leaves If/Loop bodies whole,
    so they stay float: its If path quantizes each body with the samples that reach it,
    and fails on a branch no calibration sample takes."""
    import nncf

    quantize = nncf.quantize
    if control_flow:
        from nncf.openvino.quantization.quantize_model import native_quantize_impl

        def quantize(model, dataset, **options):
            return native_quantize_impl(model=model, calibration_dataset=dataset, **options)

    done = {"n": 0}

    def transform(sample):
        done["n"] += 1
        if progress is not None:
            progress(min(done["n"], len(samples)), len(samples))
        return sample

    ignored = (nncf.IgnoredScope(names=excluded, types=list(ignored_types), validate=False)
               if excluded or ignored_types else None)
    with one_compile_bias_correction():          # NNCF's full one, one compile a layer
        return quantize(model, nncf.Dataset(samples, transform), subset_size=len(samples),
                        preset=nncf.QuantizationPreset.PERFORMANCE,
                        fast_bias_correction=fast_bias_correction or control_flow,
                        **({"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}),
                        **({"ignored_scope": ignored} if ignored else {}))


def _set_calibrator_ranges(quantized, stats: dict[str, TensorStats], calibrator: str,
                           protected: dict) -> tuple[int, str]:
    """The calibrator's ranges on the activation FakeQuantize ops: (how many, note)."""
    applied, missed = _apply_fq_ranges(quantized,
                                       compute_ranges(stats, calibrator, protected=protected))
    note = (f"'{calibrator}' ranges set on {applied} activation FakeQuantize ops"
            + (f"; {missed} keep NNCF's (per-channel ranges of depthwise inputs, or no "
               "statistics)" if missed else ""))
    return applied, note


def _saturation_guard(quantized, fp32_model, samples: list,
                      stats: dict[str, TensorStats] | None) -> list[str]:
    coarser, channels = fit_weight_scales(quantized, input_means(fp32_model, samples,
                                                                 stats=stats))
    if not channels:
        return []
    return [f"AVX2 saturation guard: no same-sign int8 weight pair exceeds 128 "
            f"(oneDNN's int16 accumulation without VNNI); {coarser} of "
            f"{channels} output channels got a coarser weight scale for it"]


def _save_ir(quantized, tmp: Path, out_xml: Path) -> None:
    """Save as IR under a temporary name, then rename the .bin and the .xml into place."""
    import openvino as ov

    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), out_xml.with_suffix(".bin"))
    os.replace(tmp, out_xml)
