"""PyTorch -> ONNX: the TorchScript exporter when its trace is clean, else the dynamo
exporter (``torch.export`` + onnxscript); each is the other's fallback."""

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
def _quiet(traced: list[str]):
    """The exporters print progress and warnings to stdout/stderr; keep the CLI clean.
    The tracer's warnings (a Python value read from a tensor: the trace may not hold for
    other inputs) are collected into ``traced``."""
    import torch

    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                               "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buf), \
                contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", torch.jit.TracerWarning)
            yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        traced += [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def _attempts(module: Any, prefer: str) -> list[str]:
    import torch

    if isinstance(module, torch.export.ExportedProgram):
        return ["dynamo"]
    return ["dynamo", "torchscript"] if prefer == "dynamo" else ["torchscript", "dynamo"]


def export_onnx(
    module: Any,
    example_inputs: tuple,
    out: Path,
    *,
    input_names: tuple[str, ...] | None = None,
    output_names: tuple[str, ...] | None = None,
    opset: int = DEFAULT_OPSET,
    prefer: str = "torchscript",
) -> ExportResult:
    """Export ``module`` to ``out`` (written under a temporary name, then renamed).

    The TorchScript exporter runs first: it takes ~0.4 s where the dynamo exporter takes
    3-8 s (mobilenet-v2), and it is what Optimum and Olive export with. Its trace records
    one run, so when the tracer warns that a Python value came from a tensor (control
    flow or shapes that may differ for other inputs), or it fails, the dynamo exporter
    (``torch.export``, which follows such values or refuses them) exports instead; if
    that fails too, a clean-enough trace is kept with a warning. ``prefer="dynamo"``
    tries dynamo first. An ExportedProgram goes to dynamo only.
    """
    input_names = input_names or default_input_names(module, len(example_inputs))
    outs = run_torch(module, example_inputs)
    output_names = output_names or (
        ("output",) if len(outs) == 1 else tuple(f"output_{i}" for i in range(len(outs)))
    )
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    names = (tuple(input_names), tuple(output_names))
    attempts = _attempts(module, prefer)
    failures: list[str] = []
    kept: tuple[Path, str] | None = None    # a trace the tracer warned about, if dynamo fails
    last_error: Exception | None = None
    for exporter in attempts:
        traced: list[str] = []
        try:
            _run_exporter(exporter, module, example_inputs, tmp, names, opset, traced)
        except Exception as e:  # the exporters raise many kinds of errors
            last_error = e
            tmp.unlink(missing_ok=True)
            failures.append(f"{exporter} exporter failed ({short_reason(e, 200)})")
            continue
        if traced:
            kept = (tmp.with_name(tmp.name + ".traced"), traced[0])
            os.replace(tmp, kept[0])
            continue
        if kept is not None:
            kept[0].unlink()
        notes = [f"{failures[0]}; exported with the {exporter} exporter"] if failures else []
        os.replace(tmp, out)
        return ExportResult(out, exporter, opset, *names, tuple(notes))
    if kept is not None:
        os.replace(kept[0], out)
        return ExportResult(out, "torchscript", opset, *names, (
            *failures, f"kept the TorchScript trace, which may not hold for inputs unlike "
                       f"the examples ({short_reason(kept[1], 200)})"))
    raise ExportError("torch -> ONNX export", short_reason(last_error)) from last_error


def _run_exporter(exporter: str, module: Any, example_inputs: tuple, tmp: Path,
                  names: tuple[tuple[str, ...], tuple[str, ...]], opset: int,
                  traced: list[str]) -> None:
    import torch

    with _quiet(traced):
        torch.onnx.export(
            module, example_inputs, str(tmp), dynamo=exporter == "dynamo",
            input_names=list(names[0]), output_names=list(names[1]),
            opset_version=opset, external_data=False,
            **({} if exporter == "dynamo" else {"do_constant_folding": True}),
        )
    if exporter == "torchscript":
        _name_folded_weights(tmp)


_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _name_folded_weights(path: Path) -> None:
    """The TorchScript exporter names the weights it folds (a convolution's, with its
    BatchNorm) ``onnx::Conv_40``; give each the module's name, as the dynamo exporter
    does (``stem.weight``, ``stem.bias``), which the pruning and layer reports show. The
    module comes from the node's scope name (``/features/features.0/features.0.0/Conv``:
    ``features.0.0``); a name already taken is left as it is."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    taken = {i.name for i in graph.initializer} | {v.name for v in graph.input}
    uses: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    renamed = {}
    for init in graph.initializer:
        parts = uses.get(init.name, [])
        scope = parts[0][0].name.split("/") if len(parts) == 1 else []
        role = ({1: "weight", 2: "bias"}.get(parts[0][1])
                if len(parts) == 1 and parts[0][0].op_type in _WEIGHTED else None)
        new = f"{scope[-2]}.{role}" if len(scope) >= 3 and scope[-2] and role else None
        if init.name.startswith("onnx::") and new and new not in taken:
            taken.add(new)
            renamed[init.name] = init.name = new
    if not renamed:
        return
    for node in graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
    onnx.save(model, str(path))


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
