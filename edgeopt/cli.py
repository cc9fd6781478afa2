"""The `edgeopt` command line: optimize, bench, devices.

A user's mistake prints one line and exits 2 (the traceback only with --debug); an
internal failure exits 1. Human output goes to stderr, so `--json` keeps stdout clean.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 1


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit 2 as before."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def _bench_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("benchmark protocol")
    g.add_argument("--warmup", type=int, default=10, help="warm-up runs (default 10)")
    g.add_argument("--bench-iterations", type=int, default=100,
                   help="minimum timed runs per repeat (default 100)")
    g.add_argument("--bench-seconds", type=float, default=3.0,
                   help="minimum timed seconds per repeat (default 3)")
    g.add_argument("--bench-repeats", type=int, default=3,
                   help="independent repeats, each in a fresh process (default 3)")
    g.add_argument("--threads", type=int, default=None,
                   help="inference threads (default: the runtime's choice for latency)")


def _prune_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    # Modes and importances are checked by PruneConfig, where they are defined: the parser
    # stays importable on a device without torch or nncf (edgeopt bench).
    g = p.add_argument_group("pruning (PyTorch models) and fine-tuning")
    g.add_argument("--prune-mode", required=required, metavar="MODE",
                   help="magnitude-global|magnitude-local (NNCF, unstructured zeros), channels "
                        "(whole channels removed: fewer MACs), regularization (NNCF RB loss "
                        "while fine-tuning)")
    g.add_argument("--prune-ratio", type=float, default=None,
                   help="fraction of weights (unstructured) or channels per layer removed, "
                        "in [0, 1) (default 0.5)")
    g.add_argument("--prune-ignore", action="append", default=[], metavar="LAYER",
                   help="module name to keep whole, e.g. features.0.0 (repeatable or "
                        "comma-separated)")
    g.add_argument("--prune-importance", default="l1", metavar="l1|l2|taylor",
                   help="channels: rank by L1/L2 weight norm, or taylor (data-driven)")
    g.add_argument("--finetune-data", metavar="PATH",
                   help="fine-tune after pruning on: .npz (inputs + optional 'labels'), a folder "
                        "of class folders of images (labels), or images/.npy (distilled from "
                        "the unpruned model); default for ref:NAME: its own set")
    g.add_argument("--epochs", type=int, help="fine-tuning epochs (none without it)")
    g.add_argument("--lr", type=float, default=1e-4,
                   help="fine-tuning learning rate (Adam; 1e-4 suits pretrained models)")
    g.add_argument("--weight-decay", type=float, default=1e-4,
                   help="L2 regularization while fine-tuning (1e-4)")
    g.add_argument("--batch-size", type=int, default=32,
                   help="global batch size (split across torchrun processes; 32)")


PACKAGE_TARGETS = ["android", "ios", "linux-arm", "openvino"]


def _output_flags(p: argparse.ArgumentParser, json_help: str) -> None:
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _palettize_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("palettization (app bundles)")
    g.add_argument("--palettize", type=int, metavar="BITS",
                   help="k-means weight palettization, 2..8 bits per weight (a fp16 lookup "
                        "table per group of output channels)")
    g.add_argument("--group-size", type=int, metavar="N",
                   help="output channels sharing one lookup table (default: one per channel)")


def _prune_options(args: argparse.Namespace):
    from edgeopt.errors import UsageError
    from edgeopt.recipe import PruneOptions

    given = [f for f in ("prune_ratio", "finetune_data", "epochs") if getattr(args, f) is not None]
    if args.prune_mode is None:
        if given or args.prune_ignore:
            flags = ", ".join("--" + f.replace("_", "-") for f in given) or "--prune-ignore"
            msg = f"{flags} needs --prune-mode (magnitude-global, channels, ...)"
            raise UsageError(msg)
        return None
    ignore = tuple(n.strip() for item in args.prune_ignore for n in item.split(",") if n.strip())
    return PruneOptions(mode=args.prune_mode,
                        ratio=0.5 if args.prune_ratio is None else args.prune_ratio,
                        ignore=ignore, importance=args.prune_importance,
                        finetune_data=args.finetune_data, epochs=args.epochs, lr=args.lr,
                        weight_decay=args.weight_decay, batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = _Parser(prog="edgeopt", description=__doc__.splitlines()[0], parents=[common])
    from edgeopt import __version__

    parser.add_argument("--version", action="version", version=f"edgeopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    opt = sub.add_parser("optimize", parents=[common],
                         help="model -> FP32 and INT8 artifacts, checked and benchmarked")
    opt.add_argument("model", help="model.onnx, model.pt (TorchScript), model.pt2 "
                     "(ExportedProgram), package.module:factory, or ref:NAME")
    opt.add_argument("--device", action="append", dest="devices", metavar="ID[:UNIT]",
                     help="device profile to benchmark on (repeatable; default host-cpu)")
    opt.add_argument("--require-measured", action="store_true",
                     help="a device that is not here is an error before any work, not an "
                          "estimate (for CI gates)")
    opt.add_argument("--runtime", action="append", dest="runtimes",
                     choices=["onnxruntime", "openvino"],
                     help="runtime(s) to build for (repeatable; default both)")
    opt.add_argument("--out", type=Path, default=None,
                     help="output folder (default edgeopt-out/<model name>)")
    opt.add_argument("--input-shape", help="e.g. 1,3,224,224 or name=1,3,224,224;mask=1,128")
    opt.add_argument("--calib", help="calibration data: a .npy/.npz file or folder, an image "
                     "or folder of images (see --preprocess), package.module:factory "
                     "(yields {input_name: array} dicts), or 'random'")
    opt.add_argument("--calib-samples", type=int,
                     help="use at most N calibration samples (images and factories: default 300)")
    opt.add_argument("--preprocess", metavar="SPEC",
                     help="how --calib images become inputs: e.g. resize=256,crop=224,"
                          "mean=0.485:0.456:0.406,std=0.229:0.224:0.225,order=rgb,layout=nchw "
                          "(also scale=1/255, interp=bilinear), or a .json/.yaml file of those "
                          "keys; default for ref:NAME: the model's own")
    opt.add_argument("--eval-samples", type=int, help="evaluate on N samples")
    opt.add_argument("--calibrator", default="mean-minmax",
                     choices=("mean-minmax", "minmax", "kmeans", "mse"),
                     help="activation ranges: mean-minmax (mean of per-sample min/max, the "
                          "default), minmax (global), kmeans (grid-fit clip), mse")
    opt.add_argument("--max-accuracy-drop", metavar="X",
                     help="accuracy budget on the model's metric: absolute (0.01) or relative "
                          "(1%%); sensitive layers return to FP32 until it holds, else exit 3")
    opt.add_argument("--max-fp32-nodes", type=int, metavar="N",
                     help="with --max-accuracy-drop: return at most N nodes to FP32")
    opt.add_argument("--keep-first-fp32", action="store_true",
                     help="keep the first convolution FP32 (a little slower; on some models "
                          "more accurate)")
    opt.add_argument("--int8-stem", action="store_true",
                     help="ONNX Runtime: quantize the stem too (by default a CNN's first "
                          "convolutions, up to its first narrowing one, stay FP32)")
    opt.add_argument("--no-saturation-guard", action="store_true",
                     help="let int8 weight pairs use the full 8 bits: only for targets whose "
                          "CPU has VNNI (or ARM); on AVX2 without VNNI the int8 kernels then "
                          "saturate")
    opt.add_argument("--qat-epochs", type=int, default=0, metavar="N",
                     help="ONNX Runtime INT8: fine-tune the int8 weights for N epochs to match "
                          "the FP32 outputs (quantization-aware, CNN graphs; same speed)")
    opt.add_argument("--no-quantize", action="store_true", help="FP32 artifacts only")
    opt.add_argument("--json", action="store_true", help="print report.json on stdout")
    opt.add_argument("--package", action="append", dest="packages", metavar="TARGET",
                     choices=PACKAGE_TARGETS,
                     help="also write OUT/<model>-<TARGET>.zip, an app bundle "
                          f"({'|'.join(PACKAGE_TARGETS)}; repeatable)")
    _palettize_flags(opt)
    opt.add_argument("--quiet", action="store_true", help="no progress output")
    _prune_flags(opt, required=False)
    _bench_flags(opt)

    prune = sub.add_parser("prune", parents=[common],
                           help="PyTorch model -> pruned (and fine-tuned) FP32 ONNX + weights")
    prune.add_argument("model", help="package.module:factory or ref:NAME (an nn.Module)")
    prune.add_argument("--out", type=Path, default=None,
                       help="output folder (default edgeopt-out/<model name>-pruned)")
    prune.add_argument("--input-shape", help="e.g. 1,3,224,224")
    prune.add_argument("--calib", help="inputs to measure the metric on and for "
                       "--prune-importance taylor (as for optimize; default for ref:NAME: its own)")
    prune.add_argument("--calib-samples", type=int, help="use at most N --calib samples")
    prune.add_argument("--preprocess", metavar="SPEC", help="how images become inputs")
    prune.add_argument("--eval-samples", type=int, help="evaluate on N samples")
    prune.add_argument("--json", action="store_true", help="print report.json on stdout")
    prune.add_argument("--quiet", action="store_true", help="no progress output")
    _prune_flags(prune, required=True)

    bench = sub.add_parser("bench", parents=[common], help="benchmark a model on a device")
    bench.add_argument("model", help="model.onnx, model.xml (OpenVINO IR, .bin beside it), or "
                                     "an app bundle .zip (checked first, as verify does)")
    bench.add_argument("--device", action="append", dest="devices", metavar="ID[:UNIT]",
                       help="device profile (repeatable; default host-cpu)")
    bench.add_argument("--runtime", action="append", dest="runtimes",
                       choices=["onnxruntime", "openvino"], help="default: every one that loads it")
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
    _bench_flags(bench)

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
    dcal.add_argument("--runtime", action="append", dest="runtimes",
                      choices=["onnxruntime", "openvino"], help="default: both")
    dcal.add_argument("--json", action="store_true")
    dcal.add_argument("--quiet", action="store_true", help="no progress output")

    package = sub.add_parser("package", parents=[common],
                             help="an app bundle: model in the target's format, manifest, "
                                  "reference inputs and outputs")
    package.add_argument("source", metavar="RUN_DIR|MODEL",
                         help="an `edgeopt optimize` output folder, or a model file/spec")
    package.add_argument("--target", required=True, choices=PACKAGE_TARGETS)
    package.add_argument("--out", type=Path, required=True, help="bundle.zip to write")
    package.add_argument("--precision", choices=["int8", "fp32"], default=None,
                         help="which artifact of RUN_DIR (default: int8 where there is one)")
    package.add_argument("--max-accuracy-drop", metavar="X",
                         help="palettization: layers that break it keep more bits or stay "
                              "unpalettized")
    _output_flags(package, "print the manifest on stdout")
    _palettize_flags(package)

    verify = sub.add_parser("verify", parents=[common],
                            help="check a bundle on this device: checksums, reference outputs, "
                                 "then a benchmark")
    verify.add_argument("bundle", help="bundle.zip")
    verify.add_argument("--device", dest="devices", action="append", metavar="ID[:UNIT]",
                        help="device to run on (default host-cpu)")
    verify.add_argument("--no-bench", action="store_true", help="skip the benchmark")
    _output_flags(verify, "print the result as JSON on stdout")
    _bench_flags(verify)

    run = sub.add_parser("run", parents=[common],
                         help="run a model once on given inputs and save its outputs "
                              "(what --emulate runs inside the aarch64 sysroot)")
    run.add_argument("model", help="model.onnx or model.xml")
    run.add_argument("--inputs", required=True, help=".npz of input name -> array")
    run.add_argument("--out", required=True, help=".npz to write the outputs to")
    run.add_argument("--adapter", default="ort-cpu", help="runtime adapter (default ort-cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from edgeopt.errors import user_errors

    try:
        if args.command == "optimize":
            return _optimize(args)
        if args.command == "prune":
            return _prune(args)
        if args.command == "bench":
            from edgeopt._bench_cli import run_bench

            return run_bench(args)
        if args.command == "run":
            from edgeopt._run_cli import run_model

            return run_model(args)
        if args.command == "package":
            from edgeopt._package_cli import run_package

            return run_package(args)
        if args.command == "verify":
            from edgeopt._verify_cli import run_verify

            return run_verify(args)
        if args.command == "devices" and args.devices_command == "calibrate":
            from edgeopt._calibrate_cli import run_calibrate

            return run_calibrate(args)
        from edgeopt._devices_cli import run_devices

        return run_devices(args)
    except user_errors() as e:
        if args.debug:
            raise
        sys.stderr.write(f"edgeopt: error: {e}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("edgeopt: interrupted; nothing was left under a final name\n")
        return 130
    except Exception as e:
        if args.debug:
            raise
        sys.stderr.write(f"edgeopt: internal error: {type(e).__name__}: {e} "
                         "(rerun with --debug for the traceback)\n")
        return EXIT_INTERNAL


@contextlib.contextmanager
def _stdout_to_stderr(quiet: bool = False):
    """Library output (NNCF's progress bars, ONNX Runtime's quantizer) goes to stderr, so
    stdout stays the report's; with --quiet it goes nowhere."""
    sys.stdout.flush()
    saved = os.dup(1)
    sink = open(os.devnull, "w") if quiet else sys.stderr  # noqa: SIM115
    try:
        os.dup2(sink.fileno(), 1)
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if quiet:
            sink.close()


