"""The `edgeopt` argument parser, one function per verb.

Options that a recipe also holds default to None, so that a flag overrides ``--recipe``
only when it is given; the defaults live in :mod:`edgeopt.recipe`. The parser imports no
runtime, torch or nncf, so ``edgeopt bench`` works on a device with only a runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["BENCH_FLAGS", "EXIT_USER_ERROR", "bench_protocol", "build_parser"]

EXIT_USER_ERROR = 2
# benchmark flag -> BenchProtocol field
BENCH_FLAGS = {"warmup": "warmup", "bench_iterations": "min_iterations",
               "bench_seconds": "min_seconds", "bench_repeats": "repeats", "threads": "threads",
               "bench_ci": "ci_pct", "bench_max_seconds": "max_seconds"}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit 2 as before."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def _runtimes() -> list[str]:
    from edgeopt.backends import runtime_names

    return list(runtime_names())


def _package_targets() -> list[str]:
    from edgeopt.backends import package_targets

    return list(package_targets())


def _overwrite_flag(parser: argparse.ArgumentParser) -> None:
    # Like --out, not part of the recipe: where a run writes, not what it builds.
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous run's output in --out whole (never merged); "
                             "without it a non-empty --out is refused")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = _Parser(prog="edgeopt", description="The `edgeopt` command line: optimize, prune, "
                     "bench, devices, package, verify.", parents=[common])
    from edgeopt import __version__

    parser.add_argument("--version", action="version", version=f"edgeopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for verb in (_optimize, _prune, _bench, _devices, _package, _verify, _run, _search):
        verb(sub, common)
    return parser


# ------------------------------------------------------------------------ shared groups

def bench_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("benchmark protocol")
    g.add_argument("--warmup", type=int, help="warm-up runs (default 10)")
    g.add_argument("--bench-iterations", type=int,
                   help="minimum timed runs per repeat (default 50)")
    g.add_argument("--bench-seconds", type=float,
                   help="minimum timed seconds per repeat (default 1)")
    g.add_argument("--bench-ci", type=float, metavar="PCT",
                   help="then stop once the p50's bootstrap 95%% interval is within PCT%% "
                        "of it (default 2; 0: stop at the minimums, fixed length)")
    g.add_argument("--bench-max-seconds", type=float, metavar="S",
                   help="cap per repeat, whatever the interval (default 3; at least "
                        "--bench-seconds)")
    g.add_argument("--bench-repeats", type=int,
                   help="independent repeats, each in a fresh process (default 2)")
    g.add_argument("--threads", type=int,
                   help="inference threads (default: the runtime's choice for latency)")


def bench_protocol(args: argparse.Namespace, base=None):
    """The benchmark protocol: ``base`` (default: the defaults) with the given flags."""
    from dataclasses import replace

    from edgeopt.runtimes import BenchProtocol

    base = base or BenchProtocol()
    given = {field: getattr(args, flag) for flag, field in BENCH_FLAGS.items()
             if getattr(args, flag, None) is not None}
    if "max_seconds" not in given and given.get("min_seconds", 0) > base.max_seconds:
        given["max_seconds"] = given["min_seconds"]     # a longer minimum lifts the cap
    return replace(base, **given)


def _prune_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    # Modes and importances are checked by PruneConfig, where they are defined: the parser
    # stays importable on a device without torch or nncf (edgeopt bench).
    g = p.add_argument_group("pruning (PyTorch models) and fine-tuning")
    g.add_argument("--prune-mode", required=required, metavar="MODE",
                   help="magnitude-global|magnitude-local (NNCF, unstructured zeros), channels "
                        "(whole channels removed: fewer MACs), regularization (NNCF RB loss "
                        "while fine-tuning)")
    g.add_argument("--prune-ratio", type=float,
                   help="fraction of weights (unstructured) or channels per layer removed, "
                        "in [0, 1) (default 0.5)")
    g.add_argument("--prune-ignore", action="append", metavar="LAYER",
                   help="module name to keep whole, e.g. features.0.0 (repeatable or "
                        "comma-separated)")
    g.add_argument("--prune-importance", metavar="l1|l2|taylor",
                   help="channels: rank by L1/L2 weight norm, or taylor (data-driven; default l1)")
    g.add_argument("--finetune-data", metavar="PATH",
                   help="fine-tune after pruning on: .npz (inputs + optional 'labels'), a folder "
                        "of class folders of images (labels), or images/.npy (distilled from "
                        "the unpruned model); default for ref:NAME: its own set")
    g.add_argument("--epochs", type=int, help="fine-tuning epochs (none without it)")
    g.add_argument("--lr", type=float,
                   help="fine-tuning learning rate (Adam; default 1e-4, suits pretrained models)")
    g.add_argument("--weight-decay", type=float,
                   help="L2 regularization while fine-tuning (default 1e-4)")
    g.add_argument("--batch-size", type=int,
                   help="global batch size (split across torchrun processes; default 32)")


def _palettize_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("palettization (app bundles)")
    g.add_argument("--palettize", type=int, metavar="BITS",
                   help="k-means weight palettization, 2..8 bits per weight (a fp16 lookup "
                        "table per group of output channels)")
    g.add_argument("--group-size", type=int, metavar="N",
                   help="output channels sharing one lookup table (default: one per channel)")


def _output_flags(p: argparse.ArgumentParser, json_help: str) -> None:
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="artifact name: NAME.fp32.onnx, NAME.int8.onnx, ... (default: "
                   "the model file's stem, the factory's module, or ref:NAME's NAME)")
    p.add_argument("--input-shape", help="e.g. 1,3,224,224 or name=1,3,224,224;mask=1,128")
    p.add_argument("--calib", help="calibration data: a .npy/.npz file or folder, an image "
                   "or folder of images (see --preprocess), package.module:factory "
                   "(yields {input_name: array} dicts), or 'random'")
    p.add_argument("--calib-samples", type=int,
                   help="use at most N calibration samples (images and factories: default 300)")
    p.add_argument("--preprocess", metavar="SPEC",
                   help="how --calib images become inputs: e.g. resize=256,crop=224,"
                        "mean=0.485:0.456:0.406,std=0.229:0.224:0.225,order=rgb,layout=nchw "
                        "(also scale=1/255, interp=bilinear), or a .json/.yaml file of those "
                        "keys; default for ref:NAME: the model's own")
    p.add_argument("--eval", metavar="DATA",
                   help="held-out evaluation data, in the forms of --calib (labels: class "
                        "folders, labels.csv, a 'labels' array in .npz, (inputs, label) pairs "
                        "from a factory); without it, --calib's data is split by a seeded "
                        "draw")
    p.add_argument("--eval-samples", type=int, help="evaluate on N samples (a seeded spread)")
    p.add_argument("--metric", help="top1, top5, agreement, cosine, sqnr, max-rel-error, or "
                                    "package.module:function(outputs, labels) -> float "
                                    "(higher is better); --max-accuracy-drop applies to it")


def _recipe_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", metavar="FILE",
                   help="replay a recipe.yaml or a run's report.json; flags given here override "
                        "its values, and MODEL may then be omitted")


# -------------------------------------------------------------------------------- verbs

def _optimize(sub, common) -> None:
    opt = sub.add_parser("optimize", parents=[common],
                         help="model -> FP32 and INT8 artifacts, checked and benchmarked")
    opt.add_argument("model", nargs="?", help="model.onnx, model.pt (TorchScript), model.pt2 "
                     "(ExportedProgram), package.module:factory, or ref:NAME")
    _recipe_flag(opt)
    opt.add_argument("--device", action="append", dest="devices", metavar="ID[:UNIT]",
                     help="device profile to benchmark on (repeatable; default host-cpu)")
    opt.add_argument("--require-measured", action="store_true", default=None,
                     help="a device that is not here is an error before any work, not an "
                          "estimate (for CI gates)")
    opt.add_argument("--runtime", action="append", dest="runtimes", choices=_runtimes(),
                     help="runtime(s) to build for (repeatable; default all)")
    opt.add_argument("--out", type=Path, default=None,
                     help="output folder (default edgeopt-out/<model name>)")
    _overwrite_flag(opt)
    _data_flags(opt)
    _quant_flags(opt)
    opt.add_argument("--json", action="store_true", help="print report.json on stdout")
    opt.add_argument("--package", action="append", dest="packages", metavar="TARGET",
                     choices=_package_targets(),
                     help="also write OUT/<model>-<TARGET>.zip, an app bundle "
                          f"({'|'.join(_package_targets())}; repeatable)")
    _palettize_flags(opt)
    opt.add_argument("--quiet", action="store_true", help="no progress output")
    _prune_flags(opt, required=False)
    opt.add_argument("--no-bench", action="store_true", default=None,
                     help="build and evaluate the artifacts, time nothing (the CI build step; "
                          "time them on the device with edgeopt bench or verify)")
    opt.add_argument("--cache-dir", metavar="DIR",
                     help="reuse unchanged steps from this cache (default "
                          "$XDG_CACHE_HOME/edgeopt or ~/.cache/edgeopt)")
    opt.add_argument("--no-cache", action="store_true", default=None,
                     help="build every step again, read and write no cache")
    bench_flags(opt)


def _quant_flags(opt: argparse.ArgumentParser) -> None:
    opt.add_argument("--calibrator",
                     help="activation ranges: mean-minmax (mean of per-sample min/max, the "
                          "default), minmax (global), kmeans (grid-fit clip), mse")
    opt.add_argument("--max-accuracy-drop", metavar="X",
                     help="accuracy budget on the model's metric: absolute (0.01) or relative "
                          "(1%%); sensitive layers return to FP32 until it holds, else exit 3")
    opt.add_argument("--max-fp32-nodes", type=int, metavar="N",
                     help="with --max-accuracy-drop: return at most N nodes to FP32")
    opt.add_argument("--keep-first-fp32", action="store_true", default=None,
                     help="keep the first convolution FP32 (a little slower; on some models "
                          "more accurate)")
    opt.add_argument("--int8-stem", action="store_true", default=None,
                     help="ONNX Runtime: quantize the stem, unweighed (by default a CNN's first "
                          "convolutions, up to its first narrowing one, stay FP32 when that "
                          "buys accuracy on the evaluation set)")
    opt.add_argument("--no-saturation-guard", action="store_true", default=None,
                     help="never build the AVX2 saturation guard (by default it is built and "
                          "kept where it buys accuracy here, or where a target CPU elsewhere "
                          "lacks int8 dot products); on AVX2 without VNNI int8 kernels then "
                          "saturate")
    opt.add_argument("--qat-epochs", type=int, metavar="N",
                     help="ONNX Runtime INT8: fine-tune the int8 weights for N epochs to match "
                          "the FP32 outputs (quantization-aware, CNN graphs; same speed)")
    opt.add_argument("--no-quantize", action="store_true", default=None,
                     help="FP32 artifacts only")
    from edgeopt.recipe import EFFORTS, OV_INT8

    opt.add_argument("--effort", choices=EFFORTS,
                     help="default: weigh every choice that trades speed for accuracy, take no "
                          "shortcut that costs it; fast: keep those choices unweighed (said in "
                          "the report) and take the quantizers' shortcuts (mobilenet-v2: half "
                          "the CPU time, up to 1.9 pt less agreement; docs/speed.md)")
    opt.add_argument("--ov-int8", choices=OV_INT8,
                     help="how the OpenVINO INT8 is made: qdq converts the ONNX Runtime QDQ "
                          "model (same int8 weights and ranges, seconds), nncf runs NNCF on "
                          "the OpenVINO model; auto (default): NNCF for transformer-style, "
                          "control-flow and recurrent graphs, qdq otherwise "
                          "(docs/quantization.md)")


def _prune(sub, common) -> None:
    prune = sub.add_parser("prune", parents=[common],
                           help="PyTorch model -> pruned (and fine-tuned) FP32 ONNX + weights")
    prune.add_argument("model", nargs="?",
                       help="package.module:factory or ref:NAME (an nn.Module)")
    _recipe_flag(prune)
    prune.add_argument("--out", type=Path, default=None,
                       help="output folder (default edgeopt-out/<model name>-pruned)")
    _overwrite_flag(prune)
    _data_flags(prune)
    prune.add_argument("--json", action="store_true", help="print report.json on stdout")
    prune.add_argument("--quiet", action="store_true", help="no progress output")
    _prune_flags(prune, required=False)


def _bench(sub, common) -> None:
    bench = sub.add_parser("bench", parents=[common], help="benchmark a model on a device")
    bench.add_argument("model", help="model.onnx, model.xml (OpenVINO IR, .bin beside it), or "
                                     "an app bundle .zip (checked first, as verify does)")
    bench.add_argument("--device", action="append", dest="devices", metavar="ID[:UNIT]",
                       help="device profile (repeatable; default host-cpu)")
    bench.add_argument("--runtime", action="append", dest="runtimes", choices=_runtimes(),
                       help="default: every one that loads it")
    bench.add_argument("--input-shape", help="concrete shape for dynamic inputs")
    bench.add_argument("--require-measured", action="store_true",
                       help="a device that cannot be measured here is an error (exit 2), "
                            "not an estimate")
    bench.add_argument("--emulate", action="store_true",
                       help="ARM devices: also run the model under qemu-user in an aarch64 "
                            "sysroot and compare its outputs with this machine's "
                            "(correctness only, never speed)")
    bench.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    bench.add_argument("--quiet", action="store_true", help="no progress output")
    bench_flags(bench)


def _devices(sub, common) -> None:
    devices = sub.add_parser("devices", parents=[common], help="device profiles")
    dsub = devices.add_subparsers(dest="devices_command", required=True, parser_class=_Parser)
    dlist = dsub.add_parser("list", parents=[common], help="every profile and its units")
    dlist.add_argument("--json", action="store_true")
    dshow = dsub.add_parser("show", parents=[common], help="one profile in full")
    dshow.add_argument("id")
    dshow.add_argument("--json", action="store_true")
    dcal = dsub.add_parser("calibrate", parents=[common],
                           help="measure reference models on a device here and store the "
                                "efficiency its estimates are scaled by")
    dcal.add_argument("id", help="a device present here, e.g. host-cpu")
    dcal.add_argument("--runtime", action="append", dest="runtimes", choices=_runtimes(),
                      help="default: all")
    dcal.add_argument("--json", action="store_true")
    dcal.add_argument("--quiet", action="store_true", help="no progress output")


def _package(sub, common) -> None:
    package = sub.add_parser("package", parents=[common],
                             help="an app bundle: model in the target's format, manifest, "
                                  "reference inputs and outputs")
    package.add_argument("source", metavar="RUN_DIR|MODEL",
                         help="an `edgeopt optimize` output folder, or a model file/spec")
    package.add_argument("--target", required=True, choices=_package_targets())
    package.add_argument("--out", type=Path, required=True, help="bundle.zip to write")
    package.add_argument("--precision", choices=["int8", "fp32"], default=None,
                         help="which artifact of RUN_DIR (default: int8 where there is one)")
    package.add_argument("--max-accuracy-drop", metavar="X",
                         help="palettization: layers that break it keep more bits or stay "
                              "unpalettized")
    _output_flags(package, "print the manifest on stdout")
    _palettize_flags(package)


def _verify(sub, common) -> None:
    verify = sub.add_parser("verify", parents=[common],
                            help="check a bundle on this device: checksums, reference outputs, "
                                 "then a benchmark")
    verify.add_argument("bundle", help="bundle.zip")
    verify.add_argument("--device", dest="devices", action="append", metavar="ID[:UNIT]",
                        help="device to run on (default host-cpu)")
    verify.add_argument("--no-bench", action="store_true", help="skip the benchmark")
    _output_flags(verify, "print the result as JSON on stdout")
    bench_flags(verify)


def _run(sub, common) -> None:
    run = sub.add_parser("run", parents=[common],
                         help="run a model once on given inputs and save its outputs "
                              "(what --emulate runs inside the aarch64 sysroot)")
    run.add_argument("model", help="model.onnx or model.xml")
    run.add_argument("--inputs", required=True, help=".npz of input name -> array")
    run.add_argument("--out", required=True, help=".npz to write the outputs to")
    run.add_argument("--adapter", help="runtime adapter (default: the ONNX runner's on this "
                                       "host, e.g. the CPU EP)")


def _search(sub, common) -> None:
    from edgeopt.search._cli import add_search_flags

    search = sub.add_parser("search", parents=[common],
                            help="recipe search: the metric / latency / size Pareto front per "
                                 "device (Optuna; locally or on Ray)")
    search.add_argument("model", nargs="?", help="as for optimize")
    _recipe_flag(search)
    _data_flags(search)
    add_search_flags(search)
    bench_flags(search)
