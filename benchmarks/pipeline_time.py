"""Wall time and peak RSS of a whole INT8 build: edgeopt against the runtimes' own scripts.

In one process tree, on the same FP32 model and the same calibration samples (100 by
default), each in a child process of its own:
  (1) ONNX Runtime: quant_pre_process, then quantize_static (QDQ, per-channel, U8S8, MinMax)
  (2) NNCF: nncf.quantize on the OpenVINO model (its defaults), saved
  (3) edgeopt optimize --no-bench, both runtimes, cold cache
  (4) the same, warm cache (a new --out; every step comes from the cache)
  (5) edgeopt optimize with benchmarks (warm cache: what it adds is the benchmark)
  (6) the peers' workflow with (3)'s deliverables: torch.onnx.export, ov.convert_model,
      (1), (2), and the 4 artifacts (FP32 ONNX and IR, both INT8) run on the same
      evaluation samples and scored, as a user of the runtimes' own scripts would do it
Each child's wall time is from its start to its exit (imports, data, work, saving). Its
peak RSS is the larger of the kernel's (``os.wait4`` rusage: the largest single process of
its tree) and the tree's summed RSS sampled every 50 ms (edgeopt runs PyTorch in a child
process of its own: its memory counts with the parent's while both live).
The per-step seconds of (3) and (4) come from their report.json. The FP32 models are built
once beforehand by ``edgeopt optimize --no-quantize``, untimed.

Models: mobilenet-v2 (ref; on the labelled ImageNet photos when shared/data/imagenet-500 is
there), minilm (ref), and resnet50-random, a ResNet-50-sized CNN with random weights built
here (random calibration and evaluation data, so its accuracy figure is cosine to FP32).

    python benchmarks/pipeline_time.py [--models mobilenet-v2 minilm resnet50-random]
                                       [--samples 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _timing import cpu_name
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
RESNET = "resnet50-random"
RESNET_SPEC = "_timing:resnet50"
RESNET_SHAPE = "1,3,224,224"


# -------------------------------------------------------------------------- children

def _calibration(model: str, n: int, inputs: list) -> list[dict]:
    if model == RESNET:
        from edgeopt.calibrate.data import random_samples

        return random_samples(inputs, n, seed=0)
    from edgeopt.reference_models import get_reference

    return get_reference(model).calibration_set(n)


def child_ort(model: str, fp32_onnx: str, n: int, work: str, calib=None) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeopt.calibrate.quantize import CalibrationReader
    from edgeopt.runtimes import onnx_input_specs

    specs = [(s.name, s.dtype, s.shape) for s in onnx_input_specs(Path(fp32_onnx))]
    calib = calib or _calibration(model, n, specs)
    prep = Path(work) / "prep.onnx"
    quant_pre_process(fp32_onnx, str(prep), skip_symbolic_shape=True)
    quantize_static(str(prep), str(Path(work) / "ort-quantize_static.onnx"),
                    CalibrationReader(calib, None), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)


def child_nncf(model: str, fp32_xml: str, n: int, work: str, calib=None) -> None:
    import logging

    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)
    ov_model = ov.Core().read_model(fp32_xml)
    specs = [(p.get_any_name(), p.get_element_type().to_dtype().name, tuple(p.get_shape()))
             for p in ov_model.inputs]
    calib = calib or _calibration(model, n, specs)
    quantized = nncf.quantize(ov_model, nncf.Dataset(calib), subset_size=len(calib))
    ov.save_model(quantized, str(Path(work) / "nncf.xml"), compress_to_fp16=False)


def child_peers(model: str, n: int, work: str) -> None:
    """(6): what (3) delivers, with the runtimes' own tools, one after the other."""
    import openvino as ov
    import torch
    from _timing import ort_runner, ov_runner, resnet50

    out = Path(work) / "peers"
    out.mkdir(exist_ok=True)
    if model == RESNET:
        from edgeopt.calibrate.data import random_samples

        module, specs = resnet50(), [("input", "float32", (1, 3, 224, 224))]
        evaluation, score = random_samples(specs, n, seed=1), None
    else:
        from edgeopt.reference_models import get_reference

        ref = get_reference(model)
        module, specs, eval_set = ref.build(), ref.input_specs, ref.evaluation_set()
        evaluation = eval_set.inputs
        score = lambda outputs, fp32: ref.score(outputs, eval_set, fp32)  # noqa: E731
    calib = _calibration(model, n, specs)
    names = [name for name, _, _ in specs]
    fp32 = out / "fp32.onnx"
    example = tuple(torch.from_numpy(calib[0][name]) for name in names)
    torch.onnx.export(module, example, str(fp32), input_names=names, external_data=False)
    ov.save_model(ov.convert_model(str(fp32)), str(out / "fp32.xml"), compress_to_fp16=False)
    child_ort(model, str(fp32), n, str(out), calib)
    child_nncf(model, str(out / "fp32.xml"), n, str(out), calib)
    threads = os.cpu_count() or 1
    reference = None
    for path, run in ((fp32, ort_runner), (out / "fp32.xml", ov_runner),
                      (out / "ort-quantize_static.onnx", ort_runner), (out / "nncf.xml", ov_runner)):
        predict = run(path, threads)
        outputs = np.stack([np.asarray(predict(x)).reshape(-1) for x in evaluation])
        reference = outputs if reference is None else reference
        value = score(outputs, reference) if score is not None else float("nan")
        print(json.dumps({"artifact": path.name, "value": value}), flush=True)


