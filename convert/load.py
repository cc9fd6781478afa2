"""Load the model a user names: ONNX, OpenVINO IR, TorchScript, ExportedProgram, or a factory."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.convert.errors import InputShapeError, ModelLoadError, short_reason
from edgeopt.convert.opset import needs_upgrade, upgrade_opset

_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_SUFFIXES = {".onnx", ".xml", ".pt", ".pth", ".pt2", ".keras", ".tflite"}
TORCH_KINDS = ("torch-factory", "torchscript", "exported-program", "keras")


@dataclass(frozen=True)
class SourceModel:
    """A loaded model and where it came from.

    ``kind`` is one of ``onnx``, ``openvino-ir``, ``torch-factory``, ``torchscript``,
    ``exported-program``, ``keras``, ``reference``, ``tflite`` or ``tensorflow-savedmodel``
    (converted to the ONNX file at ``path``). Torch kinds carry ``module`` (an
    ``nn.Module`` or ``ExportedProgram``; a Keras model on the torch backend is wrapped in
    one) and ``example_inputs``.
    """

    spec: str
    kind: str
    path: Path | None = None
    sha256: str | None = None
    module: Any = None
    example_inputs: tuple = ()
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def is_torch(self) -> bool:
        return self.kind in TORCH_KINDS or self.kind == "reference"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_input_shapes(text: str | None) -> dict[str, tuple[int, ...]] | tuple[int, ...] | None:
    """Parse ``--input-shape``: ``1,3,224,224`` or ``name=1,3,224,224;other=1,8``."""
    if text is None:
        return None

    def dims(part: str) -> tuple[int, ...]:
        try:
            # "1,3,8,8" or "1x3x8x8"; an empty or non-integer dimension ("1,x,8") is an error
            values = tuple(int(d) for d in re.split(r"[,x]", part.strip()))
        except ValueError as e:
            msg = f"--input-shape '{text}' is not a list of integers (e.g. 1,3,224,224)"
            raise InputShapeError(msg) from e
        if not values or any(v <= 0 for v in values):
            msg = f"--input-shape '{text}' needs positive dimensions (e.g. 1,3,224,224)"
            raise InputShapeError(msg)
        return values

    if "=" not in text:
        return dims(text)
    shapes: dict[str, tuple[int, ...]] = {}
    for part in text.split(";"):
        name, sep, shape = part.partition("=")
        if not sep or not name.strip():
            msg = f"--input-shape '{text}': expected name=d0,d1,... separated by ';'"
            raise InputShapeError(msg)
        shapes[name.strip()] = dims(shape)
    return shapes


def load_model(spec: str, input_shape: str | None = None) -> SourceModel:
    """Load the model named by ``spec`` without modifying it.

    Raises:
        ModelLoadError: the file is missing, empty, truncated, or of the wrong kind, or a
            factory does not import or does not return a module.
        InputShapeError: ``input_shape`` is malformed.
    """
    shapes = parse_input_shapes(input_shape)
    path = Path(spec)
    if path.suffix.lower() in _SUFFIXES or path.exists():
        return _load_file(spec, path, shapes)
    if _FACTORY_SPEC.match(spec):
        return _load_factory(spec, shapes)
    raise ModelLoadError(
        spec,
        "not a model file or a 'package.module:factory' spec",
        "pass a .onnx, .xml (OpenVINO IR), .pt (TorchScript), .pt2 (ExportedProgram), .keras, "
        ".tflite, a TensorFlow SavedModel folder, package.module:factory, or ref:NAME",
    )


def _load_file(spec: str, path: Path, shapes) -> SourceModel:
    from edgeopt.convert import keras_tf

    if not path.exists():
        raise ModelLoadError(spec, "no such file", "check the path")
    if keras_tf.is_saved_model(path):
        return keras_tf.convert_tensorflow(spec, path)
    if path.is_dir():
        raise ModelLoadError(spec, "is a directory, not a model file (nor a TensorFlow "
                                   "SavedModel: no saved_model.pb in it)")
    if path.stat().st_size == 0:
        raise ModelLoadError(spec, "the file is empty (0 bytes)", "re-export the model")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(spec, path)
    if suffix == ".xml":
        return _load_ir(spec, path)
    if suffix in {".pt", ".pth"}:
        return _load_torchscript(spec, path, shapes)
    if suffix == ".pt2":
        return _load_exported_program(spec, path)
    if suffix == ".keras":
        return keras_tf.load_keras(spec, path, shapes)
    if suffix == ".tflite":
        return keras_tf.convert_tensorflow(spec, path)
    raise ModelLoadError(
        spec, f"unknown model file type '{suffix}'",
        "use .onnx, .xml, .pt, .pt2, .keras, .tflite or a SavedModel folder"
    )


def _load_onnx(spec: str, path: Path) -> SourceModel:
    import onnx

    try:
        # Checking by path also validates models with external data.
        onnx.checker.check_model(str(path))
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError...
        raise ModelLoadError(
            spec, f"not a valid ONNX model ({short_reason(e, 200)})",
            "re-export it or check the file",
        ) from e
    initializers = {i.name for i in proto.graph.initializer}
    inputs = tuple(i.name for i in proto.graph.input if i.name not in initializers)
    outputs = tuple(o.name for o in proto.graph.output)
    extra = {}
    if needs_upgrade(proto):    # before any other work: what cannot convert is refused now
        upgraded, found = upgrade_opset(onnx.load(str(path)))
        extra = {"upgraded": upgraded, "opset": found}
    return SourceModel(spec, "onnx", path=path, sha256=file_sha256(path),
                       input_names=inputs, output_names=outputs, extra=extra)


def _load_ir(spec: str, path: Path) -> SourceModel:
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ModelLoadError(
            spec, f"OpenVINO IR needs its weights file '{weights.name}' beside it",
            "copy the .bin next to the .xml",
        )
    head = path.read_bytes()[:512].lstrip()
    if not head.startswith(b"<?xml") and not head.startswith(b"<net"):
        raise ModelLoadError(spec, "not an OpenVINO IR .xml file")
    digest = hashlib.sha256()
    for part in (path, weights):
        digest.update(bytes.fromhex(file_sha256(part)))
    return SourceModel(spec, "openvino-ir", path=path, sha256=digest.hexdigest())


def _example_from_shapes(shapes, spec: str) -> tuple:
    import torch

    if shapes is None:
        msg = f"'{spec}' gives no example inputs: pass --input-shape (e.g. 1,3,224,224)"
        raise InputShapeError(msg)
    if isinstance(shapes, dict):
        return tuple(torch.randn(*s) for s in shapes.values())
    return (torch.randn(*shapes),)


def _load_torchscript(spec: str, path: Path, shapes) -> SourceModel:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ModelLoadError(
            spec, f"not a TorchScript archive ({short_reason(e, 160)})",
            "save it with torch.jit.save, or pass package.module:factory for an nn.Module",
        ) from e
    module.eval()
    example = _example_from_shapes(shapes, spec)
    return SourceModel(spec, "torchscript", path=path, sha256=file_sha256(path),
                       module=module, example_inputs=example)


@contextlib.contextmanager
def _library_quiet():
    """torch logs a failed load as a warning with its traceback before raising; the error
    itself becomes edgeopt's one line, so its log and warnings are held back meanwhile."""
    import logging
    import warnings

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _load_exported_program(spec: str, path: Path) -> SourceModel:
    import torch

    try:
        with _library_quiet():
            program = torch.export.load(str(path))
    except Exception as e:
        raise ModelLoadError(
            spec, f"not an ExportedProgram archive ({short_reason(e, 160)})",
            "save it with torch.export.save",
        ) from e
    example = tuple(program.example_inputs[0]) if program.example_inputs else ()
    if not example:
        raise ModelLoadError(spec, "the ExportedProgram carries no example inputs")
    return SourceModel(spec, "exported-program", path=path, sha256=file_sha256(path),
                       module=program, example_inputs=example)


