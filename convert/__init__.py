"""edgeopt.convert: load models, export PyTorch to ONNX, ONNX to OpenVINO IR, check parity.

Imports neither edgeopt.calibrate nor edgeopt.runtimes; heavy libraries load lazily.
"""

from __future__ import annotations

from edgeopt.convert.errors import (
    ConvertError,
    ExportError,
    InputShapeError,
    ModelLoadError,
    ParityError,
)
from edgeopt.convert.load import SourceModel, file_sha256, load_model, parse_input_shapes
from edgeopt.convert.onnx_to_ir import canonical_names, to_openvino_ir
from edgeopt.convert.parity import Parity, check, compare
from edgeopt.convert.torch_to_onnx import (
    ExportResult,
    check_inputs_fit,
    export_onnx,
    fix_onnx_shapes,
    onnx_input_specs,
    run_torch,
)

__all__ = [
    "ConvertError",
    "ExportError",
    "ExportResult",
    "InputShapeError",
    "ModelLoadError",
    "Parity",
    "ParityError",
    "SourceModel",
    "check",
    "canonical_names",
    "check_inputs_fit",
    "compare",
    "export_onnx",
    "file_sha256",
    "fix_onnx_shapes",
    "load_model",
    "onnx_input_specs",
    "parse_input_shapes",
    "run_torch",
    "to_openvino_ir",
]