def _edgeopt_args(model: str, n: int) -> list[str]:
    if model == RESNET:
        return [RESNET_SPEC, "--name", "resnet50", "--input-shape", RESNET_SHAPE,
                "--calib", "random",
                "--calib-samples", str(n), "--eval-samples", str(n)]
    return [f"ref:{model}", "--calib-samples", str(n)]


def _memory_kb(pid: int, parent_cmd: bytes | None) -> tuple[int, bytes | None]:
    """A process's resident memory (kB) and command line. A forked copy not yet (or never)
    exec'd (the same command line as its parent; a vfork child even shows its parent's
    RSS) shares its parent's pages: its private pages only. The command line is read
    before and after the memory, so an exec in between is not mistaken for either."""
    proc = Path(f"/proc/{pid}")
    try:
        before = (proc / "cmdline").read_bytes()
        lines = (proc / "smaps_rollup").read_text().splitlines()
        after = (proc / "cmdline").read_bytes()
    except OSError:
        return 0, None
    fields = {line.split(":")[0]: int(line.split()[1]) for line in lines[1:]
              if line.split()[1].isdigit()}
    if before != after:                       # exec'd just now: neither image is whole
        return 0, after
    if before == parent_cmd:
        return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), before
    return fields.get("Rss", 0), before


def _tree_rss_mb(root: int) -> float:
    """The memory of ``root`` and its descendants now (MB): each process's RSS, except a
    forked copy of its parent (:func:`_memory_kb`)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0, [(root, None)]
    while todo:
        pid, parent_cmd = todo.pop()
        kb, cmd = _memory_kb(pid, parent_cmd)
        total += kb
        todo += [(child, cmd) for child in children.get(pid, [])]
    return total / 1024


def _sample_tree(pid: int, peak: list[float], done: threading.Event) -> None:
    while not done.wait(0.05):
        peak[0] = max(peak[0], _tree_rss_mb(pid))


def _run(cmd: list[str], log: Path, env: dict) -> tuple[float, dict, int]:
    """Run ``cmd`` as a child; its wall seconds, peak RSS (MB) and CPU seconds, and exit
    code. The CPU seconds (user + system) are the child's and those of every process of its
    tree that was waited for (``os.wait4``'s rusage), so edgeopt's PyTorch child counts.

    Two peaks: the largest single process of the tree (the kernel's ``ru_maxrss`` from
    ``os.wait4``: the child and the processes it waited for, each alone) and the tree's
    summed memory, sampled every 50 ms (:func:`_tree_rss_mb`: a child's memory counts
    with its parent's while both live; shared library pages count in each). The run's
    peak is the larger of the two.
    """
    start = time.perf_counter()
    peak, done = [0.0], threading.Event()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=HERE)
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, peak, done))
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    largest = usage.ru_maxrss / 1024
    return (time.perf_counter() - start,
            {"largest": largest, "tree": peak[0], "peak": max(largest, peak[0]),
             "cpu": usage.ru_utime + usage.ru_stime},
            proc.returncode)




# ---------------------------------------------------------------------------- driver

def measure(model: str, n: int, work: Path, console: Console) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    edgeopt = [sys.executable, "-m", "edgeopt", "optimize", *_edgeopt_args(model, n)]
    fp32 = work / "fp32"
    console.log(f"{model}: FP32 ONNX and IR (untimed)")
    _, _, code = _run([*edgeopt, "--no-quantize", "--no-bench", "--no-cache", "--out",
                       str(fp32), "--quiet"], work / "fp32.log", env)
    if code:
        msg = f"{model}: the FP32 build failed; see {work / 'fp32.log'}"
        raise SystemExit(msg)
    stem = model if model != RESNET else "resnet50"
    me = [sys.executable, __file__, "--child"]
    cache = work / "cache"
    runs = {
        "1 quantize_static": [*me, "ort", model, str(fp32 / f"{stem}.fp32.onnx"), str(n),
                              str(work)],
        "2 nncf.quantize": [*me, "nncf", model, str(fp32 / f"{stem}.fp32.xml"), str(n),
                            str(work)],
        "3 edgeopt --no-bench, cold": [*edgeopt, "--no-bench", "--cache-dir", str(cache),
                                       "--out", str(work / "cold")],
        "4 edgeopt --no-bench, warm": [*edgeopt, "--no-bench", "--cache-dir", str(cache),
                                       "--out", str(work / "warm")],
        "5 edgeopt with benchmarks": [*edgeopt, "--cache-dir", str(cache),
                                      "--out", str(work / "bench")],
        "6 peers, (3)'s deliverables": [*me, "peers", model, "-", str(n), str(work)],
    }
    results = {}
    for label, cmd in runs.items():
        console.log(f"{model}: {label}")
        seconds, rss, code = _run(cmd, work / f"{label.split()[0]}.log", env)
        if code:
            msg = f"{model}: {label} failed; see {work / label.split()[0]}.log"
            raise SystemExit(msg)
        results[label] = {"seconds": seconds, "rss_mb": rss["peak"],
                          "largest_mb": rss["largest"], "tree_mb": rss["tree"],
                          "cpu_s": rss["cpu"]}
    reports = {k: json.loads((work / d / "report.json").read_text())
               for k, d in (("cold", "cold"), ("warm", "warm"), ("bench", "bench"))}
    peers = [json.loads(line) for line in (work / "6.log").read_text().splitlines()
             if line.startswith('{"artifact"')]
    return {"model": model, "runs": results, "reports": reports, "peers": peers}


def _tables(m: dict, console: Console) -> None:
    runs, reports = m["runs"], m["reports"]
    t = Table(title=f"{m['model']}: whole build, one child process each")
    for col in ("run", "wall s", "CPU s", "cores busy", "peak RSS MB", "largest process MB",
                "tree sum MB (50 ms)"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for label, r in runs.items():
        t.add_row(label, f"{r['seconds']:.1f}", f"{r['cpu_s']:.1f}",
                  f"{r['cpu_s'] / r['seconds']:.2f}", f"{r['rss_mb']:.0f}",
                  f"{r['largest_mb']:.0f}", f"{r['tree_mb']:.0f}")
    console.print(t)
    peers = runs["1 quantize_static"]["seconds"] + runs["2 nncf.quantize"]["seconds"]
    cold = runs["3 edgeopt --no-bench, cold"]
    bench_s = sum(s["seconds"] for s in reports["bench"]["steps"]
                  if s["name"].startswith("benchmark"))
    same = runs["6 peers, (3)'s deliverables"]["seconds"]
    peers_cpu = runs["1 quantize_static"]["cpu_s"] + runs["2 nncf.quantize"]["cpu_s"]
    same_cpu = runs["6 peers, (3)'s deliverables"]["cpu_s"]
    console.print(
        f"CPU seconds: (3)/((1)+(2)) = {cold['cpu_s']:.1f} / {peers_cpu:.1f} = "
        f"{cold['cpu_s'] / peers_cpu:.2f}x; (3)/(6) = {cold['cpu_s']:.1f} / {same_cpu:.1f} = "
        f"{cold['cpu_s'] / same_cpu:.2f}x ({os.cpu_count()} cores: no wall time below "
        "CPU seconds / cores)")
    console.print(
        f"(3)/(6), the same deliverables = {cold['seconds']:.1f} / {same:.1f} = "
        f"{cold['seconds'] / same:.2f}x; (6)'s scores: " + ", ".join(
            f"{r['artifact']} {r['value']:.4f}" for r in m["peers"]))
    console.print(
        f"(3)/((1)+(2)) = {cold['seconds']:.1f} / {peers:.1f} = {cold['seconds'] / peers:.2f}x "
        f"(target <= 2.0) | (4) = {runs['4 edgeopt --no-bench, warm']['seconds']:.1f} s "
        f"(target <= 10) | benchmark part of (5) = {bench_s:.1f} s for "
        f"{sum(1 for a in reports['bench']['artifacts'] if a['bench'].get('label') == 'measured')}"
        f" artifacts (target <= 20) | peak RSS of (3) = {cold['rss_mb']:.0f} MB (target <= 800)")
    s = Table(title=f"{m['model']}: edgeopt's steps (report.json), seconds")
    for col in ("step", "(3) cold", "(4) warm", "(5) with benchmarks"):
        s.add_column(col, justify="left" if col == "step" else "right")
    by = {k: {st["name"]: st for st in r["steps"]} for k, r in reports.items()}
    for name in dict.fromkeys([*by["cold"], *by["bench"]]):
        cells = []
        for k in ("cold", "warm", "bench"):
            st = by[k].get(name)
            cells.append("" if st is None else
                         f"{st['seconds']:.1f}{' (cached)' if st.get('cached') else ''}")
        s.add_row(name, *cells)
    console.print(s)
    a = Table(title=f"{m['model']}: accuracy of (3) on {reports['cold']['data']['evaluation']}")
    for col in ("artifact", "metric", "value", "status"):
        a.add_column(col)
    for art in reports["cold"]["artifacts"]:
        acc = art["accuracy"]
        a.add_row(art["path"], acc["metric"], f"{acc['value']:.4f}", art["status"])
    console.print(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet-v2", "minilm", RESNET])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--child", nargs=5, metavar=("WAY", "MODEL", "FILE", "N", "WORK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, model, file, n, work = args.child
        if way == "peers":
            child_peers(model, int(n), work)
        else:
            (child_ort if way == "ort" else child_nncf)(model, file, int(n), work)
        return
    console = Console(width=160)
    console.print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {args.samples} calibration samples")
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix=f"edgeopt-time-{model}-") as tmp:
            _tables(measure(model, args.samples, Path(tmp), console), console)


if __name__ == "__main__":
    main()
