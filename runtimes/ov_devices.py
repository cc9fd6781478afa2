"""OpenVINO on the devices besides the x86 CPU: Intel iGPU, Intel NPU, and ARM CPUs.

Each is the same adapter as ``ov-cpu`` with another plugin and another reason for being
absent: the GPU plugin needs the OpenCL ICD loader and Intel's compute runtime, the NPU
plugin needs the NPU driver (``/dev/accel``), and ARM needs an ARM machine. The MYRIAD
VPU plugin (Neural Compute Stick 2) left OpenVINO in 2023.0; ``ov-vpu`` is an alias of
``ov-npu``.
"""

from __future__ import annotations

import platform
from typing import ClassVar

from edgeopt.runtimes.ov_cpu import OvDeviceAdapter

ARM_MACHINES = ("aarch64", "arm64")


def arm_problem(adapter: str) -> str | None:
    """Why an ARM-CPU adapter cannot run on this machine, or None on ARM."""
    machine = platform.machine().lower()
    if machine in ARM_MACHINES:
        return None
    return (f"{adapter} runs on an ARM CPU and this machine is {machine or 'unknown'}; "
            "run edgeopt on the device, or --emulate to check outputs under qemu")


class OvGpu(OvDeviceAdapter):
    name: ClassVar[str] = "ov-gpu"
    device: ClassVar[str] = "GPU"
    precision_hint: ClassVar[str | None] = None     # the GPU's own choice (f16), recorded
    hardware_hint: ClassVar[str] = ("needs an Intel GPU with its compute runtime "
                                    "(/dev/dri/renderD*, intel-opencl-icd)")


class OvNpu(OvDeviceAdapter):
    name: ClassVar[str] = "ov-npu"
    device: ClassVar[str] = "NPU"
    precision_hint: ClassVar[str | None] = None
    static_shapes: ClassVar[bool] = True
    hardware_hint: ClassVar[str] = ("needs an Intel NPU (Core Ultra) and its driver "
                                    "(/dev/accel/accel*, intel-npu-driver)")


class OvArm(OvDeviceAdapter):
    name: ClassVar[str] = "ov-arm"
    device: ClassVar[str] = "CPU"

    def platform_problem(self) -> str | None:
        return arm_problem(self.name)
