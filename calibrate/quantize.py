"""INT8 post-training quantization for ONNX Runtime, and what both runtimes share.

Both runtimes get the activation ranges of the chosen calibrator (calibrators.py), from
one pass of bounded-memory statistics over the FP32 model (stats.py); ONNX Runtime's graph
inputs keep their full range (calibrators.compute_ranges says why).

ONNX Runtime: a QDQ graph laid out the way ONNX Runtime's quantizer lays it out (so its CPU
EP fuses Q/DQ pairs into QLinearConv / QGemm / QLinearAdd), per-channel S8 weights, U8
activations with the calibrator's ranges (``TensorQuantOverrides``; depthwise inputs
equalized per channel first, equalize.py), then data-aware weight rounding (rounding.py) and
bias correction (bias_correction.py) on the int8 values, so the graph and its integer
kernels stay exactly ONNX Runtime's. No pair of int8 weights can saturate the int16
accumulation of ONNX Runtime's AVX2 kernels (saturation.py): the rounding takes that as a
constraint. Which nodes stay FP32, and the fix-ups of the quantized graph, are in
qdq_graph.py: nodes kept FP32 are guarded against ONNX Runtime quantizing their weights at
load time (``keep_float``), and the graph's outputs stay float (a QGemm with float output)
because quantizing the logits to 8 bits flips close top-1 calls.

With ``QuantConfig.qat_epochs`` the QDQ graph is then fine-tuned (qat.py).

OpenVINO: quantize_ov.py. Per-layer SQNR and the budget's order: sensitivity.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from edgeopt.calibrate import reuse
from edgeopt.calibrate.bias_correction import bias_inputs, correct_weight_bias
from edgeopt.calibrate.calibrators import (
    CALIBRATORS,
    DEFAULT_CALIBRATOR,
    compute_ranges,
)
from edgeopt.calibrate.data import check_finite
from edgeopt.calibrate.errors import CalibrationDataError, CalibrationError
from edgeopt.calibrate.ort_base import Base, fp32_source, prepared_base, reservoir_for
from edgeopt.calibrate.ov_route import OV_INT8
from edgeopt.calibrate.qat import QatResult, finetune_qdq
from edgeopt.calibrate.qdq_graph import (
    float_outputs,
    fp32_nodes,
    keep_float,
    stem_block,
)
from edgeopt.calibrate.rounding import MAX_COLUMNS, optimize_weight_rounding
from edgeopt.calibrate.saturation import bound_model, fit_scales
from edgeopt.calibrate.sensitivity import layer_sqnr, sensitivity_order
from edgeopt.calibrate.stats import DEFAULT_RESERVOIR, TensorStats, collect_stats
from edgeopt.runtimes import onnx_input_specs, optimized_op_counts
from edgeopt.runtimes.errors import short_reason

__all__ = [
    "INTEGER_KERNELS",
    "CalibrationReader",
    "Progress",
    "QuantConfig",
    "QuantResult",
    "activation_stats",
    "artifact_layer_sqnr",
    "check_calibration",
    "integer_kernel_counts",
    "layer_sqnr",
    "quantize_onnx_for_ort",
    "sensitivity_order",
    "staging_path",
    "stem_block",
]

Progress = Callable[[int, int], None] | None
# "fast" (ONNX Runtime): bias correction takes the convolutions' input means from the
# weight-rounding pass (the FP32 model's tensors they quantize, input_moments.py), before
# the weights move, instead of a pass of its own after; one
# pass less (about 5% of the step), and on mobilenet-v2's held-out photos 0.5 pt less
# top-1 agreement with FP32 (0.984 against 0.989), so it is not the default.
EFFORTS = ("default", "fast")
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                   "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearSigmoid",
                   "QLinearConcat", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize. ``fp32_stem`` (ONNX Runtime) keeps a CNN's stem FP32: see
    :func:`stem_block`. ``keep_first_fp32`` keeps the first convolution (it sees raw
    pixels) in FP32 on both runtimes, off by default: in OpenVINO it costs speed, and in
    ONNX Runtime a stem, when there is one, already holds it.
    ``exclude_nodes`` are more nodes kept FP32 (ONNX node names; for OpenVINO they are
    mapped to the ops converted from them)."""

    calibrator: str = DEFAULT_CALIBRATOR
    per_channel: bool = True
    keep_first_fp32: bool = False
    fp32_stem: bool = True                   # ONNX Runtime only: see stem_block
    equalize: bool = True                    # ONNX Runtime only: see calibrate/equalize.py
    saturation_guard: bool = True            # see calibrate/saturation.py
    weight_rounding: bool = True
    bias_correction: bool = True
    exclude_nodes: tuple[str, ...] = ()
    qat_epochs: int = 0                      # ONNX Runtime only: see calibrate/qat.py
    qat_lr: float = 1e-5
    qat_ranges: bool = True                  # also learn the activation scales
    effort: str = "default"                  # "fast": shortcuts that cost accuracy (EFFORTS)
    ov_int8: str = "auto"                    # how OpenVINO's INT8 is made (ov_route.OV_INT8)

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATORS:
            msg = f"unknown calibrator '{self.calibrator}' (known: {', '.join(CALIBRATORS)})"
            raise CalibrationError(msg)
        if self.effort not in EFFORTS:
            msg = f"unknown effort '{self.effort}' (known: {', '.join(EFFORTS)})"
            raise CalibrationError(msg)
        if self.ov_int8 not in OV_INT8:
            msg = f"unknown ov_int8 '{self.ov_int8}' (known: {', '.join(OV_INT8)})"
            raise CalibrationError(msg)


