"""edgeopt.runtimes: device profiles, runtime adapters, the benchmark protocol, output comparison.

Imports nothing else of edgeopt and neither torch nor nncf, so `edgeopt bench` runs on a
device that has only onnxruntime (or openvino), numpy and pyyaml.
"""

from __future__ import annotations

import importlib

from edgeopt.runtimes.base import Availability, Loaded, RuntimeAdapter, TensorSpec
from edgeopt.runtimes.bench import BenchProtocol, BenchResult, run_benchmark
from edgeopt.runtimes.capture import (
    OPENVINO_F32,
    capture_onnx,
    capture_openvino,
    onnx_input_specs,
    optimized_op_counts,
    read_openvino_model,
)
from edgeopt.runtimes.compare import (
    OutputDiff,
    Parity,
    check,
    compare,
    cosine,
    max_abs_diff,
    output_diff,
    peak_abs,
    row_cosines,
)
from edgeopt.runtimes.devices import (
    ComputeUnit,
    DeviceCatalog,
    DeviceProfile,
    absent_reason,
    load_devices,
)
from edgeopt.runtimes.errors import (
    AdapterUnavailable,
    ComparisonError,
    DeviceProfileError,
    InvalidDeviceProfiles,
    InvalidProtocol,
    ModelLoadFailed,
    ParityError,
    RuntimeAdapterError,
    StaticShapesRequired,
    UnknownAdapter,
    UnknownDevice,
    first_line,
    short_reason,
)

# The one adapter registry, resolved lazily so importing this package imports no runtime.
ADAPTERS = {
    "ort-cpu": "edgeopt.runtimes.ort_cpu:OrtCpu",
    "ov-cpu": "edgeopt.runtimes.ov_cpu:OvCpu",
    "ov-gpu": "edgeopt.runtimes.ov_devices:OvGpu",
    "ov-npu": "edgeopt.runtimes.ov_devices:OvNpu",
    "ov-arm": "edgeopt.runtimes.ov_devices:OvArm",
    "ort-openvino": "edgeopt.runtimes.ort_openvino:OrtOpenVino",
    "ort-arm": "edgeopt.runtimes.ort_cpu:OrtArm",
}
# Names kept for what users know them by: the MYRIAD VPU plugin left OpenVINO in 2023.0,
# and NPUs took its place in OpenVINO's device list.
ADAPTER_ALIASES = {
    "ov-vpu": ("ov-npu", "the MYRIAD VPU plugin was removed in OpenVINO 2023.0; "
                         "'ov-vpu' runs OpenVINO's NPU plugin"),
}


def get_adapter(name: str) -> RuntimeAdapter:
    """A new instance of the adapter registered as ``name`` (or an alias of it).

    Raises:
        UnknownAdapter: no adapter has that name.
    """
    name = ADAPTER_ALIASES.get(name, (name,))[0]
    if name not in ADAPTERS:
        msg = f"unknown adapter '{name}' (known: {', '.join(ADAPTERS)})"
        raise UnknownAdapter(msg)
    module, _, cls = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = [
    "ADAPTERS",
    "ADAPTER_ALIASES",
    "OPENVINO_F32",
    "AdapterUnavailable",
    "Availability",
    "BenchProtocol",
    "BenchResult",
    "ComparisonError",
    "ComputeUnit",
    "DeviceCatalog",
    "DeviceProfile",
    "DeviceProfileError",
    "InvalidDeviceProfiles",
    "InvalidProtocol",
    "Loaded",
    "ModelLoadFailed",
    "OutputDiff",
    "Parity",
    "ParityError",
    "RuntimeAdapter",
    "RuntimeAdapterError",
    "StaticShapesRequired",
    "TensorSpec",
    "UnknownAdapter",
    "UnknownDevice",
    "absent_reason",
    "capture_onnx",
    "capture_openvino",
    "check",
    "compare",
    "cosine",
    "first_line",
    "short_reason",
    "get_adapter",
    "load_devices",
    "max_abs_diff",
    "onnx_input_specs",
    "optimized_op_counts",
    "output_diff",
    "peak_abs",
    "read_openvino_model",
    "row_cosines",
    "run_benchmark",
]
