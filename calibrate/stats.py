"""Activation statistics in bounded memory: exact min/max plus a reservoir per tensor.

Per tensor: the exact global min/max, the running mean of each sample's min/max, and a
reservoir sample (Vitter's algorithm R, vectorised per sample) of fixed size for the
calibrators that need the distribution; for the inputs of the linear ops, the mean of each
channel over the first MEAN_SAMPLES samples (the OpenVINO saturation guard's bias
follow-up reads them: quantize_ov.py); for the inputs of grouped convolutions, each
sample's channel maxima up to PEAKS_BYTES (the equalized ranges: ort_base.py). Memory is
fixed by the reservoir size and that bound, never by the number of samples, and samples
are consumed as they come (any iterable works; a few run at once: capture_onnx).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_RESERVOIR = 1 << 16
SHORT_ROWS = 256           # channel maxima of maps this small: across channels
MEAN_SAMPLES = 32          # channel means of the linear ops' inputs: over this many samples
# the depthwise inputs' per-sample channel maxima are kept up to this many bytes in all
# (mobilenet-v2: 28 KB a sample, so ~290 samples); beyond, none are kept, and the
# equalized tensors' ranges come from a pass of their own (ort_base.equalized_ranges)
PEAKS_BYTES = 8 << 20


@dataclass
class TensorStats:
    name: str
    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0                                  # values seen
    reservoir: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    samples: int = 0                                # calibration samples seen
    sum_min: float = 0.0                            # sums of per-sample min / max
    sum_max: float = 0.0
    # NCHW tensors: each channel's max over every sample (depthwise equalization's m_i)
    channel_max: np.ndarray | None = None
    # inputs of Conv (axis 1) and MatMul / Gemm (last axis): the first MEAN_SAMPLES samples'
    # channel means, summed, and how many
    channel_sum: np.ndarray | None = None
    channel_samples: int = 0
    # depthwise inputs (equalize.py): each sample's channel maxima, a row per sample, from
    # which the equalized tensor's min-max statistics follow without another pass
    sample_peaks: np.ndarray | None = None

    def sample(self) -> np.ndarray:
        return self.reservoir

    @property
    def mean_min(self) -> float:
        return self.sum_min / self.samples if self.samples else self.min

    @property
    def mean_max(self) -> float:
        return self.sum_max / self.samples if self.samples else self.max

    @property
    def channel_mean(self) -> np.ndarray | None:
        """Each channel's mean over the first MEAN_SAMPLES samples (per-sample means,
        averaged), or None."""
        if self.channel_sum is None or not self.channel_sum.size or not self.channel_samples:
            return None
        return self.channel_sum / self.channel_samples

    def update(self, flat: np.ndarray, capacity: int, rng: np.random.Generator,
               channels: np.ndarray | None = None) -> None:
        """Fold one sample's values in: extremes, per-sample means, reservoir (algorithm R;
        none with ``capacity`` 0); ``channels``: the sample's per-channel maxima, when the
        tensor has channels."""
        if not flat.size:
            return
        if channels is not None:
            self.channel_max = channels if self.channel_max is None else np.maximum(
                self.channel_max, channels)
        lo = float(flat.min())
        hi = float(flat.max()) if channels is None else float(channels.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.samples += 1
        self.sum_min += lo
        self.sum_max += hi
        seen = self.count
        self.count += flat.size
        if not capacity:                                    # no reservoir kept
            return
        if self.reservoir.size < capacity:                  # still filling
            room = capacity - self.reservoir.size
            self.reservoir = np.concatenate([self.reservoir, flat[:room]])
            flat, seen = flat[room:], seen + room
            if not flat.size:
                return
        # Algorithm R keeps value i of the stream with probability capacity / (i + 1), in a
        # uniform slot. Over this sample's values that is, in expectation,
        # capacity * ln((seen + n) / seen) of them: draw that many (Poisson), at uniform
        # positions of the sample, without a random number per value.
        n = flat.size
        k = min(int(rng.poisson(capacity * np.log((seen + n) / seen))), n, capacity)
        if k:
            take = rng.choice(n, size=k, replace=False)
            self.reservoir[rng.choice(capacity, size=k, replace=False)] = flat[take]


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
        if node.op_type in {"Constant", "Shape"}:
            continue
        names += [o for o in node.output if o and types.get(o) in float_types]
    return list(dict.fromkeys(names))


def _linear_inputs(model) -> dict[str, int]:
    """The activation input of each Conv (channel axis 1), MatMul and Gemm (last axis; not a
    Gemm that transposes it) -> the axis of its channels; a tensor two kinds of op read
    with different axes is left out."""
    axes: dict[str, int | None] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            axis = 1
        elif node.op_type == "MatMul" or (node.op_type == "Gemm" and not any(
                a.name == "transA" and a.i for a in node.attribute)):
            axis = -1
        else:
            continue
        name = node.input[0]
        axes[name] = axis if axes.get(name, axis) == axis else None
    return {name: axis for name, axis in axes.items() if axis is not None}


def _grouped_conv_inputs(model) -> list[str]:
    """The data inputs of grouped convolutions (depthwise ones among them): the tensors
    equalize.py may rescale per channel."""
    return [n.input[0] for n in model.graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def channel_mean(value: np.ndarray, axis: int = 1) -> np.ndarray | None:
    """The mean of each channel (``axis``) of one sample's tensor, summed in float64
    without a float64 copy of it (a vector's own values; None for a scalar, or no values)."""
    value = np.asarray(value)
    if value.ndim < 1 or not value.size:
        return None
    axis %= value.ndim
    return value.mean(axis=tuple(i for i in range(value.ndim) if i != axis), dtype=np.float64)


def _channel_peaks(value: np.ndarray) -> np.ndarray | None:
    """Per-channel maxima of an NCHW tensor (None for other ranks, or no values)."""
    if value.ndim != 4 or not value.size:
        return None
    if value.shape[0] == 1:                  # rows of contiguous values: a fast reduction
        rows = value.reshape(value.shape[1], -1)
        if rows.shape[1] <= SHORT_ROWS:      # numpy reduces short rows one at a time
            return np.ascontiguousarray(rows.T).max(axis=0)     # (6x faster on 7x7 maps)
        return rows.max(axis=1)
    return value.max(axis=(0, 2, 3))


def only_what_makes(model, names: Sequence[str]):
    """``model`` cut to the nodes that compute ``names`` (no graph outputs left: the
    capture adds ``names``), so a pass that needs early tensors does not run the rest;
    each node that stays computes what it did. ``model`` itself when it has subgraphs
    (their outer-scope reads are not followed)."""
    import onnx

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in model.graph.node for a in n.attribute):
        return model
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    needed: set[int] = set()
    todo = list(names)
    while todo:
        index = producer.get(todo.pop())
        if index is not None and index not in needed:
            needed.add(index)
            todo.extend(model.graph.node[index].input)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.node[:]
    cut.graph.node.extend(n for i, n in enumerate(model.graph.node) if i in needed)
    read = {name for n in cut.graph.node for name in n.input}
    kept = [i for i in cut.graph.initializer if i.name in read]
    del cut.graph.initializer[:]
    cut.graph.initializer.extend(kept)
    del cut.graph.output[:]
    return cut


