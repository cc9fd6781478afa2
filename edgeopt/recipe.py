"""The recipe: what one `edgeopt optimize` run does, checked once where it enters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeopt.errors import UsageError
from edgeopt.runtimes.bench import BenchProtocol

RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class OptimizeConfig:
    """One optimize run. ``model`` is a path, ``package.module:factory`` or ``ref:NAME``."""

    model: str
    out: Path
    devices: tuple[str, ...] = ("host-cpu",)
    runtimes: tuple[str, ...] = RUNTIMES
    input_shape: str | None = None
    calib: str | None = None
    calib_samples: int | None = None
    eval_samples: int | None = None
    quantize: bool = True
    bench: BenchProtocol = field(default_factory=BenchProtocol)

    def __post_init__(self) -> None:
        problems = []
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown:
            problems.append(f"unknown runtime {', '.join(unknown)} (known: {', '.join(RUNTIMES)})")
        if not self.devices:
            problems.append("no --device given")
        for flag, value in (("--calib-samples", self.calib_samples),
                            ("--eval-samples", self.eval_samples)):
            if value is not None and value < 1:
                problems.append(f"{flag} {value} must be >= 1")
        if problems:
            raise UsageError("; ".join(problems))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out)
        return data
