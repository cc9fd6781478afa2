"""`edgeopt search`'s Pareto front next to the runtimes' own quantization defaults.

For mobilenet-v2 on the labelled photos (shared/data/imagenet-500 beside the repository:
calibration on every 4th photo, evaluation on the other 375, top-1 against the labels):
  (1) a search on host-cpu (measured) and rpi5 (estimated from its profile), with a latency
      limit on rpi5, through the same `edgeopt.search` API the CLI calls;
  (2) ONNX Runtime's quantize_static (QDQ, per-channel, U8S8, MinMax) and NNCF's defaults
      (OpenVINO), from the same FP32 model and the same calibration photos.
The peers start from the FP32 ONNX the first trial exported (the plots are drawn again with
their points). Then the front's artifacts and the peers are timed again, interleaved (every
round a burst of each in turn), so their host-cpu p50s compare as ratios within one run, and
the recipes that dominate a peer (metric, p50 on every device the peer has, size) are named.

    python benchmarks/search.py [--model mobilenet-v2] [--trials 6] [--executor ray] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from _timing import interleave, outputs, runner
from rich.console import Console
from rich.table import Table

SPACE = """params:
  calibrator: {choices: [mean-minmax, minmax, kmeans, mse]}
  fp32_stem: {choices: [true, false]}
  keep_first_fp32: {choices: [false, true]}
