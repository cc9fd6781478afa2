"""Pruning before export: NNCF's unstructured magnitude/regularization pruning, and
dependency-aware channel removal with Torch-Pruning.

Unstructured pruning zeroes weights inside dense tensors: the file compresses, the kernels
run as fast as before. Channel pruning removes whole output channels (and the inputs that
read them, following residual adds, depthwise convolutions and concatenations through
Torch-Pruning's dependency graph), so the exported graph is smaller and does fewer MACs.

``prune`` never modifies the module it is given: it works on a deep copy.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeopt.calibrate.errors import CalibrationError

PRUNE_MODES = ("magnitude-global", "magnitude-local", "channels", "regularization")
IMPORTANCES = ("l1", "l2", "taylor")
UNSTRUCTURED = ("magnitude-global", "magnitude-local", "regularization")
RECON_SAMPLES = 64


class PruneError(CalibrationError):
    """Pruning cannot be done as asked (bad ratio, unknown layer, unsupported model)."""


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how much.

    ``ratio`` is the fraction of prunable weights set to zero (unstructured modes) or of
    output channels removed per prunable layer (``channels``). ``ignore`` names modules
    (``features.0.0``, ``classifier.1``) left whole. ``importance`` ranks channels:
    ``l1``/``l2`` norms of their weights, or ``taylor`` (data-driven: |weight x gradient|
    on calibration data, with the unpruned model's top-1 as the target). ``round_to``
    keeps channel counts multiples of it (SIMD-friendly widths). ``target_ratio`` of the
    regularization mode is ``ratio``, reached by fine-tuning with NNCF's RB loss.
    """

    mode: str
    ratio: float
    ignore: tuple[str, ...] = ()
    importance: str = "l1"
    round_to: int | None = 8

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in PRUNE_MODES:
            problems.append(f"unknown --prune-mode {self.mode!r} (known: {', '.join(PRUNE_MODES)})")
        if not (0.0 <= self.ratio < 1.0):
            problems.append(f"--prune-ratio {self.ratio} must be in [0, 1) "
                            "(the fraction of weights or channels removed)")
        if self.importance not in IMPORTANCES:
            problems.append(f"unknown --prune-importance {self.importance!r} "
                            f"(known: {', '.join(IMPORTANCES)})")
        if self.round_to is not None and self.round_to < 1:
            problems.append(f"round_to {self.round_to} must be >= 1")
        if problems:
            raise PruneError("; ".join(problems))

    @property
    def structured(self) -> bool:
        return self.mode == "channels"


@dataclass
class Pruned:
    """A pruned copy of the model, still trainable (unstructured masks are live hooks)."""

    module: Any
    config: PruneConfig
    before: dict                        # {"macs", "params"} of the unpruned model
    example_inputs: tuple
    rb_loss: Any = None                 # NNCF RBLoss (regularization mode)
    reconstructed: int = 0              # channels: layers re-fitted by least squares
    notes: list[str] = field(default_factory=list)

    def finalize(self) -> Any:
        """The plain ``nn.Module`` to export: NNCF masks baked into the weights
        (``StripFormat.IN_PLACE``), so the exported tensors really hold the zeros."""
        if self.config.structured or self.config.ratio == 0 and self.rb_loss is None:
            return self.module
        import nncf

        _import_torchao_quietly()
        return nncf.strip(self.module, strip_format=nncf.StripFormat.IN_PLACE,
                          example_input=self._nncf_example())

    def _nncf_example(self):
        return self.example_inputs[0] if len(self.example_inputs) == 1 else self.example_inputs


def _import_torchao_quietly() -> None:
    """nncf.strip imports torchao, which logs a warning for every CUDA kernel library it
    cannot load on a CPU-only machine; those say nothing about the user's run."""
    import logging
    import warnings

    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao  # noqa: F401
    except ImportError:
        pass
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