BUDGET_EXIT = 3                 # the run finished, but the accuracy budget was not met


def _optimize(args: argparse.Namespace) -> int:
    from edgeopt._progress import Steps
    from edgeopt._source import artifact_stem
    from edgeopt.pipeline import optimize
    from edgeopt.recipe import OptimizeConfig
    from edgeopt.runtimes import BenchProtocol

    config = OptimizeConfig(
        model=args.model,
        out=args.out or Path("edgeopt-out") / artifact_stem(args.model),
        devices=tuple(args.devices or ("host-cpu",)),
        runtimes=tuple(dict.fromkeys(args.runtimes or ("onnxruntime", "openvino"))),
        require_measured=args.require_measured,
        input_shape=args.input_shape,
        calib=args.calib,
        calib_samples=args.calib_samples,
        preprocess=args.preprocess,
        eval_samples=args.eval_samples,
        quantize=not args.no_quantize,
        calibrator=args.calibrator,
        max_accuracy_drop=args.max_accuracy_drop,
        max_fp32_nodes=args.max_fp32_nodes,
        keep_first_fp32=args.keep_first_fp32,
        fp32_stem=not args.int8_stem,
        saturation_guard=not args.no_saturation_guard,
        qat_epochs=args.qat_epochs,
        prune=_prune_options(args),
        bench=BenchProtocol(warmup=args.warmup, min_iterations=args.bench_iterations,
                            min_seconds=args.bench_seconds, repeats=args.bench_repeats,
                            threads=args.threads),
    )
    steps = Steps(quiet=args.quiet)
    # Libraries (NNCF, ONNX Runtime's quantizer) print to stdout; with --json, stdout is
    # the report's alone, so everything else goes to stderr while the pipeline runs.
    with _stdout_to_stderr(args.quiet):
        report = optimize(config, steps=steps)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        from rich.console import Console

        from edgeopt._tables import artifacts_table, console_width

        Console(width=console_width()).print(artifacts_table(report))
        steps.console.print(f"wrote {config.out}/report.json and report.md")
    for target in dict.fromkeys(args.packages or ()):
        from edgeopt.package import package_run

        bundle = config.out / f"{artifact_stem(args.model)}-{target}.zip"
        with steps.step(f"package {bundle.name}"), _stdout_to_stderr(args.quiet):
            package_run(config.out, target, bundle, palettize=args.palettize,
                        group_size=args.group_size, max_accuracy_drop=args.max_accuracy_drop)
    budget = report.get("accuracy_budget")
    if budget and not budget["met"]:
        over = ", ".join(f"{rt} drop {b['drop']:.4f}" for rt, b in budget["runtimes"].items()
                         if not b["met"])
        sys.stderr.write(f"edgeopt: error: accuracy budget --max-accuracy-drop "
                         f"{config.max_accuracy_drop} not met ({over} > allowed "
                         f"{budget['allowed_drop']:.4f} with {budget['stopped']})\n")
        return BUDGET_EXIT
    return 0


