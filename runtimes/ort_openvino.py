"""ONNX Runtime's OpenVINO execution provider, on an Intel CPU, iGPU or NPU.

Needs the ``onnxruntime-openvino`` build, which replaces the ``onnxruntime`` package (same
import name): never both in one environment. The EP assigns what OpenVINO can run and
leaves the rest to the CPU EP; when it cannot start on the device at all, ONNX Runtime
falls back to the CPU EP silently, so the session's providers and its node assignment are
both checked before any figure is kept.
"""

from __future__ import annotations

from typing import ClassVar

from edgeopt.runtimes.base import Availability
from edgeopt.runtimes.ort_cpu import OrtSessionAdapter

# The EP's device_type for each unit kind (vpu: the NPU, MYRIAD is gone).
DEVICE_TYPES = {"cpu": "CPU", "igpu": "GPU", "npu": "NPU", "vpu": "NPU"}


class OrtOpenVino(OrtSessionAdapter):
    name: ClassVar[str] = "ort-openvino"
    provider: ClassVar[str] = "OpenVINOExecutionProvider"

    def available(self, unit=None) -> Availability:
        availability = super().available(unit)
        if not availability.ok:
            if availability.reason.startswith(self.provider):
                return Availability(False, availability.reason + "; it comes with the "
                                    "onnxruntime-openvino package, which replaces onnxruntime")
            return availability
        device = self.provider_options(unit)["device_type"]
        try:  # only in onnxruntime-openvino builds: the devices its OpenVINO enumerates
            from onnxruntime.capi._pybind_state import get_available_openvino_device_ids
        except ImportError:
            return availability
        found = list(get_available_openvino_device_ids())
        if not any(str(d).split(".")[0] == device for d in found):
            return Availability(False, f"{self.provider} sees no {device} device "
                                       f"(it enumerates: {', '.join(found) or 'none'})")
        return availability

    def provider_options(self, unit) -> dict:
        kind = getattr(unit, "kind", None) or "cpu"
        return {"device_type": DEVICE_TYPES.get(kind, "CPU")}
