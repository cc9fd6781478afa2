"""Run a model on the host CPU to see inside it: what build steps (calibration,
quantization checks) need from a runtime, as opposed to benchmarking.

- :func:`capture_onnx`: ONNX Runtime, any intermediate tensors exposed as extra graph
  outputs, the graph run as written (no fusions), one sample at a time.
- :func:`capture_openvino`: OpenVINO's CPU plugin on an ``openvino.Model``, float layers
  in FP32 unless told otherwise.
- :func:`optimized_op_counts`: the operators ONNX Runtime's CPU EP runs after its own
  graph optimizations (which Q/DQ pairs became integer kernels).
- :func:`onnx_input_specs`, :func:`read_openvino_model`: a model's inputs, an IR's model.

onnx, onnxruntime and openvino are imported inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from edgeopt.runtimes._many import threaded, workers
from edgeopt.runtimes.base import TensorSpec

if TYPE_CHECKING:
    import onnx
    import openvino

__all__ = [
    "OPENVINO_F32",
    "capture_onnx",
    "capture_openvino",
    "onnx_input_specs",
    "optimized_op_counts",
    "read_openvino_model",
]

# OpenVINO's CPU plugin may run float layers in bf16/f16 on its own; statistics are FP32.
OPENVINO_F32 = MappingProxyType({"INFERENCE_PRECISION_HINT": "f32"})


def _ort_session(model: bytes | str, *, optimize: bool, threads: int | None,
                 optimized_path: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _serialized_with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> bytes:
    """``model`` serialized with ``tensors`` added as graph outputs; ``model`` itself is
    left as it was (no copy of a large model is made)."""
    import onnx

    first = len(model.graph.output)
    have = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    try:
        return model.SerializeToString()
    finally:
        del model.graph.output[first:]


def capture_onnx(model: onnx.ModelProto | Path | str,
                 samples: Iterable[Mapping[str, np.ndarray]], tensors: Sequence[str], *,
                 optimize: bool = False,
                 threads: int | None = None) -> Iterator[list[np.ndarray]]:
    """Run an ONNX model in ONNX Runtime (CPU EP) and yield, per sample, the values of
    ``tensors`` (graph outputs or any intermediate tensor, in that order).

    The session is made when this is called, so a model ONNX Runtime cannot load fails
    here; ``samples`` are then consumed one at a time as the result is iterated.

    Args:
        model: a ``ModelProto`` (not modified) or the path of an ONNX file.
        samples: ``{input_name: array}`` dicts; keys that are not model inputs are ignored.
        tensors: names of the tensors to return.
        optimize: False runs the graph as written (``ORT_DISABLE_ALL``), so every
            tensor keeps the value the graph defines; True lets ONNX Runtime fuse.
        threads: intra-op threads of one run at a time. None (the default): a
            one-thread session, and as many samples run at once as the process has
            cores (``_many.workers``), yielded in order; the values are the same. On a
            2-core Xeon this halved the statistics pass of mobilenet-v2 (3.6-4.2 s
            against 7.2-9.7 s at load 2-3, and half the CPU seconds): ONNX Runtime's
            intra-op threads spin-wait between the small operators of one run.
    """
    import onnx

    names = list(tensors)
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    serialized = _serialized_with_outputs(proto, names)
    del proto
    session = _ort_session(serialized, optimize=optimize, threads=threads or 1)
    del serialized
    return _run_session(session, samples, names, 1 if threads else workers())


def _run_session(session, samples: Iterable[Mapping[str, np.ndarray]],
                 names: list[str], count: int = 1) -> Iterator[list[np.ndarray]]:
    """Each sample's values of ``names``, in order, ``count`` samples running at once: at
    most ``count`` samples are read ahead of the one the caller holds."""
    inputs = {i.name for i in session.get_inputs()}

    def run(sample):
        return session.run(names, {k: v for k, v in sample.items() if k in inputs})

    if count <= 1:
        for sample in samples:
            yield run(sample)
    else:
        yield from threaded(run, samples, count, depth=count)


def optimized_op_counts(model: Path | str) -> dict[str, int]:
    """Operator type -> count in the graph ONNX Runtime's CPU EP runs after all its graph
    optimizations (Q/DQ fusion into QLinearConv, QGemm...)."""
    import tempfile
    from collections import Counter

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        _ort_session(str(model), optimize=True, threads=None, optimized_path=optimized)
        return dict(Counter(n.op_type for n in onnx.load(str(optimized)).graph.node))


def onnx_input_specs(model: Path | str) -> tuple[TensorSpec, ...]:
    """The graph inputs of an ONNX file (initializers excluded): name, numpy dtype name,
    shape with dynamic dimensions as strings (their ``dim_param``, else ``"?"``). Reads
    the graph only, not external weight data."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(model), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dtype, shape))
    return tuple(specs)


def read_openvino_model(path: Path | str) -> openvino.Model:
    """An OpenVINO model read from IR (``.xml`` beside its ``.bin``) or ONNX."""
    import openvino as ov

    return ov.Core().read_model(str(path))


def capture_openvino(model: openvino.Model, samples: Iterable[Mapping[str, np.ndarray]],
                     outputs: Sequence[openvino.Output] | None = None, *,
                     device: str = "CPU",
                     config: Mapping[str, str] | None = None) -> Iterator[list[np.ndarray]]:
    """Compile an OpenVINO model and yield, per sample, the values of its results.

    Args:
        model: the model (not modified).
        samples: ``{input_name: array}`` dicts, consumed one at a time.
        outputs: ports of ``model`` to return instead of its results (a model with just
            those results and ``model``'s parameters is compiled); None: its results.
        device: the OpenVINO device.
        config: compile properties; default :data:`OPENVINO_F32` (no bf16/f16 on its own).
    """
    import openvino as ov

    if outputs is not None:
        model = ov.Model(list(outputs), model.get_parameters())
    compiled = ov.Core().compile_model(model, device, dict(OPENVINO_F32 if config is None
                                                          else config))
    return _run_compiled(compiled, samples)


def _run_compiled(compiled, samples: Iterable[Mapping[str, np.ndarray]]
                  ) -> Iterator[list[np.ndarray]]:
    count = len(compiled.outputs)
    for sample in samples:
        from edgeopt.runtimes.ov_cpu import scalars_as_tensors

        result = compiled(scalars_as_tensors(dict(sample)))   # 0-d inputs stay 0-d
        yield [np.array(result[i]) for i in range(count)]
