"""edgeopt.calibrate: calibration data, ranges and INT8 quantization per runtime."""

from __future__ import annotations

from edgeopt.calibrate.data import check_finite, load_calibration, random_samples
from edgeopt.calibrate.errors import CalibrationDataError, CalibrationError
from edgeopt.calibrate.quantize import (
    QuantConfig,
    QuantResult,
    check_calibration,
    integer_kernel_counts,
    quantize_for_openvino,
    quantize_onnx_for_ort,
)

__all__ = [
    "CalibrationDataError",
    "CalibrationError",
    "QuantConfig",
    "QuantResult",
    "check_calibration",
    "check_finite",
    "integer_kernel_counts",
    "load_calibration",
    "quantize_for_openvino",
    "quantize_onnx_for_ort",
    "random_samples",
]
