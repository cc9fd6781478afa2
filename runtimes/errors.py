"""Errors of edgeopt.runtimes: adapters/benchmarks, device profiles, output comparisons."""

from __future__ import annotations

import re

_SOURCE = r"[\w./\\-]+\.(?:h|hh|hpp|c|cc|cpp|cxx):\d+:?"
_NOISE = (
    (re.compile(r"Exception from " + _SOURCE + r"\s*"), ""),         # OpenVINO's thrower
    (re.compile(r"\s+at " + _SOURCE), ":"),                           # "failed at x.cpp:9:"
    (re.compile(r":?\s*" + _SOURCE + r"\s*"), ": "),                  # ORT's "failed:/x.h:46"
)
_SIGNATURE = re.compile(r"^: [\w:<>,*& ]*?\b\w+(?:::~?\w+)+\(")


def _drop_source_noise(text: str) -> str:
    """Source locations (``core.cpp:84:``) and the C++ signature ONNX Runtime prints after
    one: where a library threw, not why."""
    for pattern, replacement in _NOISE:
        while True:
            match = pattern.search(text)
            if not match:
                break
            rest = replacement + text[match.end():]
            signature = _SIGNATURE.match(rest)
            if signature and replacement == ": ":
                depth, i = 1, signature.end()
                while i < len(rest) and depth:
                    depth += {"(": 1, ")": -1}.get(rest[i], 0)
                    i += 1
                rest = ": " + rest[i:].lstrip()
            text = text[:match.start()] + rest
    return text.replace(": : ", ": ").strip()


def short_reason(error: BaseException | str | None, limit: int = 300) -> str:
    """A library error's text on one line, at most ``limit`` characters.

    Whitespace and line breaks become single spaces, and source locations (where a C++
    library threw, not why) are dropped. A longer text keeps its head (what
    failed) and its tail (the library's reason, which most libraries put last, after the
    source location) and drops the middle, marked with `` ... ``; it is cut between words,
    never inside one (a single word longer than its share is cut at a character only then).
    The one algorithm for every layer: ``edgeopt.runtimes.errors`` holds it, and
    ``edgeopt.convert.errors`` a copy (convert may not import runtimes), kept identical by
    ``tests/unit/test_short_reason.py``.
    """
    if error is None:
        return "unknown error"
    text = _drop_source_noise(" ".join(str(error).split()))
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else "unknown error"
    if len(text) <= limit:
        return text
    marker = " ... "
    room = max(limit - len(marker), 2)
    head_room = room // 3
    head = text[:head_room + 1]
    head = head[:head.rfind(" ")] if " " in head else head[:head_room]
    tail_room = room - len(head)
    tail = text[-(tail_room + 1):]
    tail = tail[tail.find(" ") + 1:] if " " in tail else tail[-tail_room:]
    return f"{head.rstrip()}{marker}{tail.lstrip()}"


def first_line(error: BaseException | None) -> str:
    """``short_reason(error)``: the name older call sites use."""
    return short_reason(error)


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