def check_prunable(module: Any, spec: str) -> None:
    """Pruning edits an ``nn.Module``: TorchScript, ExportedProgram and ONNX cannot be."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        msg = (f"cannot prune TorchScript {spec}: its graph is frozen; pass the PyTorch model "
               "as package.module:factory")
        raise PruneError(msg)
    if isinstance(module, torch.export.ExportedProgram):
        msg = (f"cannot prune ExportedProgram {spec}; pass the PyTorch model as "
               "package.module:factory")
        raise PruneError(msg)
    if not isinstance(module, torch.nn.Module):
        msg = (f"cannot prune {spec}: pass the PyTorch model (package.module:factory or "
               "ref:NAME) instead; an ONNX graph has lost the layers pruning works on")
        raise PruneError(msg)


def resolve_ignored(module: Any, names: tuple[str, ...]) -> list[Any]:
    """The modules named in ``--prune-ignore``; every unknown name is reported at once."""
    named = dict(module.named_modules())
    problems = []
    for name in names:
        if name not in named or name == "":
            close = difflib.get_close_matches(name, [n for n in named if n], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"'{name}'{hint}")
    if problems:
        msg = (f"--prune-ignore: no such layer {', '.join(problems)} in the model; "
               "layer names are the model's module names, e.g. features.0.0")
        raise PruneError(msg)
    return [named[n] for n in names]


def count_macs_params(module: Any, example_inputs: tuple) -> dict:
    """Multiply-accumulates of one forward pass and parameters (Torch-Pruning's counter)."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, _tp_example(example_inputs))
    return {"macs": int(macs), "params": int(params)}


def prune(module: Any, example_inputs: tuple, config: PruneConfig, *,
          calib: list[dict[str, np.ndarray]] | None = None,
          input_names: tuple[str, ...] = ()) -> Pruned:
    """Prune a deep copy of ``module``. ``calib`` feeds the data-driven ``taylor`` score and,
    for ``channels``, the least-squares re-fit of the layers that lost inputs."""
    import torch


    check_prunable(module, "the model")
    model = copy.deepcopy(module).eval()
    ignored = resolve_ignored(model, config.ignore)
    before = count_macs_params(model, example_inputs)
    pruned = Pruned(model, config, before, tuple(example_inputs))
    if config.ratio == 0 and config.mode != "regularization":
        pruned.notes.append("--prune-ratio 0: nothing removed (a baseline)")
        return pruned
    if config.structured:
        kept_out, refit = _prune_channels(model, example_inputs, config, ignored, calib,
                                          input_names)
        if calib and refit:
            from edgeopt.calibrate.reconstruct import reconstruct

            names = input_names or tuple(calib[0])
            samples = [tuple(torch.from_numpy(s[n]) for n in names) for s in calib[:RECON_SAMPLES]]
            fitted = reconstruct(module, model, kept_out, refit, samples)
            pruned.notes.append(f"{fitted} layers re-fitted by least squares to the unpruned "
                                f"outputs on {len(samples)} calibration samples")
            pruned.reconstructed = fitted
        return pruned
    pruned.module, pruned.rb_loss = _prune_unstructured(model, example_inputs, config)
    return pruned


def _tp_example(example_inputs: tuple):
    return example_inputs[0] if len(example_inputs) == 1 else tuple(example_inputs)


def _prune_unstructured(model, example_inputs: tuple, config: PruneConfig):
    import nncf

    ignored = nncf.IgnoredScope(
        names=[f"{name}.{p}" for name in config.ignore
               for p, _ in model.get_submodule(name).named_parameters(recurse=True)],
        validate=False)
    example = example_inputs[0] if len(example_inputs) == 1 else tuple(example_inputs)
    if config.mode == "regularization":
        from nncf.torch.function_hook.pruning.rb.losses import RBLoss

        model = nncf.prune(model, nncf.PruneMode.UNSTRUCTURED_REGULARIZATION_BASED,
                           ignored_scope=ignored, examples_inputs=example)
        return model, RBLoss(model, target_ratio=config.ratio)
    mode = (nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_GLOBAL if config.mode == "magnitude-global"
            else nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL)
    return nncf.prune(model, mode, ratio=config.ratio, ignored_scope=ignored,
                      examples_inputs=example), None


def _output_layers(model) -> list[Any]:
    """The layer whose outputs are the task's classes or features, never to be pruned: the
    last Linear/Conv the model registers (its head, for the models edgeopt handles)."""
    import torch

    last = None
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d)):
            last = module
    return [last] if last is not None else []