def _prune(args: argparse.Namespace) -> int:
    from edgeopt._progress import Steps
    from edgeopt.pruning import default_out, prune
    from edgeopt.recipe import OptimizeConfig

    config = OptimizeConfig(
        model=args.model, out=args.out or default_out(args.model), runtimes=("onnxruntime",),
        input_shape=args.input_shape, calib=args.calib, calib_samples=args.calib_samples,
        preprocess=args.preprocess, eval_samples=args.eval_samples, quantize=False,
        prune=_prune_options(args))
    steps = Steps(quiet=args.quiet or _rank() != 0)
    with _stdout_to_stderr(args.quiet):
        report = prune(config, steps=steps)
    if not report:                      # a DDP rank other than 0: rank 0 reports
        return 0
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        p = report["pruning"]
        onnx_art = report["artifacts"][0]
        steps.console.print(
            f"{onnx_art['path']}: MACs {p['macs_ratio']:.3f}x, params {p['params_ratio']:.3f}x, "
            f"zeros {p['artifact']['sparsity']:.1%}, {onnx_art['size_bytes'] / 1024:.0f} KB "
            f"({onnx_art['size_zipped_bytes'] / 1024:.0f} KB zipped), {p['metric']} "
            f"{onnx_art['accuracy']['value']:.4f}")
        steps.console.print(f"wrote {config.out}/report.json and report.md")
    return 0


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)
