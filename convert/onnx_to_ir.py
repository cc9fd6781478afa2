"""ONNX -> OpenVINO IR (.xml + .bin), with stable node names."""

from __future__ import annotations

import os
from pathlib import Path

from edgeopt.convert.errors import ExportError, short_reason


def to_openvino_ir(onnx_path: Path, out_xml: Path, *, compress_to_fp16: bool = False) -> Path:
    """Convert an ONNX model to OpenVINO IR, keeping FP32 weights unless asked otherwise.

    Both files are written under temporary names and renamed into place, .bin first, so
    an interrupted run never leaves an .xml that points at missing or partial weights.
    """
    import openvino as ov

    out_xml = Path(out_xml)
    tmp_xml = out_xml.with_name(f".{out_xml.stem}.{os.getpid()}.tmp.xml")
    try:
        model = ov.convert_model(str(onnx_path))
        canonical_names(model)
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
    except Exception as e:
        for p in (tmp_xml, tmp_xml.with_suffix(".bin")):
            p.unlink(missing_ok=True)
        if _disk_full(out_xml.parent, Path(onnx_path)):
            # OpenVINO reports a full disk as "basic_ios::clear: iostream error"
            msg = f"no space left on device writing {out_xml.with_suffix('.bin')}"
            raise ExportError("ONNX -> OpenVINO IR conversion", msg) from e
        raise ExportError("ONNX -> OpenVINO IR conversion", short_reason(e)) from e
    os.replace(tmp_xml.with_suffix(".bin"), out_xml.with_suffix(".bin"))
    os.replace(tmp_xml, out_xml)
    return out_xml


def _disk_full(folder: Path, source: Path) -> bool:
    """Too little room left in ``folder`` for weights the size of ``source``'s."""
    try:
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        need = sum(p.stat().st_size for p in source.parent.glob(f"{source.stem}*")
                   if p.is_file())
    except OSError:
        return False
    return free < max(need, 1 << 20)


def canonical_names(model) -> int:
    """OpenVINO names a node nobody named after a process-wide counter
    (``Constant_60949``), and a folded constant keeps the counter name of the op it
    replaced (``Reshape_101827``), so the same graph saved after a different number of
    nodes were made elsewhere in the process gives other XML. Rename every constant and
    every auto-named node after its topological index; returns how many were renamed.
    Other names (from the ONNX graph, from NNCF) are kept: ignored scopes refer to them."""
    ops = list(model.get_ordered_ops())
    taken = {op.get_friendly_name() for op in ops}
    renamed = 0
    for index, op in enumerate(ops):
        kind = op.get_type_name()
        if kind != "Constant" and op.get_friendly_name() != op.get_name():
            continue
        name = f"{kind}_n{index}"
        while name in taken:
            name += "_"
        op.set_friendly_name(name)
        taken.add(name)
        renamed += 1
    return renamed