def collect_stats(onnx_path, samples: Iterable[dict[str, np.ndarray]],
                  reservoir: int = DEFAULT_RESERVOIR, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None,
                  total: int | None = None,
                  names: Sequence[str] | None = None) -> dict[str, TensorStats]:
    """Run the FP32 model (a path, or a ``ModelProto``, not modified) over ``samples``
    (consumed one at a time) and gather per-tensor statistics of every float tensor, or
    of ``names`` (then only the nodes that compute them run); ``reservoir`` 0 keeps no
    reservoir; ``total`` is only for progress."""
    import onnx

    from edgeopt.runtimes import capture_onnx

    model = onnx.load(str(onnx_path)) if isinstance(onnx_path, (str, Path)) else onnx_path
    means: dict[str, int] = {}
    peaks: dict[str, list[np.ndarray]] = {}
    kept = 0
    if names is None:
        names = _float_tensors(model)
        means = _linear_inputs(model)         # the whole model runs: its linear inputs too
        peaks = {name: [] for name in _grouped_conv_inputs(model)}
    else:
        names = list(names)
        model = only_what_makes(model, names)
    runs = capture_onnx(model, samples, names)
    del model
    rng = np.random.default_rng(seed)
    stats = {n: TensorStats(n) for n in names}
    if total is None and isinstance(samples, Sequence):
        total = len(samples)
    for i, values in enumerate(runs):
        for name, value in zip(names, values, strict=True):
            value = np.asarray(value, dtype=np.float32)
            channels = _channel_peaks(value)
            stats[name].update(value.ravel(), reservoir, rng, channels)
            if name in means and i < MEAN_SAMPLES:
                _add_means(stats[name], channel_mean(value, means[name]))
            if name in peaks and channels is not None and value.size:
                peaks[name].append(channels)
                kept += channels.nbytes
        if kept > PEAKS_BYTES:                # memory that grows with the samples: stop
            peaks, kept = {}, 0
        if progress is not None:
            progress(i + 1, total or i + 1)
    for name, rows in peaks.items():
        if rows and len(rows) == stats[name].samples and len({r.shape for r in rows}) == 1:
            stats[name].sample_peaks = np.stack(rows)
    return stats


def _add_means(stats: TensorStats, mean: np.ndarray | None) -> None:
    """Fold one sample's channel means in; channels that change between samples leave
    none (an empty array)."""
    if mean is None:
        return
    if stats.channel_sum is None and not stats.channel_samples:
        stats.channel_sum = mean
    elif stats.channel_sum is not None and stats.channel_sum.shape == mean.shape:
        stats.channel_sum = stats.channel_sum + mean
    else:
        stats.channel_sum = np.zeros(0)
    stats.channel_samples += 1
