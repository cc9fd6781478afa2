"""What every backend provides, and the shapes the pipeline hands it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

LAYER_SQNR_ROWS = 10


@dataclass(frozen=True)
class TargetSpec:
    """An app-bundle target: which runtime's artifact it takes, in which format."""

    runtime: str                  # a registered backend's runtime
    model_format: str             # ort | onnx | openvino-ir
    host_adapter: str             # runs the bundle here for its reference outputs
    device_note: str


@dataclass
class Artifact:
    """One file edgeopt made, before it is benchmarked on each device."""

    file: str                   # final file name in OUT
    format: str                 # onnx | openvino-ir | ...
    precision: str              # fp32 | int8
    runtime: str                # the backend that runs it
    companions: tuple[str, ...] = ()    # e.g. the .bin of an .xml
    accuracy: dict | None = None
    quantization: dict | None = None
    sensitivity: tuple = ()     # INT8: groups of its nodes, most damaged by quantization first
    status: str = "ok"          # ok | accuracy-drop | clipped-output (then slower-than-fp32)


@dataclass(frozen=True)
class QuantJob:
    """Everything a backend's quantizer reads: the FP32 export, the data, the settings."""

    name: str                   # artifact stem
    fp32_onnx: Path             # the parity-checked FP32 ONNX (staged)
    prepared: Any               # edgeopt._source.Prepared: calibration samples, notes
    config: Any                 # edgeopt.calibrate.quantize.QuantConfig
    stats: Any                  # activation statistics of fp32_onnx over the calibration set
    staging: Any                # edgeopt._outdir.Staging: where files are written
    steps: Any                  # edgeopt._progress.Steps: progress and timing
    variant: str | None = None  # a trial build's INT8 files carry it: NAME.VARIANT.int8-...
    # False: a trial build that may be discarded; a backend may then leave out the
    # per-layer SQNR (the artifact's sensitivity), which :meth:`Backend.layer_sqnr` gives
    layer_sqnr: bool = True

    def path(self, file: str) -> Path:
        return self.staging.path(file)

    def step(self, label: str) -> str:
        """The progress step's name: a variant build's says which it is."""
        return f"{label} ({self.variant})" if self.variant else label

    def int8_files(self, backend: Backend) -> tuple[str, ...]:
        """The INT8 artifact's files for ``backend`` (a variant's under their own names)."""
        name = f"{self.name}.{self.variant}" if self.variant else self.name
        return backend.artifact_files(name, "int8")


class Backend:
    """One runtime, as the pipeline sees it. Subclasses set the class fields and implement
    :meth:`artifact_files`, :meth:`quantize` and, where a conversion from ONNX is needed,
    :meth:`build_fp32`."""

    runtime: ClassVar[str]                      # "onnxruntime"
    label: ClassVar[str]                        # "ONNX Runtime", for people
    host_adapter: ClassVar[str]                 # adapter that evaluates on this host
    format: ClassVar[str]                       # artifact format: onnx | openvino-ir
    libraries: ClassVar[tuple[str, ...]] = ()   # distributions whose versions the report lists
    emulation_adapter: ClassVar[str | None] = None  # runs the artifact under qemu (ARM)
    supports_qat: ClassVar[bool] = False        # quantization-aware fine-tuning of its INT8
    compiles_whole: ClassVar[bool] = False      # a device runs all of a model or none of it
    package_targets: ClassVar[dict[str, TargetSpec]] = {}
    bundle_adapters: ClassVar[dict[str, tuple[str, ...]]] = {}  # bundle format -> adapters

    # ------------------------------------------------------------------ files
    def artifact_files(self, name: str, precision: str) -> tuple[str, ...]:
        """The files of ``name``'s artifact at ``precision``, main file first."""
        raise NotImplementedError

    # -------------------------------------------------------------- evaluator
    def adapter(self):
        from edgeopt.runtimes import get_adapter

        return get_adapter(self.host_adapter)

    def available(self):
        return self.adapter().available()

    def load(self, model: Path):
        """The artifact loaded on this host, ready to ``run(feeds)``."""
        return self.adapter().load(model)

    # ------------------------------------------------------------------ build
    def warm_up(self, quant) -> None:
        """Import what this backend's quantizer will need for the recipe's ``quant``
        settings (called while the process waits on other work, e.g. the PyTorch child's
        export); nothing by default."""

    def build_fp32(self, name: str, fp32_onnx: Path, staging, steps,
                   check_parity) -> tuple[Artifact, dict] | None:
        """This runtime's FP32 artifact from the exported ONNX, staged, with the step's
        record; None when the ONNX itself is the artifact. ``check_parity(step, path)``
        compares the new file's outputs with the ONNX's and returns the parity record."""
        return None

    def quantize(self, job: QuantJob) -> Artifact:
        """The INT8 artifact for ``job.config``, staged under its final name."""
        raise NotImplementedError

    def integer_kernels(self, artifact: Path) -> dict[str, int]:
        """Integer kernels the runtime will run for the artifact, by op type ({}: unknown)."""
        return {}

    def sensitivity(self, art: Artifact, job: QuantJob) -> list[tuple[str, ...]]:
        """Node groups of the FP32 graph, most damaged by quantization first."""
        return list(art.sensitivity)

    def layer_sqnr(self, artifact: Path, job: QuantJob) -> list[dict] | None:
        """The per-layer SQNR rows (worst first) that ``job``'s build (``job.layer_sqnr``
        False) left out of ``artifact``; None: this backend's builds always make them."""
        return None

    def sensitivity_from(self, rows) -> tuple:
        """An INT8 artifact's :attr:`Artifact.sensitivity`, as its build derives it from its
        per-layer SQNR ``rows``; none by default (:meth:`sensitivity` finds it another way)."""
        return ()

    def follows(self, job: QuantJob) -> str | None:
        """The runtime whose INT8 build this backend's build of ``job`` converts, as it is
        (its speed choices and FP32 nodes, when the run settled them, hold here too); None:
        this backend quantizes on its own."""
        return None

    def speed_choices(self, art: Artifact, job: QuantJob) -> list:
        """The defaults of ``art``'s build that keep part of it in float for accuracy
        (:class:`edgeopt.tradeoffs.Choice`), each weighed against the build without it."""
        return []


def quant_record(result, job: QuantJob, integer_kernels: dict[str, int] | None = None) -> dict:
    """The report's ``quantization`` block of an INT8 artifact."""
    return with_layer_sqnr({
        "calibrator": job.config.calibrator,
        "calibration": job.prepared.calib_note,
        "excluded_nodes": list(result.excluded_nodes),
        "notes": list(result.notes),
        **({"integer_kernels": integer_kernels} if integer_kernels else {}),
    }, result.layer_sqnr)


def with_layer_sqnr(record: dict, rows) -> dict:
    """``record`` (a ``quantization`` block) with the worst layers of ``rows`` after its
    notes: the SQNR of each quantized activation against FP32, in dB."""
    if not rows:
        return record
    keys = list(record)
    at = keys.index("notes") + 1 if "notes" in keys else len(keys)
    return {**{k: record[k] for k in keys[:at]},
            "layer_sqnr_worst": list(rows[:LAYER_SQNR_ROWS]),
            **{k: record[k] for k in keys[at:] if k != "layer_sqnr_worst"}}

