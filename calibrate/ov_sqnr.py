"""SQNR of NNCF's INT8 OpenVINO model against the FP32 one: per quantized activation (the
report's worst layers) and per model output (the recurrent-op check of quantize_ov.py).

The FP32 activations are captured first and kept on disk (:mod:`calibrate.spill`), then
the INT8 model runs: one compiled model at a time, and one sample's activations in
memory. With a key for the FP32 model, its activations are kept for the next build of
the same model on the same samples (:mod:`calibrate.ov_reuse`), e.g. the build without
the saturation guard, whose FakeQuantize ops read the same tensors.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from edgeopt.calibrate.ov_reuse import model_digest, reuse
from edgeopt.calibrate.spill import SpilledSamples
from edgeopt.runtimes import capture_openvino, read_openvino_model

__all__ = ["artifact_layer_sqnr_ov", "ov_layer_sqnr", "worst_output_sqnr"]


def ov_layer_sqnr(fp32_model, int8_model, samples: Sequence[dict[str, np.ndarray]],
                  limit: int = 8, fp32_key: Hashable | None = None) -> list[dict]:
    """SQNR of each activation FakeQuantize's output against the same tensor of the FP32
    OpenVINO model, over ``limit`` samples; worst first (the rows of
    :func:`edgeopt.calibrate.sensitivity.layer_sqnr`). ``fp32_key`` names the FP32 model's
    content: its activations are then kept for the next call with the same key and
    ``samples``."""
    fp32_outputs = {name: out for op in fp32_model.get_ops() for out in op.outputs()
                    for name in out.get_names()}
    pairs = []
    for fq in int8_model.get_ops():
        if fq.get_type_name() != "FakeQuantize":
            continue
        source = fq.input(0).get_source_output()
        if source.get_node().get_type_name() == "Constant":
            continue
        name = next((n for n in sorted(source.get_names()) if n in fp32_outputs), None)
        if name is not None:
            pairs.append((name, fq))
    if not pairs:
        return []
    subset = samples[:limit]
    names = tuple(name for name, _ in pairs)

    def fp32_run():
        return _Activations(capture_openvino(fp32_model, subset,
                                              [fp32_outputs[n] for n in names]))

    reference = (fp32_run() if fp32_key is None else
                 reuse("ov-fp32-activations", (fp32_key, names, limit), fp32_run, samples))
    signal, noise = _signal_noise(reference,
                                  capture_openvino(int8_model, subset,
                                                   [fq.output(0) for _, fq in pairs]),
                                  len(pairs))
    rows = []
    for (name, fq), sig, err in zip(pairs, signal, noise, strict=True):
        db = 10 * np.log10(max(sig, 1e-30) / err) if err > 0 else float("inf")
        producer = fq.input(0).get_source_output().get_node()
        rows.append({"tensor": name, "node": producer.get_friendly_name(),
                     "readers": [], "op": producer.get_type_name(),
                     "sqnr_db": round(float(db), 2), "input_sqnr_db": None})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def artifact_layer_sqnr_ov(fp32_model, int8_xml, samples: Sequence[dict[str, np.ndarray]]
                           ) -> tuple[dict, ...]:
    """The rows :func:`ov_layer_sqnr` gives an INT8 IR against its FP32 model, from their
    files: what ``quantize_for_openvino(..., sqnr=False)`` left out (the FP32 activations
    are the build's, when it ran in this process on the same samples)."""
    return tuple(ov_layer_sqnr(read_openvino_model(fp32_model), read_openvino_model(int8_xml),
                               samples, fp32_key=model_digest(fp32_model)))


def worst_output_sqnr(fp32_model, int8_model, samples: Sequence[dict[str, np.ndarray]]
                      ) -> float:
    """The lowest SQNR (dB) of any model output of ``int8_model`` against ``fp32_model``."""
    signal, noise = _signal_noise(_Activations(capture_openvino(fp32_model, samples)),
                                  capture_openvino(int8_model, samples),
                                  len(fp32_model.outputs))
    return float(min(10 * np.log10(max(s, 1e-30) / max(n, 1e-30)) for s, n in
                     zip(signal, noise, strict=True)))


class _Activations:
    """Each sample's captured arrays in a temporary file, read back one array at a time."""

    def __init__(self, runs) -> None:
        self._store = SpilledSamples()
        self.samples = self.count = 0
        for outs in runs:
            for a in outs:
                self._store.append({"a": a})
            self.samples, self.count = self.samples + 1, len(outs)

    def get(self, sample: int, index: int) -> np.ndarray:
        return self._store[sample * self.count + index]["a"]


def _signal_noise(reference: _Activations, runs, count: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``count`` captured tensors: the sum of squares of the reference, and of
    its difference to ``runs`` (in float64, sample by sample, one tensor in memory)."""
    signal, noise = np.zeros(count), np.zeros(count)
    scratch = [np.empty(0), np.empty(0)]
    done = 0
    for i, got in enumerate(runs):
        # smallest first: each array is dropped once used, so the largest meets the
        # float64 buffers with few others still held
        for j in sorted(range(count), key=lambda k, got=got: got[k].size):
            y, got[j] = got[j], None
            sig, err = _sums(reference.get(i, j), y, scratch)
            signal[j] += sig
            noise[j] += err
        done += 1
    if done != reference.samples:
        msg = f"{done} samples captured against {reference.samples}"
        raise ValueError(msg)
    return signal, noise


def _sums(x: np.ndarray, y: np.ndarray, scratch: list[np.ndarray]) -> tuple[float, float]:
    """``sum(x * x)`` and ``sum((x - y) ** 2)`` in float64, as numpy sums fresh arrays of
    ``x``'s shape, in two reused buffers."""
    size = int(np.prod(x.shape))
    for k in (0, 1):
        if scratch[k].size < size:
            scratch[k] = np.empty(size)
    x64, t = (scratch[k][:size].reshape(x.shape) for k in (0, 1))
    np.copyto(x64, x)
    np.multiply(x64, x64, out=t)
    sig = float(np.sum(t))
    np.copyto(t, y)
    np.subtract(x64, t, out=t)
    np.square(t, out=t)
    return sig, float(np.sum(t))
