"""Least-squares reconstruction after channel pruning (He et al. 2017, "Channel Pruning for
Accelerating Very Deep Neural Networks"; ThiNet, Luo et al. 2017).

Removing channels takes away part of what every following layer reads, and ImageNet-scale
models cannot be retrained here. So each layer that lost input channels is re-fitted, in
forward order, so that on calibration data its output from the *pruned* model's inputs
matches the *unpruned* model's output for the channels it keeps:

    min_{W, c} || X_pruned W^T + c - Y_original[:, kept] ||^2   (+ a small ridge)

The intercept ``c`` absorbs the constant part of the removed channels (a ReLU of a
BatchNorm bias is far from zero); it becomes the layer's bias. Layers are fitted one after
another on the inputs the already re-fitted layers produce, so errors do not pile up.
Pointwise (1x1) convolutions and Linear layers are fitted; they carry most of the weights
of the mobile networks pruning is for. BatchNorm statistics stay as trained: the fitted
pre-BatchNorm output is the original one.
"""

from __future__ import annotations

import numpy as np

POSITIONS = 256       # sampled output positions per sample and layer
RIDGE = 1e-3          # relative to the mean diagonal of X^T X


def _kind(module) -> str | None:
    import torch

    if isinstance(module, torch.nn.Linear):
        return "linear"
    if (isinstance(module, torch.nn.Conv2d) and module.groups == 1
            and module.kernel_size == (1, 1) and module.padding in ((0, 0), "valid")
            and module.dilation == (1, 1)):
        return "pointwise"
    return None


class _Reached(Exception):
    """Raised by a hook once the layer's tensor is captured: the rest of the forward pass
    is not needed."""


def _stop(store: dict, key: str, tensor) -> None:
    store[key] = tensor
    raise _Reached


def _rows(t, kind: str, stride, rng_seed: int):
    """(rows, channels) of a layer's input or output, a fixed sample of positions."""
    if kind == "linear":
        return t.reshape(-1, t.shape[-1])
    if stride is not None and stride != (1, 1):
        t = t[:, :, ::stride[0], ::stride[1]]
    flat = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    if flat.shape[0] > POSITIONS * t.shape[0]:
        idx = np.random.default_rng(rng_seed).choice(flat.shape[0], POSITIONS * t.shape[0],
                                                     replace=False)
        flat = flat[np.sort(idx)]
    return flat


def reconstruct(original, pruned, kept_out: dict[str, list[int]],
                refit: list[str], samples: list[tuple], batch: int = 16) -> int:
    """Re-fit the layers named in ``refit`` (names in both models) of ``pruned``; returns
    how many were fitted. ``kept_out[name]`` are the original output channels it keeps."""
    import torch

    modules_o, modules_p = dict(original.named_modules()), dict(pruned.named_modules())
    order = [n for n, _ in pruned.named_modules() if n in set(refit)]
    fitted = 0
    original.eval()
    pruned.eval()
    for layer_index, name in enumerate(order):
        mod_o, mod_p = modules_o[name], modules_p[name]
        kind = _kind(mod_p)
        if kind is None:
            continue
        stride = None if kind == "linear" else mod_p.stride
        seen: dict = {}
        hooks = [mod_p.register_forward_hook(lambda m, i, o, d=seen: _stop(d, "x", i[0])),
                 mod_o.register_forward_hook(lambda m, i, o, d=seen: _stop(d, "y", o))]
        xtx = xty = None
        try:
            with torch.no_grad():
                for start in range(0, len(samples), batch):
                    chunk = samples[start:start + batch]
                    inputs = tuple(torch.cat([s[k] for s in chunk]) for k in range(len(chunk[0])))
                    for model in (original, pruned):   # each forward stops at the layer
                        try:
                            model(*inputs)
                        except _Reached:
                            pass
                    seed = layer_index * 1000 + start
                    x = _rows(seen["x"], kind, stride, seed).double()
                    y = _rows(seen["y"], kind, None if kind == "linear" else (1, 1), seed)
                    y = y[:, kept_out.get(name, slice(None))].double()
                    if mod_o.bias is not None:
                        y = y - mod_o.bias.detach().double()[kept_out.get(name, slice(None))]
                    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
                    xtx = x.T @ x if xtx is None else xtx + x.T @ x
                    xty = x.T @ y if xty is None else xty + x.T @ y
        finally:
            for h in hooks:
                h.remove()
        ridge = RIDGE * float(torch.diagonal(xtx)[:-1].mean())
        reg = torch.eye(xtx.shape[0], dtype=xtx.dtype) * ridge
        reg[-1, -1] = 0.0
        solution = torch.linalg.solve(xtx + reg, xty)         # (in + 1, out)
        weight, intercept = solution[:-1].T, solution[-1]
        with torch.no_grad():
            mod_p.weight.copy_(weight.reshape(mod_p.weight.shape).to(mod_p.weight.dtype))
            if mod_p.bias is None:
                mod_p.bias = torch.nn.Parameter(intercept.to(mod_p.weight.dtype))
            else:
                mod_p.bias.copy_(intercept + (mod_o.bias.detach().double()
                                              [kept_out.get(name, slice(None))]))
        fitted += 1
    return fitted
