"""How good are edgeopt's latency estimates? Leave-one-out on the host CPU.

Each model (reference models and models built in code, FP32 and ONNX Runtime INT8 QDQ
variants counted separately) is measured with the benchmark protocol (short: a fresh
process, >= 1 s, in 3 passes over all models; the lowest p50 counts), then for each one the efficiency factors are fitted on all the others
and its latency predicted from its graph alone. The band shown for a model is the p90 of
the other models' leave-one-out errors, as a factor either way.

    python benchmarks/estimates.py [--runtime onnxruntime --runtime openvino]

Uses the models and the measuring code of `edgeopt devices calibrate` (exported once into
the cache dir).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeopt._calibrate_cli import DEFAULT_MODELS, measure, prepare_models
from edgeopt.runtimes import load_devices
from edgeopt.runtimes.estimate import Measurement, loo_predictions, model_costs, unit_basis

TARGET_MEDIAN_PCT = 25.0


def run(runtime: str, console: Console, reuse: Path | None = None) -> dict:
    profile = load_devices().get("host-cpu")
    unit = profile.units[0]
    start = time.perf_counter()
    with console.status("exporting (cached after the first run)"):
        models = prepare_models(DEFAULT_MODELS, progress=console.log)
    saved = reuse.with_name(f"{reuse.stem}.{runtime}.json") if reuse else None
    if saved and saved.is_file():
        measured = [Measurement(r["model"], Path(r["path"]), r["p50_ms"])
                    for r in json.loads(saved.read_text())]
        console.print(f"reusing the measurements in {saved}")
    else:
        with console.status(f"measuring {len(models)} models with {runtime}") as status:
            measured = measure(models, runtime, unit=unit, progress=lambda i, n: status.update(
                f"measuring {len(models)} models with {runtime}: {i}/{n}"))
        if saved:
            saved.write_text(json.dumps([{"model": m.model, "path": str(m.path),
                                          "p50_ms": m.p50_ms} for m in measured], indent=1))
    measure_s = time.perf_counter() - start
    basis = unit_basis(profile, unit)
    costs = [model_costs(m.path) for m in measured]
    rows = loo_predictions(costs, [m.p50_ms for m in measured], basis,
                           [m.model for m in measured])
    fit_s = time.perf_counter() - start - measure_s
    logs = np.abs(np.log([r["predicted_ms"] / r["p50_ms"] for r in rows]))

    table = Table(title=f"leave-one-out estimates, host CPU, {runtime}")
    for col in ("model", "measured p50 ms", "estimated p50 ms", "band (others' LOO p90)",
                "in band", "abs error %"):
        table.add_column(col, justify="left" if col == "model" else "right")
    inside = 0
    for i, r in enumerate(rows):
        factor = float(np.exp(np.percentile(np.delete(logs, i), 90)))
        low, high = r["predicted_ms"] / factor, r["predicted_ms"] * factor
        ok = low <= r["p50_ms"] <= high
        inside += ok
        table.add_row(r["model"], f"{r['p50_ms']:.3f}", f"{r['predicted_ms']:.3f}",
                      f"{low:.3f}-{high:.3f} (x{factor:.2f})", "yes" if ok else "[red]no[/red]",
                      f"{r['abs_pct']:.1f}")
    console.print(table)
    errors = np.array([r["abs_pct"] for r in rows])
    verdict = "[green]met[/green]" if np.median(errors) <= TARGET_MEDIAN_PCT else "[red]missed[/red]"
    console.print(f"{runtime}: median abs error {np.median(errors):.1f}% (target <= "
                  f"{TARGET_MEDIAN_PCT:.0f}%: {verdict}), worst {errors.max():.1f}% "
                  f"({rows[int(errors.argmax())]['model']}); {inside}/{len(rows)} inside their "
                  f"band; measuring {measure_s:.0f} s, {len(rows)} leave-one-out fits "
                  f"{fit_s:.0f} s")
    console.print(f"peaks: {basis['sources']['fp32']}; {basis['sources']['int8']}; "
                  f"bandwidth: {basis['sources']['bandwidth_gbs']}")
    return {"runtime": runtime, "rows": rows, "median_pct": float(np.median(errors)),
            "worst_pct": float(errors.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", action="append", dest="runtimes",
                        choices=["onnxruntime", "openvino"], help="default: onnxruntime")
    parser.add_argument("--measurements", type=Path,
                        help="save the measured p50s to FILE.<runtime>.json, or reuse them if "
                             "that file exists (to study the cost model without re-measuring)")
    args = parser.parse_args()
    console = Console(highlight=False, width=max(Console().width, 120))
    console.print("note: measured on a 2-core shared machine; p50s move by 5-20% between runs, "
                  "which bounds how well any estimate can match them.")
    start = time.perf_counter()
    for runtime in args.runtimes or ["onnxruntime"]:
        run(runtime, console, args.measurements)
    console.print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
