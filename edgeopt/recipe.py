"""The recipe: what one `edgeopt optimize` run does, checked once where it enters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeopt.errors import UsageError
from edgeopt.runtimes.bench import BenchProtocol

RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class PruneOptions:
    """Pruning before export, and the fine-tuning after it (``epochs`` None: none)."""

    mode: str
    ratio: float
    ignore: tuple[str, ...] = ()
    importance: str = "l1"                      # channels: l1 | l2 | taylor
    finetune_data: str | None = None            # default for ref:NAME: its own set
    epochs: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 32

    def __post_init__(self) -> None:
        from edgeopt.calibrate.finetune import FinetuneError
        from edgeopt.calibrate.pruning import PruneError

        problems = []
        try:
            self.prune_config()
        except PruneError as e:
            problems.append(str(e))
        try:   # the fine-tuning settings are FinetuneConfig's to check
            self.finetune_config()
        except FinetuneError as e:
            problems.append(str(e))
        if self.finetune_data is not None and self.epochs is None:
            problems.append("--finetune-data needs --epochs N (how long to fine-tune)")
        if self.mode == "regularization" and self.epochs is None:
            problems.append("--prune-mode regularization prunes while fine-tuning: "
                            "give --epochs N (and --finetune-data unless ref:NAME)")
        if problems:
            raise UsageError("; ".join(problems))

    def finetune_config(self):
        from edgeopt.calibrate.finetune import FinetuneConfig

        epochs = 1 if self.epochs is None else self.epochs
        return FinetuneConfig(epochs=epochs, lr=self.lr, weight_decay=self.weight_decay,
                              batch_size=self.batch_size)

    def prune_config(self):
        from edgeopt.calibrate.pruning import PruneConfig

        return PruneConfig(self.mode, float(self.ratio), tuple(self.ignore), self.importance)


@dataclass(frozen=True)
class OptimizeConfig:
    """One optimize run. ``model`` is a path, ``package.module:factory`` or ``ref:NAME``."""

    model: str
    out: Path
    devices: tuple[str, ...] = ("host-cpu",)
    runtimes: tuple[str, ...] = RUNTIMES
    require_measured: bool = False             # a device not here is an error, not an estimate
    input_shape: str | None = None
    calib: str | None = None
    calib_samples: int | None = None
    # images in --calib: "resize=256,crop=224,...", a .json/.yaml path, or a dict of the keys
    preprocess: str | dict | None = None
    eval_samples: int | None = None
    quantize: bool = True
    calibrator: str = "mean-minmax"
    max_accuracy_drop: str | None = None       # "0.01" (absolute) or "1%" (relative)
    max_fp32_nodes: int | None = None          # at most this many nodes return to FP32
    keep_first_fp32: bool = False              # the first convolution stays FP32
    fp32_stem: bool = True                     # ONNX Runtime: a CNN's stem stays FP32
    saturation_guard: bool = True              # no int8 pair saturates AVX2 (calibrate/saturation.py)
    qat_epochs: int = 0                        # ONNX Runtime INT8: fine-tune the int8 weights
    prune: PruneOptions | None = None          # prune (and fine-tune) before export
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
        if self.qat_epochs < 0:
            problems.append(f"--qat-epochs {self.qat_epochs} must be >= 0")
        elif self.qat_epochs and ("onnxruntime" not in self.runtimes or not self.quantize):
            problems.append("--qat-epochs fine-tunes the ONNX Runtime INT8 artifact: it needs "
                            "--runtime onnxruntime and quantization")
        if self.max_fp32_nodes is not None and self.max_fp32_nodes < 0:
            problems.append(f"--max-fp32-nodes {self.max_fp32_nodes} must be >= 0")
        from edgeopt.calibrate.calibrators import CALIBRATORS

        if self.calibrator not in CALIBRATORS:
            problems.append(f"unknown --calibrator {self.calibrator} "
                            f"(known: {', '.join(CALIBRATORS)})")
        if self.max_accuracy_drop is not None:
            try:
                parse_budget(self.max_accuracy_drop)
            except ValueError as e:
                problems.append(str(e))
        if self.preprocess is not None:
            problems += _preprocess_problems(self.preprocess, self.calib)
        if problems:
            raise UsageError("; ".join(problems))

    def allowed_drop(self, fp32_value: float) -> float | None:
        """The largest metric drop the budget allows from ``fp32_value`` (None: no budget)."""
        if self.max_accuracy_drop is None:
            return None
        value, relative = parse_budget(self.max_accuracy_drop)
        return abs(fp32_value) * value / 100 if relative else value

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


def _preprocess_problems(preprocess: str | dict, calib: str | None) -> list[str]:
    from edgeopt.calibrate.errors import CalibrationError
    from edgeopt.calibrate.images import parse_preprocess

    if calib is None or calib == "random":
        return ["--preprocess needs --calib naming images (a folder or an image file)"]
    try:
        parse_preprocess(preprocess)
    except CalibrationError as e:
        return [str(e)]
    return []


def parse_budget(text: str) -> tuple[float, bool]:
    """``"0.01"`` -> (0.01, absolute); ``"1%"`` -> (1.0, relative)."""
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        value = float("nan")
    if not (value >= 0) or value == float("inf"):
        msg = (f"--max-accuracy-drop {text!r} must be a non-negative number "
               "(absolute, e.g. 0.01) or a percentage (relative, e.g. 1%)")
        raise ValueError(msg)
    return value, relative