class FactoryError(Exception):
    """A ``package.module:factory`` that cannot be imported or called: what, and a hint."""

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem, self.hint = problem, hint
        super().__init__(f"{problem}; {hint}" if hint else problem)


def call_factory(spec: str) -> Any:
    """Import ``package.module:attr`` (the working directory on the path) and call it.

    Raises:
        FactoryError: the module does not import, has no such callable, or the call raised.
    """
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # let users name modules in the working dir
    try:
        mod = importlib.import_module(module_name)
    except Exception as e:
        problem = f"cannot import '{module_name}' ({type(e).__name__}: {short_reason(e, 160)})"
        raise FactoryError(problem, "check the module is on PYTHONPATH") from e
    factory = getattr(mod, attr, None)
    if factory is None or not callable(factory):
        problem = f"'{module_name}' has no callable '{attr}'"
        raise FactoryError(problem)
    try:
        return factory()
    except Exception as e:
        problem = f"the factory raised {type(e).__name__}: {short_reason(e, 160)}"
        raise FactoryError(problem) from e


def _load_factory(spec: str, shapes) -> SourceModel:
    import torch

    try:
        made = call_factory(spec)
    except FactoryError as e:
        raise ModelLoadError(spec, e.problem, e.hint) from e
    example: tuple = ()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        made, example = made
        example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not isinstance(made, torch.nn.Module):
        raise ModelLoadError(
            spec, f"the factory returned {type(made).__name__}, not a torch.nn.Module",
            "return an nn.Module, or (module, example_inputs)",
        )
    if shapes is not None:
        example = _example_from_shapes(shapes, spec)
    elif not example and getattr(made, "example_inputs", None) is not None:
        ex = made.example_inputs
        example = tuple(ex) if isinstance(ex, (tuple, list)) else (ex,)
    if not example:
        example = _example_from_shapes(None, spec)
    source_file = getattr(sys.modules.get(spec.partition(":")[0]), "__file__", None)
    digest = file_sha256(Path(source_file)) if source_file else None
    return SourceModel(spec, "torch-factory", sha256=digest, module=made.eval(),
                       example_inputs=example)
