"""INT8 post-training quantization, per target runtime.

ONNX Runtime: a QDQ graph laid out the way ONNX Runtime's quantizer lays it out (so its CPU
EP fuses Q/DQ pairs into QLinearConv / QGemm / QLinearAdd), per-channel S8 weights, U8
activations with Min-Max ranges (mean of per-sample min/max), then data-aware weight
rounding (rounding.py) and bias correction (bias_correction.py) on the int8 values, so the
graph and its integer kernels stay exactly ONNX Runtime's. The first convolution (it sees
raw pixels) and the classifier head stay FP32 by default for ONNX Runtime (only the first
conv for OpenVINO, whose NNCF head holds up): DESIGN.md measured that the
head's range decides most of the accuracy loss for a few percent of the time.

OpenVINO: NNCF's post-training quantization on the OpenVINO model (Min-Max range
estimation, MIXED preset, bias correction), which OpenVINO's CPU plugin runs as int8.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.calibrate.bias_correction import correct_weight_bias
from edgeopt.calibrate.data import check_finite
from edgeopt.calibrate.errors import CalibrationDataError, CalibrationError
from edgeopt.calibrate.rounding import optimize_weight_rounding
from edgeopt.convert.errors import first_line

Progress = Callable[[int, int], None] | None
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                   "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearSigmoid",
                   "QLinearConcat", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize. ``keep_ends_fp32`` keeps the network's sensitive ends in FP32: the
    first conv and the classifier for ONNX Runtime, the first conv for OpenVINO."""

    calibrator: str = "minmax"
    per_channel: bool = True
    keep_ends_fp32: bool = True
    weight_rounding: bool = True
    bias_correction: bool = True
    exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.calibrator != "minmax":
            msg = f"unknown calibrator '{self.calibrator}' (known: minmax)"
            raise CalibrationError(msg)


@dataclass(frozen=True)
class QuantResult:
    path: Path
    excluded_nodes: tuple[str, ...]
    notes: tuple[str, ...] = ()
    integer_kernels: dict[str, int] = field(default_factory=dict)


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
    from edgeopt.convert import onnx_input_specs

    try:
        return onnx_input_specs(path)
    except Exception as e:  # protobuf DecodeError, OSError...
        msg = f"cannot read ONNX model {Path(path).name}: {str(e).strip()[:200] or type(e).__name__}"
        raise CalibrationError(msg) from e


def integer_kernel_counts(onnx_path: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime's CPU EP actually runs after optimization."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        counts = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    keep = (*INTEGER_KERNELS, "Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul",
            "QuantizeLinear", "DequantizeLinear")
    return {k: counts[k] for k in keep if counts.get(k)}


def _end_nodes(model) -> list[str]:
    """The first Conv fed by a graph input and the last Gemm/MatMul feeding an output."""
    inputs = {i.name for i in model.graph.input}
    names = []
    first = next((n for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs), None)
    if first is not None and first.name:
        names.append(first.name)
    last = next((n for n in reversed(model.graph.node) if n.op_type in {"Gemm", "MatMul"}), None)
    if last is not None and last.name:
        names.append(last.name)
    return names


def _ov_end_nodes(model) -> list[str]:
    """The first convolution of an OpenVINO model, by friendly name.

    NNCF quantizes the classifier head well (its MIXED preset and bias correction): on
    mobilenet-v2, keeping only the first conv FP32 gave the same 0.903 agreement as keeping
    both ends, 9% faster. ONNX Runtime's head must stay FP32 (0.65 when quantized).
    """
    ops = [op for op in model.get_ordered_ops()
           if op.get_type_name() in {"Convolution", "GroupConvolution"}]
    return [ops[0].get_friendly_name()] if ops else []


def _fp32_nodes(config: QuantConfig, find_ends: Callable[[], list[str]]) -> tuple[list[str], list[str]]:
    """The nodes left in FP32 (the user's, plus the model's sensitive ends if asked)."""
    excluded = list(config.exclude_nodes)
    notes = []
    if config.keep_ends_fp32:
        ends = find_ends()
        excluded += [n for n in ends if n not in excluded]
        if ends:
            notes.append(f"kept FP32 (sensitive ends of the network): {', '.join(ends)}")
    return excluded, notes


class _Reader:
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


def _tmp_name(out: Path, suffix: str) -> Path:
    return out.with_name(f".{out.stem}.{os.getpid()}.tmp{suffix}")


