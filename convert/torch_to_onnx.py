"""PyTorch -> ONNX with the dynamo exporter, falling back to the TorchScript exporter."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.convert.errors import ExportError, InputShapeError, short_reason

DEFAULT_OPSET = 18  # ONNX Runtime's quantizer and OpenVINO both take it


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str                     # "dynamo" | "torchscript"
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def default_input_names(module: Any, count: int) -> tuple[str, ...]:
    """Names for the graph inputs: forward()'s parameter names, else input, input_1..."""
    forward = getattr(module, "forward", None)
    try:
        params = [p.name for p in inspect.signature(forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= count and all(p.isidentifier() for p in params[:count]):
        names = params[:count]
        return ("input",) if count == 1 and names[0] == "x" else tuple(names)
    return ("input",) if count == 1 else tuple(f"input_{i}" for i in range(count))


def run_torch(module: Any, inputs: tuple) -> list[np.ndarray]:
    """Run a module (or ExportedProgram) and flatten its outputs to numpy arrays."""
    import torch

    call = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    with torch.no_grad():
        out = call(*inputs)
    flat = out if isinstance(out, (tuple, list)) else (out,)
    return [t.detach().cpu().numpy() for t in flat]


def check_inputs_fit(module: Any, example_inputs: tuple, shape_text: str | None) -> list[np.ndarray]:
    """Run the module once on the example inputs; a failure means the shape does not fit."""
    try:
        return run_torch(module, example_inputs)
    except Exception as e:
        shapes = ", ".join("x".join(str(d) for d in t.shape) for t in example_inputs)
        flag = f"--input-shape {shape_text}" if shape_text else f"input shape {shapes}"
        msg = f"{flag} does not fit the model ({short_reason(e, 200)}); pass the shape the model takes"
        raise InputShapeError(msg) from e


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings to stdout/stderr; keep the CLI clean."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                               "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), \
                contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    module: Any,
    example_inputs: tuple,
    out: Path,
    *,
    input_names: tuple[str, ...] | None = None,
    output_names: tuple[str, ...] | None = None,
    opset: int = DEFAULT_OPSET,
    prefer: str = "dynamo",
) -> ExportResult:
    """Export ``module`` to ``out`` (written under a temporary name, then renamed).

    The dynamo exporter (``torch.export`` + onnxscript) is tried first; if it fails the
    TorchScript exporter is used and a warning says why.
    """
    import torch

    input_names = input_names or default_input_names(module, len(example_inputs))
    outs = run_torch(module, example_inputs)
    output_names = output_names or (
        ("output",) if len(outs) == 1 else tuple(f"output_{i}" for i in range(len(outs)))
    )
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    notes: list[str] = []
    attempts = ["dynamo", "torchscript"] if prefer == "dynamo" else ["torchscript"]
    if isinstance(module, torch.export.ExportedProgram):
        attempts = ["dynamo"]
    last_error: Exception | None = None
    for exporter in attempts:
        try:
            with _quiet():
                torch.onnx.export(
                    module, example_inputs, str(tmp), dynamo=exporter == "dynamo",
                    input_names=list(input_names), output_names=list(output_names),
                    opset_version=opset, external_data=False,
                    **({} if exporter == "dynamo" else {"do_constant_folding": True}),
                )
            os.replace(tmp, out)
            return ExportResult(out, exporter, opset, tuple(input_names), tuple(output_names),
                                tuple(notes))
        except Exception as e:  # the exporters raise many kinds of errors
            last_error = e
            tmp.unlink(missing_ok=True)
            notes.append(f"{exporter} exporter failed ({short_reason(e, 200)}); "
                         "falling back to the TorchScript exporter")
    raise ExportError("torch -> ONNX export", short_reason(last_error)) from last_error


def onnx_input_specs(path: Path) -> list[tuple[str, str, tuple[int | str, ...]]]:
    """(name, numpy dtype name, shape) of each graph input; dynamic dims are strings."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in tensor.shape.dim)
        specs.append((value.name, dtype, shape))
    return specs


def fix_onnx_shapes(
    specs: list[tuple[str, str, tuple[int | str, ...]]],
    shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | None,
    shape_text: str | None,
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes for an ONNX model: its static shapes, or ``--input-shape``."""
    if isinstance(shapes, tuple):
        if len(specs) != 1:
            names = ", ".join(s[0] for s in specs)
            msg = (f"--input-shape {shape_text}: the model has {len(specs)} inputs ({names}); "
                   "give name=shape for each, separated by ';'")
            raise InputShapeError(msg)
        shapes = {specs[0][0]: shapes}
    shapes = shapes or {}
    unknown = sorted(set(shapes) - {s[0] for s in specs})
    if unknown:
        names = ", ".join(s[0] for s in specs)
        msg = f"--input-shape names unknown input(s) {', '.join(unknown)}; the model's inputs: {names}"
        raise InputShapeError(msg)
    fixed: dict[str, tuple[int, ...]] = {}
    for name, _dtype, model_shape in specs:
        given = shapes.get(name)
        if given is None:
            if any(not isinstance(d, int) or d <= 0 for d in model_shape):
                dims = ",".join(str(d) for d in model_shape)
                msg = (f"input '{name}' has dynamic shape [{dims}]; "
                       "pass --input-shape with concrete dimensions (an image input also "
                       "takes its size from --preprocess crop or resize=HxW)")
                raise InputShapeError(msg)
            fixed[name] = tuple(int(d) for d in model_shape)
            continue
        fits = len(given) == len(model_shape) and all(
            not isinstance(m, int) or m <= 0 or m == g for m, g in zip(model_shape, given, strict=True)
        )
        if not fits:
            dims = ",".join(str(d) for d in model_shape)
            got = ",".join(str(d) for d in given)
            msg = (f"--input-shape {got} does not fit input '{name}' of shape [{dims}]; "
                   "pass the shape the model takes")
            raise InputShapeError(msg)
        fixed[name] = given
    return fixed