def _prune_channels(model, example_inputs: tuple, config: PruneConfig, ignored: list,
                    calib, input_names: tuple[str, ...]) -> tuple[dict, list[str]]:
    """Remove channels; returns the original output channels each layer keeps, and the
    layers that lost input channels (in the order Torch-Pruning met them)."""
    import torch_pruning as tp

    if config.importance == "taylor":
        importance = tp.importance.TaylorImportance()
    else:
        importance = tp.importance.MagnitudeImportance(p=1 if config.importance == "l1" else 2)
    keep = list(ignored) + [m for m in _output_layers(model) if m not in ignored]
    pruner = tp.pruner.MetaPruner(
        model, _tp_example(example_inputs), importance=importance,
        pruning_ratio=config.ratio, ignored_layers=keep, round_to=config.round_to)
    if config.importance == "taylor":
        if not calib:
            msg = "--prune-importance taylor scores channels on data: pass --calib (not random)"
            raise PruneError(msg)
        _taylor_gradients(model, calib, input_names)
    names = {id(m): n for n, m in model.named_modules()}
    removed_out: dict[str, set[int]] = {}
    refit: list[str] = []
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            name = names.get(id(dep.target.module))
            handler = getattr(dep.handler, "__name__", "")
            if name is None:
                continue
            if handler == "prune_out_channels":
                removed_out.setdefault(name, set()).update(int(i) for i in idxs)
            elif handler == "prune_in_channels" and name not in refit:
                refit.append(name)
        group.prune()
    model.zero_grad(set_to_none=True)
    widths = {n: _out_width(m) for n, m in module_widths(model)}
    kept_out = {n: [i for i in range(widths[n] + len(r)) if i not in r]
                for n, r in removed_out.items() if n in widths}
    return kept_out, refit


def module_widths(model):
    import torch

    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def _out_width(module) -> int:
    return module.out_channels if hasattr(module, "out_channels") else module.out_features


def _taylor_gradients(model, calib: list[dict[str, np.ndarray]],
                      input_names: tuple[str, ...], batches: int = 8) -> None:
    """Accumulate gradients of the cross-entropy against the model's own top-1 (no labels
    needed), which Taylor importance reads as |w * dL/dw| per channel."""
    import torch

    model.zero_grad(set_to_none=True)
    names = input_names or tuple(calib[0])
    for sample in calib[:batches * 8]:
        inputs = tuple(torch.from_numpy(sample[n]) for n in names)
        out = model(*inputs)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        target = logits.detach().argmax(dim=-1)
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          target.reshape(-1)).backward()


def adapt_batchnorm(model, samples: list[dict[str, np.ndarray]], input_names: tuple[str, ...],
                    batch: int = 16) -> int:
    """Re-estimate BatchNorm running statistics on ``samples`` (NNCF's batch-norm adaptation,
    with a cumulative average instead of the momentum one: every sample counts the same).

    Pruning changes what each BatchNorm sees, so the statistics measured before it are
    stale; without this, a channel-pruned MobileNetV2 predicts one class. Returns the number
    of BatchNorm layers adapted."""
    import nncf
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or not samples:
        return 0
    names = input_names or tuple(samples[0])
    batches = [tuple(torch.from_numpy(np.concatenate([s[n] for s in samples[i:i + batch]]))
                     for n in names) for i in range(0, len(samples), batch)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        nncf.batch_norm_adaptation(model, nncf.Dataset(batches))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    model.eval()
    return len(norms)


# --- the pruned weights, saved and loaded back --------------------------------------------

SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features",
               "out_features")