@dataclass(frozen=True)
class QuantResult:
    path: Path
    excluded_nodes: tuple[str, ...]
    notes: tuple[str, ...] = ()
    integer_kernels: dict[str, int] = field(default_factory=dict)
    layer_sqnr: tuple[dict, ...] = ()          # worst first: {"tensor", "node", "sqnr_db"}
    ranges_applied: int = 0


def check_calibration(samples: Sequence[dict[str, np.ndarray]],
                      inputs: Sequence[tuple[str, str, tuple]]) -> None:
    """Names, dtypes, shapes and finiteness of every sample, before anything runs."""
    if not samples:
        raise CalibrationDataError("no calibration samples")
    expected = {name: (dtype, tuple(shape)) for name, dtype, shape in inputs}
    for index, sample in enumerate(samples):
        if set(sample) != set(expected):
            msg = (f"calibration sample {index} has inputs {', '.join(sorted(sample))}, the model "
                   f"takes {', '.join(sorted(expected))}")
            raise CalibrationDataError(msg)
        for name, array in sample.items():
            dtype, shape = expected[name]
            if str(array.dtype) != dtype:
                msg = f"calibration sample {index} input '{name}' is {array.dtype}, the model takes {dtype}"
                raise CalibrationDataError(msg)
            if all(isinstance(d, int) and d > 0 for d in shape) and tuple(array.shape) != shape:
                msg = (f"calibration sample {index} input '{name}' has shape "
                       f"{'x'.join(map(str, array.shape))}, the model takes {'x'.join(map(str, shape))}")
                raise CalibrationDataError(msg)
    check_finite(samples, "calibration data")


def _onnx_inputs(path: Path) -> list[tuple[str, str, tuple]]:
    try:
        return [(s.name, s.dtype, s.shape) for s in onnx_input_specs(path)]
    except Exception as e:  # protobuf DecodeError, OSError...
        msg = f"cannot read ONNX model {Path(path).name}: {short_reason(e, 200)}"
        raise CalibrationError(msg) from e


