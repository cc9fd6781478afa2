"""Errors of edgeopt.runtimes: adapters/benchmarks, device profiles, output comparisons."""

from __future__ import annotations


def first_line(error: BaseException | None) -> str:
    """The first line of an error's text (or its type's name), at most 300 characters:
    enough for a one-line message. The copy for every layer that may import runtimes (the
    core, edgeopt.calibrate); edgeopt.convert keeps its own, which does not truncate."""
    if error is None:
        return "unknown error"
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


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


class ComparisonError(Exception):
    """Root of the verdicts of :mod:`edgeopt.runtimes.compare`: outputs that differ."""


class ParityError(ComparisonError):
    """A conversion step computes something other than its source."""

    def __init__(self, step: str, parity) -> None:
        self.step = step
        self.parity = parity
        super().__init__(
            f"{step} broke parity: max abs diff {parity.max_abs_diff:.3g} "
            f"(limit {parity.max_abs_limit:.3g}), cosine {parity.cosine:.6f} "
            f"(limit {parity.cosine_limit}); the converted model computes something else "
            f"than its source"
        )
