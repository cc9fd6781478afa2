"""The recipe: everything one run does, as data, checked once where it enters.

A :class:`Recipe` nests one frozen section per concern (data, quantization, pruning,
packaging, benchmark). It loads from YAML or a run's ``report.json``, is written back as
``recipe.yaml`` beside every report, and replays to the same artifacts::

    recipe = load_recipe("build/recipe.yaml").override(calibrator="minmax")
    edgeopt.optimize(recipe.model, recipe=recipe, out="build-minmax")
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.errors import UsageError
from edgeopt.runtimes.bench import BenchProtocol
from edgeopt.runtimes.errors import InvalidProtocol

__all__ = [
    "DataRecipe",
    "PackageRecipe",
    "PruneRecipe",
    "QuantRecipe",
    "Recipe",
    "load_recipe",
    "parse_budget",
]


# --name: a file stem safe on every OS: no separator, no '..', no leading dot or dash, no
# trailing dot, no Windows device name (CON, NUL, COM1...)
_SAFE_NAME = re.compile(r"(?!(?:con|prn|aux|nul|com\d|lpt\d)(?:\.|$))"
                        r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,99}(?<!\.)", re.IGNORECASE)


# --effort: "default" weighs every speed-for-accuracy choice (edgeopt.tradeoffs) and takes
# no shortcut; "fast" keeps those choices unweighed and takes the quantizers' shortcuts
# that cost accuracy (QuantConfig.effort). docs/speed.md has what each costs and saves.
EFFORTS = ("fast", "default")
# --ov-int8: how OpenVINO's INT8 is made: "qdq" converts the run's ONNX Runtime QDQ model
# (one quantization for both runtimes), "nncf" runs NNCF on the OpenVINO model, "auto"
# takes NNCF only where it has what the QDQ route lacks (calibrate/ov_route.py).
OV_INT8 = ("auto", "qdq", "nncf")


def _raise(problems: list[str]) -> None:
    if problems:
        raise UsageError("; ".join(problems))


@dataclass(frozen=True)
class DataRecipe:
    """Where calibration and evaluation samples come from, and how they become inputs."""

    calib: str | None = None                   # file/folder, package.module:factory, random
    calib_samples: int | None = None
    eval: str | None = None                    # held-out data, in the forms of calib
    eval_samples: int | None = None
    metric: str | None = None                  # top1, top5, agreement, cosine, sqnr,
                                               # max-rel-error, or package.module:function
    # images: "resize=256,crop=224,...", a .json/.yaml path, or a dict of the keys
    preprocess: str | dict | None = None
    input_shape: str | None = None

    def __post_init__(self) -> None:
        problems = [f"{flag} {value} must be >= 1"
                    for flag, value in (("--calib-samples", self.calib_samples),
                                        ("--eval-samples", self.eval_samples))
                    if value is not None and value < 1]
        if self.preprocess is not None:
            problems += _preprocess_problems(self.preprocess, self.calib)
        if self.eval is not None and self.eval == "random":
            problems.append("--eval random says nothing about accuracy; give held-out data")
        _raise(problems)


@dataclass(frozen=True)
class QuantRecipe:
    """INT8 quantization: the calibrator, what stays FP32, and the accuracy budget."""

    enabled: bool = True
    calibrator: str = "mean-minmax"
    max_accuracy_drop: str | None = None       # "0.01" (absolute) or "1%" (relative)
    max_fp32_nodes: int | None = None          # at most this many nodes return to FP32
    keep_first_fp32: bool = False              # the first convolution stays FP32
    fp32_stem: bool = True                     # a CNN's stem stays FP32 where a backend does it
    saturation_guard: bool = True              # no int8 pair saturates AVX2 (calibrate/saturation.py)
    qat_epochs: int = 0                        # fine-tune the int8 weights (backends that can)
    effort: str = "default"                    # "fast": shortcuts that cost accuracy (EFFORTS)
    ov_int8: str = "auto"                      # how OpenVINO's INT8 is made (OV_INT8)

    def __post_init__(self) -> None:
        from edgeopt.calibrate.calibrators import CALIBRATORS

        problems = []
        if self.effort not in EFFORTS:
            problems.append(f"unknown --effort {self.effort!r} (known: {', '.join(EFFORTS)})")
        if self.ov_int8 not in OV_INT8:
            problems.append(f"unknown --ov-int8 {self.ov_int8!r} (known: {', '.join(OV_INT8)})")
        if self.calibrator not in CALIBRATORS:
            problems.append(f"unknown --calibrator {self.calibrator} "
                            f"(known: {', '.join(CALIBRATORS)})")
        if self.qat_epochs < 0:
            problems.append(f"--qat-epochs {self.qat_epochs} must be >= 0")
        if self.max_fp32_nodes is not None and self.max_fp32_nodes < 0:
            problems.append(f"--max-fp32-nodes {self.max_fp32_nodes} must be >= 0")
        if self.max_accuracy_drop is not None:
            try:
                parse_budget(self.max_accuracy_drop)
            except ValueError as e:
                problems.append(str(e))
        _raise(problems)

    def allowed_drop(self, fp32_value: float) -> float | None:
        """The largest metric drop the budget allows from ``fp32_value`` (None: no budget)."""
        if self.max_accuracy_drop is None:
            return None
        value, relative = parse_budget(self.max_accuracy_drop)
        return abs(fp32_value) * value / 100 if relative else value


@dataclass(frozen=True)
class PruneRecipe:
    """Pruning before export, and the fine-tuning after it (``epochs`` None: none)."""

    mode: str
    ratio: float = 0.5
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
        _raise(problems)

    def finetune_config(self):
        from edgeopt.calibrate.finetune import FinetuneConfig

        epochs = 1 if self.epochs is None else self.epochs
        return FinetuneConfig(epochs=epochs, lr=self.lr, weight_decay=self.weight_decay,
                              batch_size=self.batch_size)

    def prune_config(self):
        from edgeopt.calibrate.pruning import PruneConfig

        return PruneConfig(self.mode, float(self.ratio), tuple(self.ignore), self.importance)



@dataclass(frozen=True)
class PackageRecipe:
    """App bundles written after the run (``targets``), and their weight palettization."""

    targets: tuple[str, ...] = ()
    palettize: int | None = None               # bits per weight, 2..8
    group_size: int | None = None              # output channels sharing one lookup table

    def __post_init__(self) -> None:
        from edgeopt.backends import package_targets

        known = package_targets()
        problems = [f"unknown package target {t!r} (known: {', '.join(known)})"
                    for t in self.targets if t not in known]
        if self.palettize is not None and not 2 <= self.palettize <= 8:
            problems.append(f"--palettize {self.palettize}: bits must be 2..8")
        if self.group_size is not None and self.group_size < 1:
            problems.append(f"--group-size {self.group_size} must be >= 1")
        if self.palettize is None and self.group_size is not None:
            problems.append("--group-size applies to --palettize; add --palettize BITS")
        _raise(problems)


@dataclass(frozen=True)
class Recipe:
    """One run: the model, where it runs, and what is done to it."""

    model: str | None = None                   # path, package.module:factory or ref:NAME
    name: str | None = None                    # artifact names (default: the model's stem)
    runtimes: tuple[str, ...] | None = None    # None: every registered backend
    devices: tuple[str, ...] = ("host-cpu",)
    require_measured: bool = False             # a device not here is an error, not an estimate
    data: DataRecipe = field(default_factory=DataRecipe)
    quant: QuantRecipe = field(default_factory=QuantRecipe)
    prune: PruneRecipe | None = None
    package: PackageRecipe = field(default_factory=PackageRecipe)
    benchmark: bool = True                     # False (--no-bench): build, evaluate, no timing
    bench: BenchProtocol = field(default_factory=BenchProtocol)
    cache: bool = True                         # reuse unchanged steps' results (--no-cache)
    cache_dir: str | None = None               # default ~/.cache/edgeopt (edgeopt._cache)

    def __post_init__(self) -> None:
        from edgeopt.backends import get_backend, runtime_names

        known = runtime_names()
        if self.runtimes is None:
            object.__setattr__(self, "runtimes", known)
        object.__setattr__(self, "runtimes", tuple(dict.fromkeys(self.runtimes)))
        object.__setattr__(self, "devices", tuple(self.devices))
        problems = []
        unknown = [r for r in self.runtimes if r not in known]
        if unknown:
            problems.append(f"unknown runtime {', '.join(unknown)} (known: {', '.join(known)})")
        if not self.devices:
            problems.append("no --device given")
        if self.name is not None and not (isinstance(self.name, str)
                                          and _SAFE_NAME.fullmatch(self.name)):
            problems.append(f"--name {self.name!r} is not a safe file name: use 1-100 letters, "
                            "digits, '.', '_' or '-', starting with a letter or digit (not "
                            "ending with '.')")
        if self.quant.qat_epochs and not unknown and (
                not self.quant.enabled
                or not any(get_backend(r).supports_qat for r in self.runtimes)):
            can = [r for r in known if get_backend(r).supports_qat]
            problems.append(f"--qat-epochs fine-tunes the INT8 artifact of {', '.join(can)}: "
                            f"it needs --runtime {' or '.join(can)} and quantization")
        _raise(problems)

    # ---------------------------------------------------------------- as data
    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> Recipe:
        """A recipe from plain data (YAML, report.json); every unknown key is named."""
        if not isinstance(data, dict):
            msg = f"{where}: a recipe is a mapping of sections, not {type(data).__name__}"
            raise UsageError(msg)
        if "quant" not in data and any(k in data for k in _FLAT):
            data = _nest_flat(data)               # report.json schema 1: one flat config
        problems: list[str] = []
        kwargs = _fields(cls, data, where, problems, sections=_SECTIONS)
        _raise(problems)
        return cls(**kwargs)

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from edgeopt._outdir import write_text_atomic

            write_text_atomic(Path(path), text)
        return text

    def override(self, **flat: Any) -> Recipe:
        """A copy with flat options replaced: ``calibrator="minmax"``, ``calib="data/"``,
        ``bench=BenchProtocol(...)`` (names as the CLI flags, or the old flat config's)."""
        sections: dict[str, dict] = {}
        top: dict[str, Any] = {}
        for key, value in flat.items():
            if key in _FLAT:
                section, name = _FLAT[key]
                sections.setdefault(section, {})[name] = value
            elif key in _TOP:
                top[key] = value
            else:
                known = ", ".join(sorted({*_FLAT, *_TOP}))
                msg = f"unknown recipe option {key!r} (known: {known})"
                raise UsageError(msg)
        for section, values in sections.items():
            top[section] = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **top)


