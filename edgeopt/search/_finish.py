"""After the trials: the front, the chosen recipe rebuilt into ``DIR/best``, the files."""

from __future__ import annotations

import re
from pathlib import Path

from edgeopt._outdir import write_json_atomic, write_text_atomic
from edgeopt.recipe import Recipe
from edgeopt.search.objectives import choose_best, objective_values, pareto_front
from edgeopt.search.outputs import fmt, plot_device, write_pareto, write_trials_csv


def plot_name(device: str) -> str:
    return f"plot-{re.sub(r'[^A-Za-z0-9_.-]+', '_', device)}.png"


def finish(study, plan, settings, steps, peers, timing: dict) -> dict:
    """Write trials.csv, pareto.json, a plot per device and best/; returns the summary."""
    from edgeopt.search.study import trial_rows

    obj = plan.objectives
    rows = trial_rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    points = {r["number"]: objective_values(r["outcome"], obj) for r in done}
    feasible = {r["number"]: all(v <= 0 for v in r["constraints"]) for r in done}
    front = set(pareto_front(points, obj.directions))
    best = choose_best(points, feasible, obj.directions)
    for r in rows:
        r["feasible"] = feasible.get(r["number"])
        r["pareto"] = r["number"] in front if r["state"] == "COMPLETE" else None
    out = plan.out
    write_trials_csv(out / "trials.csv", rows, obj, [p.name for p in plan.space.params])
    constraints = {"max_accuracy_drop": plan.constraints.max_accuracy_drop,
                   "max_latency_ms": dict(sorted(plan.constraints.max_latency_ms.items())),
                   "max_size_mb": plan.constraints.max_size_mb}
    pareto = write_pareto(out / "pareto.json", [
        {"number": r["number"], "feasible": feasible[r["number"]], "values": points[r["number"]],
         "labels": {d: f["label"] for d, f in r["outcome"]["latency"].items()},
         "recipe": r["recipe"]} for r in done if r["number"] in front], obj, best, constraints)
    for device in obj.devices:
        plot_device(out / plot_name(device), device, rows, obj, best, peers)
    chosen = next((r for r in done if r["number"] == best), None)
    reproduced = _best_dir(out / "best", chosen, obj, steps) if chosen else None
    summary = {"trials": len(rows), "complete": len(done), "pareto": sorted(front),
               "best_trial": best, "best_reproduced": reproduced,
               "build_phase_s": round(sum(plan.build_seconds), 2),
               **_cores_in_use(plan, timing["executor"]),
               "window": plan.batch, **timing, "host": _cpu()}
    write_json_atomic(out / "search.json", summary)
    _print(steps.console, pareto, summary, out)
    return {**summary, "front": pareto["front"], "rows": rows}


def _cores_in_use(plan, executor: str) -> dict:
    """Local builds only (Ray's run in its workers, not here): the CPU seconds of the build
    phase and the cores it kept busy on average. Parallel builds on N cores can be at most
    N / cores_in_use times faster than these."""
    wall, cpu = sum(plan.build_seconds), sum(plan.build_cpu_seconds)
    if executor != "local" or wall <= 0:
        return {}
    return {"build_phase_cpu_s": round(cpu, 2), "build_cores_in_use": round(cpu / wall, 3)}


def _cpu() -> str:
    from edgeopt.runtimes.devices import detect_host

    host = detect_host()
    return f"{host['name']} ({host['cores']} cores)"


def _best_dir(folder: Path, row: dict, obj, steps) -> bool:
    """The chosen recipe run again by ``optimize`` into ``folder`` (artifacts, report,
    recipe.yaml headed by the trial's figures and their labels); True when its artifact
    has the trial's sha256 and metric."""
    from edgeopt.pipeline import optimize

    recipe = Recipe.from_dict(row["recipe"])
    outcome = row["outcome"]
    with steps.step(f"best: trial {row['number']} rebuilt into {folder}"):
        report = optimize(recipe=recipe, out=folder, overwrite=True)
    art = next(a for a in report.artifacts if a.runtime == outcome["runtime"]
               and a.precision == outcome["precision"])
    same = art.sha256 == outcome["sha256"] and art.accuracy["value"] == outcome["metric"]
    if not same:
        steps.warn(f"best/: the rebuilt artifact differs from trial {row['number']}'s "
                   f"(sha256 {art.sha256[:12]} vs {outcome['sha256'][:12]}, {obj.metric} "
                   f"{art.accuracy['value']} vs {outcome['metric']})")
    lines = [f"# chosen by edgeopt search: trial {row['number']}, {outcome['runtime']} "
             f"{outcome['precision']}, sha256 {outcome['sha256']}",
             f"# {obj.metric} {fmt(outcome['metric'])}, size {outcome['size_bytes']} bytes"]
    lines += [f"# p50 {d} {fmt(f['p50_ms'])} ms ({f['label']})"
              for d, f in outcome["latency"].items()]
    write_text_atomic(folder / "recipe.yaml", "\n".join(lines) + "\n" + recipe.to_yaml())
    return same


def _print(console, pareto: dict, summary: dict, out: Path) -> None:
    from rich.table import Table

    names = [o["name"] for o in pareto["objectives"]]
    table = Table(title=f"Pareto front: {len(pareto['front'])} of {summary['complete']} trials")
    for col in ("trial", *names, "runtime", "options", "ok"):
        table.add_column(col)
    for p in pareto["front"]:
        values = [f"{p['values'][n]:.5g}" + (f" {p['labels'][n.split(' ', 1)[1]]}"
                                              if n.startswith("p50_ms ") else "") for n in names]
        recipe = p["recipe"]
        options = f"{recipe['quant']['calibrator']}" + (
            f", prune {recipe['prune']['mode']} {recipe['prune']['ratio']}"
            if recipe.get("prune") else "")
        mark = "best" if p["trial"] == pareto["best_trial"] else ("yes" if p["feasible"] else "no")
        table.add_row(str(p["trial"]), *values, recipe["runtimes"][0], options, mark)
    console.print(table)
    busy = (f", {summary['build_cores_in_use']:.2f} cores busy on average"
            if "build_cores_in_use" in summary else "")
    console.print(f"build phase: {summary['build_phase_s']:.1f} s on {summary['executor']}{busy} "
                  f"({summary['window']} trials in flight; {summary['host']}; workers warmed in "
                  f"{summary['warm_s']:.1f} s)")
    if summary["best_trial"] is None:
        console.print("no trial meets the constraints: no best/ written")
    console.print(f"wrote {out}/trials.csv, pareto.json, plot-*.png, search.json"
                  + (", best/" if summary["best_trial"] is not None else ""))
