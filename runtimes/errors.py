"""Errors of edgeopt.runtimes: adapters/benchmarks, and device profiles."""

from __future__ import annotations


class RuntimeAdapterError(Exception):
    """Root of adapter and benchmark errors."""


class AdapterUnavailable(RuntimeAdapterError):
    """The adapter's runtime, plugin or device is not usable here."""


class ModelLoadFailed(RuntimeAdapterError):
    """The runtime could not load or compile the model."""


class InvalidProtocol(RuntimeAdapterError):
    """Benchmark protocol settings that cannot be run."""


class UnknownAdapter(RuntimeAdapterError):
    """A name that is not in the adapter registry."""


class DeviceProfileError(Exception):
    """Root of device-profile errors."""


class UnknownDevice(DeviceProfileError):
    """A device id (or unit) that no profile has."""


class InvalidDeviceProfiles(DeviceProfileError):
    """devices.yaml has problems; every one is listed with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:
            lines = [f"{source}: {len(problems)} problems:"] + [f"  {source}: {p}" for p in problems]
            super().__init__("\n".join(lines))


class StaticShapesRequired(RuntimeAdapterError):
    """The device compiles static shapes only and the model has a dynamic input."""
