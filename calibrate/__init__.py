"""edgeopt.calibrate: calibration data, ranges and INT8 quantization per runtime."""

from __future__ import annotations

from edgeopt.calibrate.data import (
    CalibrationSet,
    check_finite,
    load_calibration,
    random_samples,
    read_calibration,
)
from edgeopt.calibrate.errors import CalibrationDataError, CalibrationError, PreprocessError
from edgeopt.calibrate.images import Preprocess, parse_preprocess
from edgeopt.calibrate.quantize import (
    QuantConfig,
    QuantResult,
    check_calibration,
    integer_kernel_counts,
    quantize_onnx_for_ort,
)
from edgeopt.calibrate.quantize_ov import quantize_for_openvino

__all__ = [
    "CalibrationDataError",
    "CalibrationError",
    "CalibrationSet",
    "Preprocess",
    "PreprocessError",
    "QuantConfig",
    "QuantResult",
    "check_calibration",
    "check_finite",
    "integer_kernel_counts",
    "load_calibration",
    "parse_preprocess",
    "quantize_for_openvino",
    "quantize_onnx_for_ort",
    "random_samples",
    "read_calibration",
]