"""
DEVICES = ("host-cpu:cpu", "rpi5:cpu")


def _size(path: Path) -> int:
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return sum(f.stat().st_size for f in files)


def build_peers(ref, fp32_onnx: Path, work: Path, console: Console, calib_samples: int | None,
                eval_samples: int | None) -> list[dict]:
    """quantize_static and NNCF defaults from the FP32 ONNX a trial exported, calibrated on
    the reference model's calibration photos, scored on its evaluation photos."""
    import logging

    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeopt.calibrate.quantize import CalibrationReader

    logging.getLogger("nncf").setLevel(logging.ERROR)
    calib = ref.calibration_set(calib_samples)          # the trials' photos
    console.log("peer: ONNX Runtime quantize_static")
    prep, ort_peer = work / "prep.onnx", work / "quantize_static.onnx"
    quant_pre_process(str(fp32_onnx), str(prep), skip_symbolic_shape=True)
    quantize_static(str(prep), str(ort_peer), CalibrationReader(calib, None),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    console.log("peer: NNCF defaults")
    fp32_xml, nncf_peer = work / "fp32.xml", work / "nncf-default.xml"
    ov.save_model(ov.convert_model(str(fp32_onnx)), str(fp32_xml), compress_to_fp16=False)
    quantized = nncf.quantize(ov.Core().read_model(str(fp32_xml)), nncf.Dataset(calib),
                              subset_size=len(calib))
    ov.save_model(quantized, str(nncf_peer), compress_to_fp16=False)
    peers = [{"name": "quantize_static", "runtime": "onnxruntime", "path": ort_peer},
             {"name": "NNCF defaults", "runtime": "openvino", "path": nncf_peer}]
    eval_set = ref.evaluation_set(eval_samples)
    fp32 = {"onnxruntime": fp32_onnx, "openvino": fp32_xml}
    threads = min(2, os.cpu_count() or 1)
    for peer in peers:
        ref_outs = outputs(runner(fp32[peer["runtime"]], peer["runtime"], threads),
                           eval_set.inputs)
        outs = outputs(runner(peer["path"], peer["runtime"], threads), eval_set.inputs)
        peer["metric"] = round(float(ref.score(outs, eval_set, ref_outs)), 6)
        peer["size_bytes"] = _size(peer["path"])
    return peers


def peer_latency(peers: list[dict]) -> None:
    """Each peer's p50 where edgeopt can get one: measured on host-cpu (the trials'
    protocol), estimated on rpi5 for ONNX artifacts (rpi5's basis is its profile's)."""
    from edgeopt.runtimes import BenchProtocol
    from edgeopt.search.executors import estimate_latency, measure_latency

    for peer in peers:
        peer["latency"] = {"host-cpu:cpu": measure_latency({
            "artifact": str(peer["path"]), "device": "host-cpu:cpu", "runtime": peer["runtime"],
            "protocol": vars(BenchProtocol())})}
        if peer["path"].suffix == ".onnx":
            peer["latency"]["rpi5:cpu"] = estimate_latency(str(peer["path"]), "rpi5:cpu",
                                                           peer["runtime"], None)


def retime(ref, front: list[dict], peers: list[dict], rounds: int, burst: int) -> None:
    """Interleaved host-cpu p50 of every front artifact and peer (the same feeds)."""
    items = [(p["name"], Path(p["path"]), p["runtime"], p) for p in peers]
    items += [(f"trial {f['trial']}", Path(f["artifact"]), f["runtime"], f) for f in front]
    threads = min(2, os.cpu_count() or 1)
    runs = [runner(path, runtime, threads) for _, path, runtime, _ in items]
    times, _ = interleave(runs, ref.evaluation_set().inputs[0], rounds, burst)
    for (_, _, _, item), t in zip(items, times, strict=True):
        item["p50_interleaved"] = float(np.median(t))


def dominators(peer: dict, front: list[dict]) -> list[dict]:
    """Front points at least as good as ``peer`` in metric, size and p50 on every device
    the peer has a figure for (host-cpu: interleaved), better in one."""
    def vector(p: dict) -> list[float]:
        lat = [p["p50_interleaved"]] + [p["latency"][d]["p50_ms"] for d in DEVICES[1:]
                                        if d in peer["latency"]]
        return [-p["metric"], *lat, p["size_bytes"]]

    mine = vector(peer)
    return [f for f in front if all(a <= b for a, b in zip(vector(f), mine, strict=True))
            and any(a < b for a, b in zip(vector(f), mine, strict=True))]


def report(console: Console, front: list[dict], peers: list[dict], metric: str) -> None:
    table = Table(title=f"Pareto front vs the peers ({metric}; host-cpu p50 interleaved)")
    for col in ("point", "runtime", metric, "host-cpu p50 ms", "vs quantize_static",
                "rpi5 p50 ms", "size MB", "recipe"):
        table.add_column(col)
    base = peers[0]["p50_interleaved"]
    for p in [*peers, *front]:
        rpi5 = p["latency"].get("rpi5:cpu")
        table.add_row(p.get("name") or f"trial {p['trial']}", p["runtime"], f"{p['metric']:.4f}",
                      f"{p['p50_interleaved']:.3f}", f"{base / p['p50_interleaved']:.2f}x",
                      f"{rpi5['p50_ms']:.3g} ({rpi5['label']})" if rpi5 else "—",
                      f"{p['size_bytes'] / 1e6:.2f}", p.get("options", "peer"))
    console.print(table)
    for peer in peers:
        better = dominators(peer, front)
        console.print(f"{peer['name']}: " + (
            "dominated by " + "; ".join(f"trial {f['trial']} ({f['options']})" for f in better)
            if better else "no recipe of the front dominates it"))


def _front(summary: dict, metric: str) -> list[dict]:
    rows = {r["number"]: r for r in summary["rows"]}
    front = []
    for point in summary["front"]:
        out, recipe = rows[point["trial"]]["outcome"], point["recipe"]
        options = ", ".join(f"{k}={v}" for k, v in rows[point["trial"]]["params"].items())
        front.append({"trial": point["trial"], "runtime": out["runtime"],
                      "artifact": out["artifact"], "metric": out["metric"],
                      "size_bytes": out["size_bytes"], "latency": out["latency"],
                      "options": options or recipe["quant"]["calibrator"]})
    return front


def main() -> None:
    from edgeopt.recipe import Recipe
    from edgeopt.reference_models import get_reference
    from edgeopt.runtimes.devices import detect_host
    from edgeopt.search import SearchSettings, search

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet-v2")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--executor", default="local", choices=("local", "ray"))
    parser.add_argument("--max-latency-ms", default="rpi5=40", metavar="DEVICE=MS")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--device", action="append", dest="devices",
                        help="searched devices (default host-cpu and rpi5)")
    parser.add_argument("--calib-samples", type=int, help="default: the model's own")
    parser.add_argument("--eval-samples", type=int, help="default: the model's own")
    parser.add_argument("--out", type=Path, help="keep the search folder here")
    args = parser.parse_args()
    console = Console(width=200)
    ref = get_reference(args.model)
    with tempfile.TemporaryDirectory(prefix="edgeopt-search-bench-") as tmp:
        work = Path(tmp)
        space = work / "space.yaml"
        space.write_text(SPACE)
        out = args.out or work / "search"
        recipe = Recipe(model=f"ref:{args.model}",
                        devices=tuple(args.devices or ("host-cpu", "rpi5"))).override(
            calib_samples=args.calib_samples, eval_samples=args.eval_samples)
        summary = search(SearchSettings(
            recipe=recipe, out=out, trials=args.trials, space=str(space), seed=0,
            executor=args.executor, max_latency_ms=(args.max_latency_ms,)))
        first = next(r for r in summary["rows"] if r["state"] == "COMPLETE")
        fp32_onnx = Path(first["outcome"]["artifact"]).parent / f"{args.model}.fp32.onnx"
        peers = build_peers(ref, fp32_onnx, work, console, args.calib_samples,
                            args.eval_samples)
        peer_latency(peers)
        _replot(out, summary, ref.metric, peers)
        front = _front(summary, ref.metric)
        retime(ref, front, peers, args.rounds, args.burst)
        host = detect_host()
        photos = (f"{len(ref.calibration_set(args.calib_samples))} calibration / "
                  f"{len(ref.evaluation_set(args.eval_samples).inputs)} evaluation samples used")
        console.print(f"{args.model}: {ref.description} ({photos}); CPU {host['name']} "
                      f"({host['cores']} cores); {args.trials} trials on {args.executor}, best trial "
                      f"{summary['best_trial']} "
                      f"(under --max-latency-ms {args.max_latency_ms}); plots in {out}")
        report(console, front, peers, ref.metric)


def _replot(out: Path, summary: dict, metric: str, peers: list[dict]) -> None:
    """The search's plots again, with the peers' points."""
    from edgeopt.search._finish import plot_name
    from edgeopt.search.objectives import Objectives
    from edgeopt.search.outputs import plot_device

    devices = tuple(sorted({d for p in summary["front"] for d in p["labels"]}))
    pareto = set(summary["pareto"])
    rows = [{**r, "pareto": r["number"] in pareto} for r in summary["rows"]]
    for device in devices:
        plot_device(out / plot_name(device), device, rows, Objectives(metric, True, devices),
                    summary["best_trial"], peers)


if __name__ == "__main__":
    main()
