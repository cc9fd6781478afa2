"""ONNX -> OpenVINO IR (.xml + .bin)."""

from __future__ import annotations

import os
from pathlib import Path

from edgeopt.convert.errors import ExportError, first_line


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
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
    except Exception as e:
        for p in (tmp_xml, tmp_xml.with_suffix(".bin")):
            p.unlink(missing_ok=True)
        first = first_line(e)
        raise ExportError("ONNX -> OpenVINO IR conversion", first[:300]) from e
    os.replace(tmp_xml.with_suffix(".bin"), out_xml.with_suffix(".bin"))
    os.replace(tmp_xml, out_xml)
    return out_xml
