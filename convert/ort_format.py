"""ONNX -> ONNX Runtime's ORT format, for ONNX Runtime Mobile and reduced-size builds.

Converted with the session options of ONNX Runtime's own ``convert_onnx_models_to_ort``
("Fixed" style, "extended" level, ARM target), made byte-deterministic (``canonical_ort``),
with the required-operators config a reduced build takes.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np

from edgeopt.convert.errors import ExportError, short_reason

OPS_CONFIG = "required_operators.config"


def widen_4bit(path: Path) -> list[str]:
    """Rewrite ``path`` with its uint4/int4 initializers as uint8/int8 (same values; their
    readers, Cast nodes, take either). Returns the names of the tensors widened."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    wide = {onnx.TensorProto.UINT4: np.uint8, onnx.TensorProto.INT4: np.int8}
    widened = []
    for init in proto.graph.initializer:
        if init.data_type in wide:
            values = numpy_helper.to_array(init).astype(wide[init.data_type])
            init.CopyFrom(numpy_helper.from_array(values, init.name))
            widened.append(init.name)
    if widened:
        onnx.save(proto, str(path))
    return widened


def to_ort(onnx_path: Path, work: Path, *, keep_constant_subgraphs: bool = False
           ) -> tuple[bytes, str]:
    """ONNX -> ORT format ("Fixed" style, "extended" level, ARM), deterministic bytes, and
    the required-operators config for a reduced build (operators only: the tool's per-type
    variant cannot read uint4 tensors, which palettized models have).

    The session options are those of ``convert_onnx_models_to_ort`` for
    ``--optimization_style Fixed --target_platform arm`` with
    ``ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL=extended``;
    ``keep_constant_subgraphs`` turns constant folding off (palettized weights).
    """
    import onnxruntime as ort
    from onnxruntime.tools.ort_format_model import create_config_from_models

    work.mkdir(parents=True, exist_ok=True)
    out = work / "model.ort"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.add_session_config_entry("session.qdqisint8allowed", "1")   # target_platform arm
    disabled = ["ConstantFolding"] if keep_constant_subgraphs else None
    try:
        ort.InferenceSession(str(onnx_path), sess_options=options,
                             providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    except Exception as e:
        msg = f"ONNX -> ORT format conversion of {onnx_path.name}"
        raise ExportError(msg, short_reason(e, 300)) from e
    data = canonical_ort(out.read_bytes())
    out.write_bytes(data)
    config = work / OPS_CONFIG
    tools_log = logging.getLogger("ort_format_model.utils")     # "Created config in /tmp/..."
    level = tools_log.level
    tools_log.setLevel(logging.WARNING)
    try:
        create_config_from_models([out], config, enable_type_reduction=False)
    finally:
        tools_log.setLevel(level)
    lines = config.read_text().splitlines()
    # The config names the model by its absolute path: the bundle's member name instead.
    lines = ["# - model.ort" if ln.startswith("# - ") else ln for ln in lines]
    return data, "\n".join(lines) + "\n"


def canonical_ort(data: bytes) -> bytes:
    """The same ORT-format model with its kernel-type table in sorted order.

    ONNX Runtime writes that table (op id -> kernel type strings -> argument indices) from a
    pointer-keyed map, so two conversions of one model differ in byte order though not in
    content. The Model subtree is kept byte for byte; the session root and the table are
    rebuilt in front of it, sorted, so equal content gives equal bytes.
    """
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    session = InferenceSession.InferenceSession.GetRootAs(data, 0)
    model_pos = session.Model()._tab.Pos
    # The Model table's vtable sits just before it (or further on, if shared): both kept.
    vtable_pos = model_pos - struct.unpack_from("<i", data, model_pos)[0]
    tail = data[min(model_pos, vtable_pos):]
    ops = _sorted_kernel_types(session)
    b = _builder_ending_with(tail, ops)
    resolver_offset = _write_kernel_types(b, ops)
    version = b.CreateString(session.OrtVersion())
    InferenceSession.Start(b)
    InferenceSession.AddOrtVersion(b, version)
    InferenceSession.AddModel(b, len(data) - model_pos)
    InferenceSession.AddKernelTypeStrResolver(b, resolver_offset)
    b.Finish(InferenceSession.End(b), file_identifier=bytes(data[4:8]))
    return bytes(b.Output())


# (op id, [(kernel type string, [(arg type, index), ...]), ...]), everything sorted
_KernelTypes = list[tuple[bytes, list[tuple[bytes, list[tuple[int, int]]]]]]


def _sorted_kernel_types(session) -> _KernelTypes:
    """The session's kernel-type table as plain values, sorted at every level but the args."""
    resolver = session.KernelTypeStrResolver()
    ops = []
    for i in range(resolver.OpKernelTypeStrArgsLength() if resolver else 0):
        entry = resolver.OpKernelTypeStrArgs(i)
        kinds = []
        for j in range(entry.KernelTypeStrArgsLength()):
            k = entry.KernelTypeStrArgs(j)
            kinds.append((k.KernelTypeStr(),
                          [(k.Args(a).ArgType(), k.Args(a).Index())
                           for a in range(k.ArgsLength())]))
        ops.append((entry.OpId(), sorted(kinds)))
    ops.sort()
    return ops


def _builder_ending_with(tail: bytes, ops: _KernelTypes):
    """A flatbuffers Builder whose buffer already ends with ``tail``, with room for ``ops``.

    The kept subtree goes at the end of the new buffer, at the same distance from the end
    (flatbuffers align from the end), so its internal offsets and alignment still hold.
    """
    import flatbuffers

    b = flatbuffers.Builder(0)
    b.Bytes = bytearray(len(tail) + 1024 + 256 * sum(1 + len(k) for _, k in ops))
    b.head = len(b.Bytes) - len(tail)
    b.Bytes[b.head:] = tail
    b.minalign = 8
    return b


def _write_kernel_types(b, ops: _KernelTypes) -> int:
    """Write the KernelTypeStrResolver table for ``ops`` into ``b``; return its offset."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        ArgTypeAndIndex,
        KernelTypeStrArgsEntry,
        KernelTypeStrResolver,
        OpIdKernelTypeStrArgsEntry,
    )

    op_offsets = []
    for op_id, kinds in ops:
        kind_offsets = []
        for kind, args in kinds:
            arg_offsets = []
            for arg_type, index in args:
                ArgTypeAndIndex.Start(b)
                ArgTypeAndIndex.AddArgType(b, arg_type)
                ArgTypeAndIndex.AddIndex(b, index)
                arg_offsets.append(ArgTypeAndIndex.End(b))
            args_vec = _vector(b, KernelTypeStrArgsEntry.StartArgsVector, arg_offsets)
            kind_str = b.CreateString(kind)
            KernelTypeStrArgsEntry.Start(b)
            KernelTypeStrArgsEntry.AddKernelTypeStr(b, kind_str)
            KernelTypeStrArgsEntry.AddArgs(b, args_vec)
            kind_offsets.append(KernelTypeStrArgsEntry.End(b))
        kinds_vec = _vector(b, OpIdKernelTypeStrArgsEntry.StartKernelTypeStrArgsVector,
                            kind_offsets)
        op_str = b.CreateString(op_id)
        OpIdKernelTypeStrArgsEntry.Start(b)
        OpIdKernelTypeStrArgsEntry.AddOpId(b, op_str)
        OpIdKernelTypeStrArgsEntry.AddKernelTypeStrArgs(b, kinds_vec)
        op_offsets.append(OpIdKernelTypeStrArgsEntry.End(b))
    ops_vec = _vector(b, KernelTypeStrResolver.StartOpKernelTypeStrArgsVector, op_offsets)
    KernelTypeStrResolver.Start(b)
    KernelTypeStrResolver.AddOpKernelTypeStrArgs(b, ops_vec)
    return KernelTypeStrResolver.End(b)


def _vector(b, start, offsets: list[int]) -> int:
    """A vector of table offsets, written back to front as flatbuffers wants."""
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()