def integer_kernel_counts(onnx_path: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime's CPU EP actually runs after optimization."""
    counts = optimized_op_counts(onnx_path)
    keep = (*INTEGER_KERNELS, "Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul",
            "QuantizeLinear", "DequantizeLinear")
    return {k: counts[k] for k in keep if counts.get(k)}


def staging_path(out: Path, suffix: str) -> Path:
    """Where an artifact is written before it is renamed to ``out`` (same folder)."""
    return out.with_name(f".{out.stem}.{os.getpid()}.tmp{suffix}")


def activation_stats(fp32_onnx: Path, calib: Sequence[dict[str, np.ndarray]],
                     progress: Progress = None,
                     reservoir: int = DEFAULT_RESERVOIR) -> dict[str, TensorStats]:
    """Bounded-memory statistics of every float tensor of the FP32 ONNX model (with no
    reservoir when ``reservoir`` is 0: enough for the min-max calibrators)."""
    try:
        return collect_stats(Path(fp32_onnx), calib, reservoir, progress=progress)
    except Exception as e:
        msg = f"calibration run of {Path(fp32_onnx).name} failed: {short_reason(e)}"
        raise CalibrationError(msg) from e


def quantize_onnx_for_ort(fp32_onnx: Path, out: Path, calib: Sequence[dict[str, np.ndarray]],
                          config: QuantConfig = QuantConfig(), progress: Progress = None,
                          stats: dict[str, TensorStats] | None = None,
                          qat_samples: Sequence[dict[str, np.ndarray]] | None = None,
                          qat_note: str = "", sqnr: bool = True) -> QuantResult:
    """A QDQ INT8 model that ONNX Runtime's CPU EP runs with integer kernels.

    ``stats`` (from :func:`activation_stats` on ``fp32_onnx``) saves the calibration pass
    when the caller quantizes the same model more than once. With ``config.qat_epochs``
    the int8 weights are then fine-tuned on ``qat_samples`` (default: ``calib``), which
    ``qat_note`` describes in the notes. Stages that another build of the same model,
    samples and statistics already computed in this process come from reuse.py.
    ``sqnr=False`` leaves ``layer_sqnr`` empty (a trial build that may be discarded);
    :func:`artifact_layer_sqnr` gives the same rows later, from the file.
    """
    import onnx

    inputs = _onnx_inputs(fp32_onnx)
    check_calibration(calib, inputs)
    if stats is None:               # only what this calibrator reads
        stats = activation_stats(fp32_onnx, calib, progress, reservoir_for(config.calibrator))
    source = fp32_source(fp32_onnx)
    ranges = compute_ranges(stats, config.calibrator, inputs=[spec[0] for spec in inputs],
                            protected=dict(source.protected))
    out = Path(out)
    prepped = staging_path(out, ".prep.onnx")
    tmp = staging_path(out, ".onnx")
    try:
        base = prepared_base(fp32_onnx, prepped, calib, stats, config, source.digest)
        model = base.model()
        excluded, notes = fp32_nodes(config, lambda: list(base.first), lambda: list(base.stem))
        key = _build_key(base, excluded, config, ranges, qat_samples, qat_note)
        found = reuse.memo().get(key)
        if found is None:
            qdq = _quantize_static(base, prepped, tmp, calib, ranges, config, excluded, notes)
            notes += _refine(model, qdq, calib, config, progress,
                             qat_samples, qat_note or f"{len(calib)} calibration samples")
            found = (qdq.SerializeToString(), tuple(notes))
            reuse.memo().put(key, found, len(found[0]))
        else:                       # the same build, made before in this process
            qdq, notes = onnx.load_from_string(found[0]), list(found[1])
        rows = _layer_rows(base, model, qdq, found[0], calib) if sqnr else []
        tmp.write_bytes(found[0])
        os.replace(tmp, out)
    except CalibrationError:
        raise
    except Exception as e:
        msg = (f"ONNX Runtime quantization of {Path(fp32_onnx).name} failed: "
               f"{short_reason(e)}")
        raise CalibrationError(msg) from e
    finally:
        prepped.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    notes.append(f"QDQ, per-channel S8 weights, U8 activations, '{config.calibrator}' ranges "
                 f"for {len(ranges)} tensors from {len(calib)} samples")
    notes += source.notes
    return QuantResult(out, tuple(excluded), tuple(notes), integer_kernel_counts(out),
                       tuple(rows), len(ranges))


def artifact_layer_sqnr(fp32_onnx: Path, int8_onnx: Path, calib: Sequence[dict[str, np.ndarray]],
                        config: QuantConfig = QuantConfig(),
                        stats: dict[str, TensorStats] | None = None) -> tuple[dict, ...]:
    """``layer_sqnr`` of the QDQ model :func:`quantize_onnx_for_ort` wrote to ``int8_onnx``
    from ``fp32_onnx``, ``calib``, ``config`` and ``stats`` with ``sqnr=False``: the rows
    that build would have given (the same pre-processed FP32 model, from the memo or made
    again, against the same QDQ graph, read back)."""
    import onnx

    if stats is None:
        stats = activation_stats(fp32_onnx, calib, None, reservoir_for(config.calibrator))
    prepped = staging_path(Path(int8_onnx), ".prep.onnx")
    try:
        base = prepared_base(fp32_onnx, prepped, calib, stats, config,
                             fp32_source(fp32_onnx).digest)
        data = Path(int8_onnx).read_bytes()
        return tuple(_layer_rows(base, base.model(), onnx.load_from_string(data), data, calib))
    except Exception as e:
        msg = f"layer SQNR of {Path(int8_onnx).name} failed: {short_reason(e)}"
        raise CalibrationError(msg) from e
    finally:
        prepped.unlink(missing_ok=True)


def _layer_rows(base: Base, model, qdq, data: bytes, calib) -> list[dict]:
    """``layer_sqnr`` of ``qdq`` (serialized: ``data``) against ``model``, the FP32 side
    of ``base``, or the rows given to the same bytes before in this process (another
    runtime's artifact made from the same QDQ model)."""
    key = reuse.digest("ort-rows", base.key, hashlib.blake2b(data).hexdigest())
    found = reuse.memo().get(key)
    if found is None:
        found = tuple(layer_sqnr(model, qdq, calib))
        reuse.memo().put(key, found, 0)
    return [dict(row) for row in found]


def _build_key(base: Base, excluded: list[str], config: QuantConfig, ranges: dict,
               qat_samples, qat_note: str) -> str:
    """What decides a finished build of ``base``: the FP32 nodes, every setting this
    quantizer reads (not ``ov_int8``, which only decides whether OpenVINO takes it), the
    ranges, and the fine-tuning data when there is fine-tuning."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "ov_int8"}
    qat = ((reuse.samples_digest(qat_samples) if qat_samples is not None else None, qat_note)
           if config.qat_epochs else None)
    return reuse.digest("ort-int8", base.key, excluded, settings,
                        {n: (float(r.rmin), float(r.rmax)) for n, r in ranges.items()}, qat)


def _quantize_static(base: Base, prepped: Path, tmp: Path, calib, ranges: dict,
                     config: QuantConfig, excluded: list[str], notes: list[str]):
    """ONNX Runtime's quantizer on ``base`` (depthwise inputs equalized first) with the
    calibrator's ranges, through ``prepped`` and ``tmp``, or the memo's graph; returns the
    QDQ model with float graph outputs."""
    import onnx

    if base.equalized:
        notes.append(f"depthwise inputs equalized: {base.equalized} tensors rescaled "
                     "per channel into the convolutions on both sides, then calibrated")
    if base.linear:
        notes.append(f"transformer-style graph: only its {len(base.linear)} MatMul/Gemm "
                     "layers with constant weights and embedding lookups are quantized; "
                     "attention, LayerNorm and softmax stay float")
    key = reuse.digest("ort-qdq", base.key, excluded, config.per_channel,
                       {n: (float(r.rmin), float(r.rmax)) for n, r in ranges.items()})
    found = reuse.memo().get(key)
    if found is None:
        prepped.write_bytes(base.data)
        _run_quantize_static(prepped, tmp, calib, ranges, base, config, excluded)
        qdq = onnx.load(str(tmp))
        kept_float = float_outputs(qdq) > 0               # before serializing: it edits qdq
        found = (qdq.SerializeToString(), kept_float)
        reuse.memo().put(key, found, len(found[0]))
    if found[1]:
        notes.append("graph outputs kept float (the last layer dequantizes its result)")
    return onnx.load_from_string(found[0])


def _run_quantize_static(prepped: Path, tmp: Path, calib, ranges: dict, base: Base,
                         config: QuantConfig, excluded: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # Every activation range comes from the calibrator; ONNX Runtime's own calibration
    # then runs on one sample only, for any tensor the statistics do not name.
    overrides = {name: _override(r) for name, r in ranges.items()}
    overrides.update({name: _override(r) for name, r in base.ranges})
    # Gemm outputs stay float (QGemm with float output): the classifier's logits, and a
    # transformer's FFN outputs (GELU input, residual), lose most when quantized.
    quantize_static(
        str(prepped), str(tmp), CalibrationReader(list(islice(calib, 1)), None),
        quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
        nodes_to_quantize=list(base.linear) or None,
        extra_options={"TensorQuantOverrides": overrides,
                       "OpTypesToExcludeOutputQuantization": ["Gemm"]},
    )


def _refine(model, qdq, calib, config: QuantConfig, progress: Progress,
            qat_samples, qat_data: str) -> list[str]:
    """The int8 values of ``qdq`` refined in place (saturation guard, weight rounding, bias
    correction, fine-tuning), the graph and its kernels unchanged; returns the notes."""
    notes = []
    coarser, channels = fit_scales(qdq) if config.saturation_guard else (0, 0)
    # effort "fast": one pass over the samples serves the rounding and the bias
    # correction (input means taken before the weights are re-rounded; see EFFORTS)
    shared = config.effort == "fast" and config.bias_correction and config.weight_rounding
    means = dict.fromkeys(bias_inputs(model, qdq)) if shared else None
    if config.weight_rounding:
        rounded, grouped = optimize_weight_rounding(model, qdq, calib,
                                                    config.saturation_guard, means)
        notes.append(f"weight rounding: GPTQ-style, data-aware int8 rounding of "
                     f"{rounded} Conv/Gemm/MatMul layers" + (
                         f" ({grouped} wider than {MAX_COLUMNS} columns rounded in groups of "
                         "input channels, each on its own block of the input's second "
                         "moments)" if grouped else ""))
    if config.bias_correction:
        corrected = correct_weight_bias(model, qdq, calib, means)
        notes.append(f"bias correction: weight-rounding mean shift folded into the "
                     f"bias of {corrected} convolutions")
    if config.qat_epochs:
        qat = finetune_qdq(model, qdq, list(qat_samples or calib), config.qat_epochs,
                           config.qat_lr, progress, learn_ranges=config.qat_ranges)
        notes.append(_qat_note(qat, qat_data))
    pairs, _layers = bound_model(qdq) if config.saturation_guard else (0, 0)
    if channels:
        notes.append(_saturation_note(coarser, channels, pairs))
    elif not config.saturation_guard:
        notes.append("AVX2 saturation guard off: for CPUs with VNNI or ARM only")
    if keep_float(qdq):
        notes.append("FP32 layers read their input through a per-channel "
                     "DequantizeLinear, so ONNX Runtime does not quantize their weights")
    return notes


def _override(r) -> list[dict]:
    """One tensor's ``TensorQuantOverrides`` entry: its range."""
    return [{"rmin": np.float32(r.rmin), "rmax": np.float32(r.rmax)}]


def _saturation_note(coarser: int, channels: int, pairs: int) -> str:
    note = (f"AVX2 saturation guard: no same-sign int8 weight pair exceeds 128, so ONNX "
            f"Runtime's int16 accumulation on CPUs without VNNI cannot saturate; "
            f"{coarser} of {channels} output channels got a coarser weight scale for it")
    return note + (f", {pairs} pairs bounded after rounding" if pairs else "")


def _qat_note(qat: QatResult, data: str) -> str:
    change = (f"{qat.loss_before:#.4g} -> {qat.loss_after:#.4g}" if qat.kept else
              f"not kept: {qat.loss_before:#.4g} before, no lower after")
    return (f"quantization-aware fine-tuning: {qat.layers} weight tensors and {qat.scales} "
            f"activation scales, {qat.epochs} "
            f"epochs on {qat.samples} samples of {data}; {qat.loss.upper()} to FP32 on "
            f"{qat.held_out} held-out samples {change}")


class CalibrationReader:
    """ONNX Runtime CalibrationDataReader over a list of samples, reporting progress."""

    def __init__(self, samples, progress: Progress) -> None:
        self._samples = samples
        self._progress = progress
        self._i = 0

    def get_next(self):
        if self._i >= len(self._samples):
            return None
        sample = self._samples[self._i]
        self._i += 1
        if self._progress is not None:
            self._progress(self._i, len(self._samples))
        return sample

    def rewind(self) -> None:
        self._i = 0