# Flat option -> (section, field): the CLI's flags and the pre-recipe OptimizeConfig names.
_FLAT = {
    "calib": ("data", "calib"), "calib_samples": ("data", "calib_samples"),
    "eval": ("data", "eval"), "metric": ("data", "metric"),
    "eval_samples": ("data", "eval_samples"), "preprocess": ("data", "preprocess"),
    "input_shape": ("data", "input_shape"),
    "quantize": ("quant", "enabled"), "calibrator": ("quant", "calibrator"),
    "max_accuracy_drop": ("quant", "max_accuracy_drop"),
    "max_fp32_nodes": ("quant", "max_fp32_nodes"),
    "keep_first_fp32": ("quant", "keep_first_fp32"), "fp32_stem": ("quant", "fp32_stem"),
    "saturation_guard": ("quant", "saturation_guard"), "qat_epochs": ("quant", "qat_epochs"),
    "effort": ("quant", "effort"),
    "ov_int8": ("quant", "ov_int8"),
    "packages": ("package", "targets"), "palettize": ("package", "palettize"),
    "group_size": ("package", "group_size"),
}
_TOP = ("model", "name", "runtimes", "devices", "require_measured", "prune", "benchmark", "bench",
        "data", "quant", "package", "cache", "cache_dir")
_SECTIONS = {"data": DataRecipe, "quant": QuantRecipe, "prune": PruneRecipe,
             "package": PackageRecipe, "bench": BenchProtocol}