def quantize_onnx_for_ort(fp32_onnx: Path, out: Path, calib: Sequence[dict[str, np.ndarray]],
                          config: QuantConfig = QuantConfig(), progress: Progress = None) -> QuantResult:
    """A QDQ INT8 model that ONNX Runtime's CPU EP runs with integer kernels."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_calibration(calib, _onnx_inputs(fp32_onnx))
    out = Path(out)
    prepped = _tmp_name(out, ".prep.onnx")
    tmp = _tmp_name(out, ".onnx")
    try:
        quant_pre_process(str(fp32_onnx), str(prepped), skip_symbolic_shape=True)
        model = onnx.load(str(prepped))
        excluded, notes = _fp32_nodes(config, lambda: _end_nodes(model))
        # Moving-average Min-Max (the mean of per-sample min/max, like NNCF's mean-min-max
        # estimator): measured on mobilenet-v2 at 0.85 top-1 agreement vs 0.78 for global
        # min/max, both with the first conv and head kept FP32.
        quantize_static(
            str(prepped), str(tmp), _Reader(list(calib), progress),
            quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
            extra_options={"CalibMovingAverage": True},
        )
        if config.weight_rounding or config.bias_correction:
            qdq = onnx.load(str(tmp))
            if config.weight_rounding:
                rounded = optimize_weight_rounding(model, qdq, calib)
                notes.append(f"weight rounding: GPTQ-style, data-aware int8 rounding of "
                             f"{rounded} pointwise/depthwise convolutions")
            if config.bias_correction:
                corrected = correct_weight_bias(model, qdq, calib)
                notes.append(f"bias correction: weight-rounding mean shift folded into the "
                             f"bias of {corrected} convolutions")
            onnx.save(qdq, str(tmp))
        os.replace(tmp, out)
    except CalibrationError:
        raise
    except Exception as e:
        text = first_line(e)
        msg = f"ONNX Runtime quantization of {Path(fp32_onnx).name} failed: {text[:300]}"
        raise CalibrationError(msg) from e
    finally:
        prepped.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    notes.append("QDQ, per-channel S8 weights, U8 activations, Min-Max ranges (mean of "
                 f"per-sample min/max) from {len(calib)} samples")
    return QuantResult(out, tuple(excluded), tuple(notes), integer_kernel_counts(out))


def quantize_for_openvino(fp32_model: Path, out_xml: Path, calib: Sequence[dict[str, np.ndarray]],
                          config: QuantConfig = QuantConfig(), progress: Progress = None) -> QuantResult:
    """NNCF post-training INT8 quantization of the OpenVINO model, saved as IR."""
    import logging

    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)
    core = ov.Core()
    model = core.read_model(str(fp32_model))
    specs = [(p.get_any_name(), p.get_element_type().to_dtype().name,
              tuple(d.get_length() if d.is_static else "?" for d in p.get_partial_shape()))
             for p in model.inputs]
    check_calibration(calib, specs)
    samples = list(calib)
    done = {"n": 0}

    def transform(sample):
        done["n"] += 1
        if progress is not None:
            progress(min(done["n"], len(samples)), len(samples))
        return sample

    excluded, notes = _fp32_nodes(config, lambda: _ov_end_nodes(model))
    ignored = nncf.IgnoredScope(names=excluded, validate=False) if excluded else None
    out_xml = Path(out_xml)
    tmp = _tmp_name(out_xml, ".xml")
    try:
        # Asymmetric activations (MIXED) and full bias correction: measured on
        # mobilenet-v2 (300 crops) at 0.90 top-1 agreement vs 0.877 for NNCF's defaults.
        quantized = nncf.quantize(model, nncf.Dataset(samples, transform),
                                  subset_size=len(samples),
                                  preset=nncf.QuantizationPreset.MIXED,
                                  fast_bias_correction=False,
                                  **({"ignored_scope": ignored} if ignored else {}))
        ov.save_model(quantized, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), out_xml.with_suffix(".bin"))
        os.replace(tmp, out_xml)
    except Exception as e:
        text = first_line(e)
        msg = f"NNCF quantization of {Path(fp32_model).name} failed: {text[:300]}"
        raise CalibrationError(msg) from e
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    notes.append(f"NNCF {nncf.__version__} post-training quantization (Min-Max ranges, "
                 f"MIXED preset, bias correction) from {len(samples)} samples; "
                 f"{fq} FakeQuantize ops")
    return QuantResult(out_xml, tuple(excluded), tuple(notes))