SAVED_FORMAT = "edgeopt-pruned-1"


def pruned_state(module) -> dict:
    """The pruned model's weights with the layer widths that changed, loadable with
    ``torch.load(path, weights_only=True)`` and ``load_pruned`` into a fresh model."""
    layers = {}
    for name, m in module.named_modules():
        attrs = {a: getattr(m, a) for a in SHAPE_ATTRS if type(getattr(m, a, None)) is int}
        if attrs:
            layers[name] = attrs
    return {"format": SAVED_FORMAT, "layers": layers, "state_dict": module.state_dict()}


def load_pruned(model, saved: dict):
    """Resize ``model`` (the unpruned architecture, e.g. its factory's output) to the saved
    widths and load the pruned weights into it; returns it."""
    import torch

    if saved.get("format") != SAVED_FORMAT:
        msg = f"not an edgeopt pruned state (format {saved.get('format')!r})"
        raise PruneError(msg)
    named = dict(model.named_modules())
    for name, attrs in saved["layers"].items():
        for attr, value in attrs.items():
            setattr(named[name], attr, value)
    for key, tensor in saved["state_dict"].items():
        owner, _, attr = key.rpartition(".")
        module = named[owner]
        current = getattr(module, attr)
        if current is None or current.shape == tensor.shape:
            continue
        if isinstance(current, torch.nn.Parameter):
            setattr(module, attr, torch.nn.Parameter(torch.empty_like(tensor)))
        else:
            module.register_buffer(attr, torch.empty_like(tensor))
    model.load_state_dict(saved["state_dict"])
    return model


# --- what the artifact holds ----------------------------------------------------------

WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def onnx_sparsity(onnx_path, min_size: int = 16) -> dict:
    """Zeros per weight tensor of the exported graph (Conv/Gemm/MatMul constant inputs),
    as measured in the file, and overall."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    layers = []
    seen = set()
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        for name in node.input[1:2] if node.op_type != "MatMul" else node.input[:2]:
            if name in inits and name not in seen:
                seen.add(name)
                array = numpy_helper.to_array(inits[name])
                if array.size >= min_size:
                    layers.append({"tensor": name, "node": node.name, "shape": list(array.shape),
                                   "size": int(array.size), "zeros": int((array == 0).sum())})
    total = sum(r["size"] for r in layers)
    zeros = sum(r["zeros"] for r in layers)
    for r in layers:
        r["sparsity"] = round(r["zeros"] / r["size"], 4)
    return {"layers": layers, "weights": total, "zeros": zeros,
            "sparsity": round(zeros / total, 4) if total else 0.0}


def deflated_size(paths) -> int:
    """Bytes of the files zipped with deflate (how an app bundle stores them)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for path in paths:
            z.write(path, arcname=str(path).rsplit("/", 1)[-1])
    return buf.getbuffer().nbytes


def rb_hooks(pruned: Pruned, epochs: int) -> tuple[Callable | None, Callable | None]:
    """(extra_loss, on_epoch_end) for fine-tuning in the regularization mode: NNCF's RB
    loss pulls the masks toward ``ratio``, whose target rises exponentially to it by the
    last epoch (NNCF's ExponentialRBPruningScheduler)."""
    if pruned.rb_loss is None:
        return None, None
    from nncf.torch.function_hook.pruning.rb.schedulers import ExponentialRBPruningScheduler

    scheduler = ExponentialRBPruningScheduler(pruned.rb_loss, initial_ratio=0.0,
                                              target_ratio=pruned.config.ratio,
                                              target_epoch=max(1, epochs - 1))
    scheduler.step(0)
    return pruned.rb_loss, lambda epoch: scheduler.step(epoch + 1)