def _nest_flat(flat: dict) -> dict:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key in _FLAT:
            section, name = _FLAT[key]
            nested.setdefault(section, {})[name] = value
        elif key != "out":
            nested[key] = value
    return nested


def _fields(cls, data: dict, where: str, problems: list[str], sections=None) -> dict:
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            problems.append(f"{where}: unknown key {key!r} (known: {', '.join(names)})")
            continue
        section = (sections or {}).get(key)
        if section is not None and value is not None:
            if not isinstance(value, dict):
                problems.append(f"{where}.{key}: expected a mapping, got {value!r}")
                continue
            try:
                inner = _fields(section, value, f"{where}.{key}", problems)
                value = section(**inner)
            except (UsageError, TypeError, ValueError, InvalidProtocol) as e:
                problems.append(f"{where}.{key}: {e}")
                continue
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return kwargs


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_recipe(path: str | Path) -> Recipe:
    """A recipe from ``recipe.yaml`` (or ``.json``) or a run's ``report.json``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        msg = f"--recipe {path}: cannot read it ({e.strerror or e})"
        raise UsageError(msg) from e
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"--recipe {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {reason}"
        raise UsageError(msg) from e
    if isinstance(data, dict) and "schema_version" in data and "artifacts" in data:
        data = data.get("recipe")                 # a run's report.json
        if data is None:
            msg = f"--recipe {path}: this report.json holds no recipe"
            raise UsageError(msg)
    return Recipe.from_dict(data, where=str(path))


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
