"""edgeopt.convert: load models, export PyTorch to ONNX, ONNX to OpenVINO IR and ORT format.

Imports neither edgeopt.calibrate nor edgeopt.runtimes; heavy libraries load lazily. The
numerical parity of each step is checked by the caller with edgeopt.runtimes.compare.
"""

from __future__ import annotations

from edgeopt.convert.errors import (
    ConvertError,
    ExportError,
    InputShapeError,
    ModelLoadError,
)
from edgeopt.convert.load import (
    FactoryError,
    SourceModel,
    call_factory,
    file_sha256,
    load_model,
    parse_input_shapes,
)
from edgeopt.convert.onnx_to_ir import canonical_names, to_openvino_ir
from edgeopt.convert.opset import upgrade_opset
from edgeopt.convert.ort_format import OPS_CONFIG, to_ort, widen_4bit
from edgeopt.convert.torch_to_onnx import (
    ExportResult,
    check_inputs_fit,
    default_input_names,
    export_onnx,
    fix_onnx_shapes,
    onnx_input_specs,
    run_torch,
)

__all__ = [
    "OPS_CONFIG",
    "ConvertError",
    "ExportError",
    "ExportResult",
    "FactoryError",
    "InputShapeError",
    "ModelLoadError",
    "SourceModel",
    "call_factory",
    "canonical_names",
    "check_inputs_fit",
    "default_input_names",
    "export_onnx",
    "file_sha256",
    "fix_onnx_shapes",
    "load_model",
    "onnx_input_specs",
    "parse_input_shapes",
    "run_torch",
    "to_openvino_ir",
    "to_ort",
    "upgrade_opset",
    "widen_4bit",
]
