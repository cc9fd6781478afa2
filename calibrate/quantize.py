"""INT8 post-training quantization, per target runtime.

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
constraint. Nodes kept FP32 are guarded against ONNX Runtime
quantizing their weights at load time (``_keep_float``). The graph's outputs stay float
(a QGemm with float output): quantizing the logits to 8 bits flips close top-1 calls
(mobilenet-v2, before equalization: 0.63 top-1 agreement with them quantized, 0.87 without).

With ``QuantConfig.qat_epochs`` the QDQ graph is then fine-tuned (qat.py).

OpenVINO: NNCF's post-training quantization on the OpenVINO model (PERFORMANCE preset, full
bias correction), then every per-tensor activation FakeQuantize gets the calibrator's range
for its tensor: quantize_ov.py.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.calibrate.bias_correction import _run_tensors, correct_weight_bias
from edgeopt.calibrate.calibrators import (
    CALIBRATORS,
    DEFAULT_CALIBRATOR,
    compute_ranges,
)
from edgeopt.calibrate.data import check_finite
from edgeopt.calibrate.equalize import equalize_depthwise_inputs
from edgeopt.calibrate.errors import CalibrationDataError, CalibrationError
from edgeopt.calibrate.qat import QatResult, finetune_qdq
from edgeopt.calibrate.rounding import optimize_weight_rounding
from edgeopt.calibrate.saturation import bound_model, fit_scales
from edgeopt.calibrate.stats import TensorStats, collect_stats
from edgeopt.convert.errors import first_line

Progress = Callable[[int, int], None] | None
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                   "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearSigmoid",
                   "QLinearConcat", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize. ``fp32_stem`` (ONNX Runtime) keeps a CNN's stem FP32: see
    :func:`stem_block`. ``keep_first_fp32`` keeps the first convolution (it sees raw
    pixels) in FP32 on both runtimes, off by default: in OpenVINO it costs 9-10% of the
    p50, and in ONNX Runtime a stem, when there is one, already holds it.
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

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATORS:
            msg = f"unknown calibrator '{self.calibrator}' (known: {', '.join(CALIBRATORS)})"
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


def _first_conv(model) -> list[str]:
    """The first Conv fed by a graph input (ONNX)."""
    inputs = {i.name for i in model.graph.input}
    first = next((n for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs), None)
    return [first.name] if first is not None and first.name else []


STEM_MAX_CONVS = 3          # stem conv, depthwise, projection (MobileNet's first block)
STEM_MAX_SHARE = 0.1        # and at most this share of the model's convolutions


def stem_block(model) -> list[str]:
    """The stem of an inverted-residual CNN, left FP32 by default (``QuantConfig.fp32_stem``):
    the first Conv (it reads a graph input) and the single-reader chain of Convs after it,
    through Relu/Clip, up to and including the first Conv that narrows the channels
    (MobileNetV2: the 3->32 stem, the 32-channel depthwise, the projection to 16 channels).

    The int8 part then starts at the stem's narrowest tensor, where converting to int8
    costs least, and the early layers' quantization error, which every later layer carries
    forward, is gone: on mobilenet-v2 the first eight activation quantizers hold a third of
    the logits' quantization noise, these are small convolutions where ONNX Runtime's int8
    kernels gain little, and keeping them FP32 lowered the KL to FP32 by 25% (four
    calibration draws) at 0.97-1.02x the all-int8 p50. ONNX Runtime only: in OpenVINO the
    same stem cost 1-3% of the p50 (three interleaved runs) and left mobilenet-v2's top-1
    agreement where it was (0.893). Empty when the chain branches, meets another op, has no
    narrowing Conv within ``STEM_MAX_CONVS``, or would be more than ``STEM_MAX_SHARE`` of
    the model's convolutions."""
    inputs = {i.name for i in model.graph.input}
    inits = {i.name: i for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    node = next((n for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs), None)
    chain: list[str] = []
    while node is not None and len(chain) < STEM_MAX_CONVS:
        if node.op_type == "Conv":
            weight = inits.get(node.input[1]) if len(node.input) > 1 else None
            if weight is None or len(weight.dims) != 4 or not node.name:
                return []
            chain.append(node.name)
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if weight.dims[0] < weight.dims[1] * group:
                convs = sum(n.op_type == "Conv" for n in model.graph.node)
                return chain if len(chain) <= STEM_MAX_SHARE * convs else []
        elif node.op_type not in {"Relu", "Clip"}:
            return []
        after = readers.get(node.output[0], [])
        if len(after) != 1 or node.output[0] in outputs:
            return []
        node = after[0]
    return []


def _linear_nodes(model) -> list[str]:
    """For a graph without convolutions (a transformer): its MatMul/Gemm nodes whose weights
    are constants, and its embedding lookups (Gather from a constant table). Quantizing only
    those keeps MiniLM's embeddings at 0.994 cosine to FP32 and runs faster than
    quantize_static's all-op graph (0.33 cosine); the int8 embedding table takes the file
    from 57 to 23 MB at the same accuracy. Empty for CNNs."""
    if any(n.op_type == "Conv" for n in model.graph.node):
        return []
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    linear = [n.name for n in model.graph.node
              if n.op_type in {"MatMul", "Gemm"} and n.name and len(n.input) > 1
              and n.input[1] in constants]
    if not linear:
        return []
    return linear + [n.name for n in model.graph.node
                     if n.op_type == "Gather" and n.name and n.input[0] in constants]


def _fp32_nodes(config: QuantConfig, find_first: Callable[[], list[str]],
                find_stem: Callable[[], list[str]] = list) -> tuple[list[str], list[str]]:
    """The nodes left in FP32 (the user's, the stem unless ``fp32_stem`` is off, the first
    convolution if asked)."""
    excluded = list(config.exclude_nodes)
    notes = []
    if config.fp32_stem:
        stem = find_stem()
        excluded += [n for n in stem if n not in excluded]
        if stem:
            notes.append(f"kept FP32 (the stem, up to its first narrowing convolution; "
                         f"--int8-stem quantizes it): {', '.join(stem)}")
    if config.keep_first_fp32:
        first = find_first()
        excluded += [n for n in first if n not in excluded]
        if first:
            notes.append(f"kept FP32 (first convolution, sees raw input): {', '.join(first)}")
    return excluded, notes


def _keep_float(model) -> int:
    """Keep FP32 convolutions and Gemms float in ONNX Runtime; returns how many needed it.

    ONNX Runtime's ``WeightBiasQuantization`` optimizer (session level 1, on by default)
    takes any Conv/ConvTranspose/Gemm with float weights whose input comes from a
    per-tensor DequantizeLinear (and whose output feeds a QuantizeLinear) for an
    unfinished QDQ unit, and quantizes its weights to per-tensor int8 when the session
    loads: a layer excluded to stay FP32 silently runs as a coarse QLinearConv. It only
    takes a scalar input scale, so each such node gets a DequantizeLinear of its own with
    the same scale and zero point repeated per channel (axis 1): the same values, and the
    node stays float.
    """
    from onnx import helper, numpy_helper

    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return 0                                      # no per-axis DequantizeLinear before 13
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    done = 0
    for node in list(model.graph.node):
        if node.op_type not in {"Conv", "ConvTranspose", "Gemm"} or len(node.input) < 2:
            continue
        weight, dq = inits.get(node.input[1]), producer.get(node.input[0])
        if weight is None or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if len(dq.input) < 2 or dq.input[1] not in inits or any(
                name not in inits for name in dq.input[2:3] if name):
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        if scale.size != 1:
            continue
        attrs = {a.name: a.i for a in node.attribute if a.name in {"group", "transB"}}
        if node.op_type == "Conv":
            channels = weight.dims[1] * attrs.get("group", 1)
        elif node.op_type == "ConvTranspose":
            channels = weight.dims[0]
        else:
            channels = weight.dims[1] if attrs.get("transB", 0) else weight.dims[0]
        name = f"{node.input[0]}_float_{node.name or node.output[0]}"
        model.graph.initializer.append(numpy_helper.from_array(
            np.full(channels, scale.reshape(-1)[0], scale.dtype), f"{name}_scale"))
        per_channel = [dq.input[0], f"{name}_scale"]
        if len(dq.input) > 2 and dq.input[2]:
            zero = numpy_helper.to_array(inits[dq.input[2]])
            model.graph.initializer.append(numpy_helper.from_array(
                np.full(channels, zero.reshape(-1)[0], zero.dtype), f"{name}_zero_point"))
            per_channel.append(f"{name}_zero_point")
        own = helper.make_node("DequantizeLinear", per_channel, [name], axis=1,
                               name=f"{name}_DequantizeLinear")
        model.graph.node.insert(list(model.graph.node).index(node), own)
        node.input[0] = name
        done += 1
    if done:
        _drop_unread(model)
    return done


def _drop_unread(model) -> None:
    """Remove DequantizeLinear nodes whose output no one reads, then unread initializers."""
    read = {name for n in model.graph.node for name in n.input}
    read |= {o.name for o in model.graph.output}
    for node in [n for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and not set(n.output) & read]:
        model.graph.node.remove(node)
    read = {name for n in model.graph.node for name in n.input}
    for init in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(init)


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


def activation_stats(fp32_onnx: Path, calib: Sequence[dict[str, np.ndarray]],
                     progress: Progress = None) -> dict[str, TensorStats]:
    """Bounded-memory statistics of every float tensor of the FP32 ONNX model."""
    try:
        return collect_stats(Path(fp32_onnx), calib, progress=progress)
    except Exception as e:
        msg = f"calibration run of {Path(fp32_onnx).name} failed: {first_line(e)[:300]}"
        raise CalibrationError(msg) from e


def _float_outputs(model) -> int:
    """Take the graph outputs out of quantization: Q -> DQ right before an output is removed,
    so the last layer gives float (QGemm/QLinearMatMul with float output). Returns how many."""
    producer = {o: n for n in model.graph.node for o in n.output}
    removed = 0
    for out in model.graph.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        consumers = [n for n in model.graph.node if source in n.input and n is not q]
        if consumers or source in {o.name for o in model.graph.output}:
            continue                                   # the float tensor is used elsewhere too
        producer[source].output[list(producer[source].output).index(source)] = out.name
        model.graph.node.remove(q)
        model.graph.node.remove(dq)
        removed += 1
    _drop_unread(model)
    return removed


def layer_sqnr(fp32_model, qdq_model, samples: Sequence[dict[str, np.ndarray]],
               limit: int = 8) -> list[dict]:
    """SQNR of each quantized activation (its DequantizeLinear output) against the same
    tensor in the FP32 model, over ``limit`` samples; worst first. Errors accumulate from
    the layers before, as they do at run time."""
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in qdq_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {i.name for i in qdq_model.graph.initializer}
    fp32_names = {o for n in fp32_model.graph.node for o in n.output}
    fp32_names |= {i.name for i in fp32_model.graph.input}
    pairs = {}
    for node in qdq_model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        if node.input[0] not in fp32_names:
            continue
        dq = next((c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"), None)
        if dq is not None:
            pairs[node.input[0]] = dq.output[0]
    if not pairs:
        return []
    samples = list(samples)[:limit]
    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    fp32_runs = _run_tensors(fp32_model, list(pairs), samples)
    q_runs = _run_tensors(qdq_model, list(pairs.values()), samples)
    for ref, got in zip(fp32_runs, q_runs, strict=True):
        for name, dq_name in pairs.items():
            a = ref[name].astype(np.float64)
            signal[name] += float(np.sum(a * a))
            noise[name] += float(np.sum((a - got[dq_name].astype(np.float64)) ** 2))
    db = {name: 10 * np.log10(max(signal[name], 1e-30) / noise[name]) if noise[name] > 0
          else float("inf") for name in pairs}
    rows = []
    for name in pairs:
        node = producer.get(name)
        # SQNR of the node's quantized inputs (DQ <- Q <- tensor), to tell the error a
        # layer adds from the error it inherits.
        inherited = []
        for edge in (node.input if node is not None else ()):
            dq = producer.get(edge)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in db:
                inherited.append(db[q.input[0]])
        # the nodes that read the quantized tensor: with its producer, the group that
        # returns to FP32 together (ONNX Runtime quantizes a tensor for any quantized reader)
        readers = [c.name for q in consumers.get(name, []) if q.op_type == "QuantizeLinear"
                   for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"
                   for c in consumers.get(d.output[0], []) if c.name]
        rows.append({"tensor": name, "node": node.name if node is not None else "(input)",
                     "readers": list(dict.fromkeys(readers)),
                     "op": node.op_type if node is not None else "input",
                     "sqnr_db": round(float(db[name]), 2),
                     "input_sqnr_db": round(float(min(inherited)), 2) if inherited else None})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def sensitivity_order(rows: Sequence[dict], limit_db: float = 60.0) -> list[tuple[str, ...]]:
    """Groups of nodes (a quantized tensor's producer and readers), most damaging first: by
    the SQNR lost between the producer's quantized inputs and the tensor (a tensor fed by
    float data, or a graph input, counts from ``limit_db``)."""
    scored = []
    for r in rows:
        before = r["input_sqnr_db"] if r["input_sqnr_db"] is not None else limit_db
        group = tuple(n for n in (r["node"] if r["op"] != "input" else "", *r["readers"]) if n)
        if group:
            scored.append((min(before, limit_db) - min(r["sqnr_db"], limit_db), group))
    return list(dict.fromkeys(g for _, g in sorted(scored, key=lambda t: -t[0])))


def quantize_onnx_for_ort(fp32_onnx: Path, out: Path, calib: Sequence[dict[str, np.ndarray]],
                          config: QuantConfig = QuantConfig(), progress: Progress = None,
                          stats: dict[str, TensorStats] | None = None,
                          qat_samples: Sequence[dict[str, np.ndarray]] | None = None,
                          qat_note: str = "") -> QuantResult:
    """A QDQ INT8 model that ONNX Runtime's CPU EP runs with integer kernels.

    ``stats`` (from :func:`activation_stats` on ``fp32_onnx``) saves the calibration pass
    when the caller quantizes the same model more than once. With ``config.qat_epochs``
    the int8 weights are then fine-tuned on ``qat_samples`` (default: ``calib``), which
    ``qat_note`` describes in the notes.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inputs = _onnx_inputs(fp32_onnx)
    check_calibration(calib, inputs)
    if stats is None:
        stats = activation_stats(fp32_onnx, calib, progress)
    ranges = compute_ranges(stats, config.calibrator, inputs=[spec[0] for spec in inputs])
    out = Path(out)
    prepped = _tmp_name(out, ".prep.onnx")
    tmp = _tmp_name(out, ".onnx")
    try:
        quant_pre_process(str(fp32_onnx), str(prepped), skip_symbolic_shape=True)
        model = onnx.load(str(prepped))
        excluded, notes = _fp32_nodes(config, lambda: _first_conv(model),
                                      lambda: stem_block(model))
        # Every activation range comes from the calibrator; ONNX Runtime's own calibration
        # then runs on one sample only, for any tensor the statistics do not name.
        overrides = {name: _override(r) for name, r in ranges.items()}
        linear = _linear_nodes(model)
        if config.equalize and not linear:
            equalized = equalize_depthwise_inputs(model, calib)
            if equalized:
                onnx.save(model, str(prepped))
                overrides.update(_equalized_overrides(model, prepped, equalized, calib,
                                                      config.calibrator))
                notes.append(f"depthwise inputs equalized: {len(equalized)} tensors rescaled "
                             "per channel into the convolutions on both sides, then calibrated")
        if linear:
            notes.append(f"transformer-style graph: only its {len(linear)} MatMul/Gemm layers "
                         "with constant weights and embedding lookups are quantized; "
                         "attention, LayerNorm and softmax stay float")
        # Gemm outputs stay float (QGemm with float output): the classifier's logits, and a
        # transformer's FFN outputs (GELU input, residual), lose most when quantized.
        quantize_static(
            str(prepped), str(tmp), _Reader(list(calib)[:1], None),
            quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
            nodes_to_quantize=linear or None,
            extra_options={"TensorQuantOverrides": overrides,
                           "OpTypesToExcludeOutputQuantization": ["Gemm"]},
        )
        qdq = onnx.load(str(tmp))
        if _float_outputs(qdq):
            notes.append("graph outputs kept float (the last layer dequantizes its result)")
        coarser, channels = fit_scales(qdq) if config.saturation_guard else (0, 0)
        if config.weight_rounding:
            rounded = optimize_weight_rounding(model, qdq, calib, config.saturation_guard)
            notes.append(f"weight rounding: GPTQ-style, data-aware int8 rounding of "
                         f"{rounded} Conv/Gemm/MatMul layers")
        if config.bias_correction:
            corrected = correct_weight_bias(model, qdq, calib)
            notes.append(f"bias correction: weight-rounding mean shift folded into the "
                         f"bias of {corrected} convolutions")
        if config.qat_epochs:
            qat = finetune_qdq(model, qdq, list(qat_samples or calib), config.qat_epochs,
                               config.qat_lr, progress, learn_ranges=config.qat_ranges)
            notes.append(_qat_note(qat, qat_note or f"{len(calib)} calibration samples"))
        pairs, _layers = bound_model(qdq) if config.saturation_guard else (0, 0)
        if channels:
            notes.append(_saturation_note(coarser, channels, pairs))
        elif not config.saturation_guard:
            notes.append("AVX2 saturation guard off (--no-saturation-guard): for CPUs with VNNI or ARM only")
        if _keep_float(qdq):
            notes.append("FP32 layers read their input through a per-channel "
                         "DequantizeLinear, so ONNX Runtime does not quantize their weights")
        sqnr = layer_sqnr(model, qdq, calib)
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
    notes.append(f"QDQ, per-channel S8 weights, U8 activations, '{config.calibrator}' ranges "
                 f"for {len(ranges)} tensors from {len(calib)} samples")
    return QuantResult(out, tuple(excluded), tuple(notes), integer_kernel_counts(out),
                       tuple(sqnr), len(ranges))


def _override(r) -> list[dict]:
    """One tensor's ``TensorQuantOverrides`` entry: its range."""
    return [{"rmin": np.float32(r.rmin), "rmax": np.float32(r.rmax)}]


def _equalized_overrides(model, path: Path, equalized, calib, calibrator: str) -> dict:
    """The calibrator's ranges of the equalized tensors, from the equalized model (the
    statistics of the original no longer describe them). Each range also goes to the
    convolution output its activation is folded into."""
    ranges = compute_ranges(collect_stats(path, calib, names=list(equalized)), calibrator)
    producer = {o: n for n in model.graph.node for o in n.output}
    overrides = {}
    for name, r in ranges.items():
        for tensor in (name, producer[name].input[0]):
            overrides[tensor] = _override(r)
    return overrides


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
