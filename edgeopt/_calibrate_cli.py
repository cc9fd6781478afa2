"""`edgeopt devices calibrate ID`: measure a set of models on a device present here and fit
the efficiency factors its estimates are scaled by (edgeopt.runtimes.estimate).

The models (shared with benchmarks/estimates.py): the reference models and a few built in
code, each as FP32 ONNX and as ONNX Runtime's INT8 QDQ ONNX. They are exported once into
the cache dir (beside calibration.json) with their inputs, so a recalibration only measures.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.errors import UsageError

CALIB_SAMPLES = 8
MODELS_VERSION = 1          # bump when a model below changes, so cached files are rebuilt


@dataclass(frozen=True)
class CalibModel:
    """A model exported for calibration: its ONNX file and one input dict for timing."""

    name: str               # e.g. "mobilenet-v2.int8"
    path: Path
    inputs: dict[str, np.ndarray]


# ---------------------------------------------------------------------------- models in code

def _mlp(width: int, depth: int, features: int = 512):
    from torch import nn

    layers: list = []
    n = features
    for _ in range(depth):
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    return _Wrap(nn.Sequential(*layers, nn.Linear(n, 10))), (1, features)


def _resnet_small():
    from torch import nn

    def block(cin, cout, stride):
        return _Residual(nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)),
            None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    net = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                        block(32, 32, 1), block(32, 64, 2), block(64, 128, 2), block(128, 128, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    return _Wrap(net), (1, 3, 64, 64)


def _dwsep():
    from torch import nn

    def dw(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

    net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                        *dw(32, 64, 1), *dw(64, 128, 2), *dw(128, 128, 1), *dw(128, 256, 2),
                        *dw(256, 256, 1), *dw(256, 512, 2), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(512, 100))
    return _Wrap(net), (1, 3, 128, 128)


def _transformer(dim: int = 256, layers: int = 2, seq: int = 64):
    from torch import nn

    return _Wrap(nn.Sequential(*[_EncoderLayer(dim, 4) for _ in range(layers)])), (1, seq, dim)


@functools.lru_cache(maxsize=1)
def _torch_classes():
    """nn.Module classes, defined on first use so importing this module needs no torch."""
    import torch
    from torch import nn

    class Wrap(nn.Module):        # nncf/dynamo dislike a bare Sequential at the top
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    class Residual(nn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            skip = x if self.shortcut is None else self.shortcut(x)
            return torch.relu(self.body(x) + skip)

    class EncoderLayer(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            b, s, d = x.shape
            q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(
                2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
            x = self.ln1(x + self.proj((att @ v).transpose(1, 2).reshape(b, s, d)))
            return self.ln2(x + self.ff(x))

    return Wrap, Residual, EncoderLayer


def _Wrap(net):  # noqa: N802 - stands for the class
    return _torch_classes()[0](net)


def _Residual(body, shortcut):  # noqa: N802
    return _torch_classes()[1](body, shortcut)


def _EncoderLayer(dim, heads):  # noqa: N802
    return _torch_classes()[2](dim, heads)


CODE_MODELS: dict[str, Callable] = {
    "mlp-512x3": lambda: _mlp(512, 3),
    "mlp-2048x2": lambda: _mlp(2048, 2),
    "resnet-small": _resnet_small,
    "dwsep-net": _dwsep,
    "transformer-2x256": _transformer,
}
REFERENCE = ("digits-cnn", "mobilenet-v2", "minilm")
DEFAULT_MODELS = (*(f"ref:{r}" for r in REFERENCE), *CODE_MODELS)


# ---------------------------------------------------------------------------- export + measure

def models_dir() -> Path:
    from edgeopt.runtimes.estimate import calibration_path

    return calibration_path().parent / f"calibration-models-v{MODELS_VERSION}"


def _source(spec: str):
    """(module, example inputs, input names, output names, calibration samples)."""
    import torch

    torch.manual_seed(0)
    if spec.startswith("ref:"):
        from edgeopt.reference_models import get_reference

        ref = get_reference(spec[4:])
        calib = ref.calibration_set(CALIB_SAMPLES)
        names = tuple(n for n, _, _ in ref.input_specs)
        example = tuple(torch.from_numpy(calib[0][n]) for n in names)
        return ref.build(), example, names, (ref.output_name,), calib
    module, shape = CODE_MODELS[spec]()
    module.eval()
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal(shape).astype(np.float32)}
             for _ in range(CALIB_SAMPLES)]
    return module, (torch.from_numpy(calib[0]["input"]),), ("input",), ("output",), calib


def prepare_models(specs=DEFAULT_MODELS, progress: Callable[[str], None] | None = None,
                   ) -> list[CalibModel]:
    """FP32 and INT8 (QDQ for ONNX Runtime) ONNX files of each model, cached."""
    out = models_dir()
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for spec in specs:
        stem = spec.removeprefix("ref:")
        fp32, int8 = out / f"{stem}.fp32.onnx", out / f"{stem}.int8.onnx"
        feeds = out / f"{stem}.inputs.npz"
        if not (fp32.is_file() and int8.is_file() and feeds.is_file()):
            if progress:
                progress(f"export {stem}")
            _export(spec, fp32, int8, feeds)
        with np.load(feeds) as data:
            inputs = {k: data[k] for k in data.files}
        models += [CalibModel(f"{stem}.fp32", fp32, inputs), CalibModel(f"{stem}.int8", int8, inputs)]
    return models


def _export(spec: str, fp32: Path, int8: Path, feeds: Path) -> None:
    from edgeopt.calibrate import QuantConfig, quantize_onnx_for_ort
    from edgeopt.convert import export_onnx

    module, example, names, outputs, calib = _source(spec)
    export_onnx(module, example, fp32, input_names=names, output_names=outputs)
    # Timing does not depend on the ranges: the cheapest calibrator, no equalization or
    # rounding search.
    quantize_onnx_for_ort(fp32, int8, calib, QuantConfig(
        calibrator="minmax", equalize=False, weight_rounding=False, bias_correction=False))
    tmp = feeds.with_name(f".{feeds.stem}.tmp.npz")
    np.savez(tmp, **calib[0])
    tmp.replace(feeds)


def measure(models: list[CalibModel], runtime: str, protocol=None, unit=None, rounds: int = 3,
            progress: Callable[[int, int], None] | None = None) -> list:
    """Measured p50 of each model with the runtime's CPU adapter, by the benchmark protocol
    (short), in ``rounds`` passes over all the models. A model's figure is the lowest
    repeat p50 over the passes: other processes on the machine only ever add time, and
    passes spread a burst of contention over different models.
    Returns ``edgeopt.runtimes.estimate.Measurement``s."""
    from edgeopt.backends import get_backend
    from edgeopt.runtimes import BenchProtocol
    from edgeopt.runtimes.bench import run_benchmark
    from edgeopt.runtimes.estimate import Measurement

    protocol = protocol or BenchProtocol(warmup=5, min_iterations=20, min_seconds=1.0,
                                         max_seconds=10.0, repeats=1)
    adapter = get_backend(runtime).adapter()
    best = {m.name: float("inf") for m in models}
    total = rounds * len(models)
    for r in range(rounds):
        for i, m in enumerate(models):
            if progress:
                progress(r * len(models) + i, total)
            result = run_benchmark(adapter, m.path, m.inputs, protocol, unit)
            best[m.name] = min(best[m.name], *result.repeat_p50_ms)
    if progress:
        progress(total, total)
    return [Measurement(m.name, m.path, best[m.name]) for m in models]


# ---------------------------------------------------------------------------- the command

def run_calibrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgeopt._progress import Steps
    from edgeopt._tables import add_column, console_width
    from edgeopt.backends import get_backend, runtime_names
    from edgeopt.runtimes import load_devices
    from edgeopt.runtimes.estimate import calibrate, save_calibration

    profile = load_devices().get(args.id)
    if not profile.host:
        msg = (f"cannot calibrate {args.id} here: not present (calibration measures on this "
               "machine; run 'edgeopt devices calibrate host-cpu', or calibrate on the device)")
        raise UsageError(msg)
    unit = next((u for u in profile.units if u.kind == "cpu"), profile.units[0])
    runtimes = args.runtimes or list(runtime_names())
    for runtime in runtimes:
        availability = get_backend(runtime).available()
        if not availability.ok:
            msg = f"cannot calibrate {args.id} with {runtime}: {availability.reason}"
            raise UsageError(msg)
    steps = Steps(quiet=args.quiet)
    with steps.step("export calibration models"):
        models = prepare_models(progress=lambda what: steps.console.log(what))
    results = []
    for runtime in runtimes:
        with steps.step(f"measure {len(models)} models with {runtime}") as update:
            measured = measure(models, runtime, unit=unit, progress=update)
        with steps.step(f"fit {runtime} (with leave-one-out)"):
            cal = calibrate(measured, profile, unit, runtime)
            path = save_calibration(cal)
        results.append(cal)
    if args.json:
        sys.stdout.write(json.dumps({"stored": str(path),
                                     "calibrations": [c.to_dict() for c in results]},
                                    indent=2, default=str) + "\n")
        return 0
    console = Console(width=console_width(), highlight=False)
    for cal in results:
        table = Table(title=f"{cal.key}: fitted on {len(cal.models)} models")
        for col in ("model", "measured p50 ms", "fitted ms", "error %", "LOO predicted ms",
                    "LOO error %"):
            add_column(table, col, right=col != "model")
        for fit, loo in zip(cal.models, cal.loo, strict=True):
            err = (fit["fitted_ms"] - fit["p50_ms"]) / fit["p50_ms"] * 100
            table.add_row(fit["model"], f"{fit['p50_ms']:.3f}", f"{fit['fitted_ms']:.3f}",
                          f"{err:+.1f}", f"{loo['predicted_ms']:.3f}", f"{loo['abs_pct']:.1f}")
        console.print(table)
        errors = cal.loo_abs_pct()
        console.print(f"leave-one-out abs error: median {np.median(errors):.1f}%, worst "
                      f"{errors.max():.1f}%; band x{cal.band_factor():.2f} (p90)")
        console.print("factors: " + ", ".join(f"{k}={v:.3g}" for k, v in cal.params.items()))
    console.print(f"stored in {path}")
    return 0
