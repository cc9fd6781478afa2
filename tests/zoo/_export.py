"""How zoo models are written: a torch module through the TorchScript exporter (it takes
any opset, so older ones are written as users have them), or a graph made with
onnx.helper."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path


def seeded(seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)


def randomize_batchnorm(module) -> None:
    """Non-trivial running statistics, so folded BatchNorms change the weights."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)


def export(module, example: tuple, path: Path, inputs: list[str], outputs: list[str],
           opset: int = 17, dynamic_axes: dict | None = None) -> Path:
    """``module`` (eval mode) to ONNX at ``opset``, quietly; returns ``path``."""
    import onnx
    import torch

    module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=False, input_names=inputs,
                          output_names=outputs, opset_version=opset,
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    onnx.checker.check_model(str(path))
    return path


def save_graph(path: Path, graph, opset: int = 17, ir_version: int = 8) -> Path:
    """An onnx.helper graph as a checked model at ``opset``."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
