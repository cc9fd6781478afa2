"""A search's files: ``trials.csv``, ``pareto.json``, one plot per device.

``pareto.json`` holds recipes and objective values only (no timestamps, durations or
paths), in trial order with fixed float formatting, so the same search gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgeopt._outdir import write_text_atomic
from edgeopt.search.objectives import Objectives

__all__ = ["fmt", "plot_device", "write_pareto", "write_trials_csv"]


def fmt(value: float) -> float:
    """A float as written: 6 significant digits, so runs agree byte for byte."""
    return float(f"{value:.6g}")


def write_trials_csv(path: Path, rows: list[dict], objectives: Objectives,
                     param_names: list[str]) -> None:
    """Every trial: number, state, its values, figures with their labels, and why it failed."""
    lat = list(objectives.devices)
    header = ["trial", "state", *param_names, objectives.metric, "size_bytes",
              *(f"p50_ms {d}" for d in lat), *(f"label {d}" for d in lat), "feasible", "pareto",
              "artifact", "sha256", "build_s", "error"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        out = row.get("outcome") or {}
        latency = out.get("latency") or {}
        writer.writerow([
            row["number"], row["state"], *(_cell(row["params"].get(p)) for p in param_names),
            _cell(out.get("metric")), _cell(out.get("size_bytes")),
            *(_cell(latency.get(d, {}).get("p50_ms")) for d in lat),
            *(latency.get(d, {}).get("label", "") for d in lat),
            _cell(row.get("feasible")), _cell(row.get("pareto")),
            Path(out["artifact"]).name if out.get("artifact") else "", out.get("sha256", ""),
            _cell(out.get("build_s")), out.get("error", "")])
    write_text_atomic(path, buf.getvalue())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_pareto(path: Path, front: list[dict], objectives: Objectives, best: int | None,
                 constraints: dict) -> dict:
    """``front``: the non-dominated trials (number, recipe, values, labels, feasible)."""
    data = {
        "objectives": [{"name": n, "direction": d}
                       for n, d in zip(objectives.names, objectives.directions, strict=True)],
        "constraints": constraints,
        "best_trial": best,
        "front": [{"trial": p["number"], "feasible": p["feasible"],
                   "values": {n: fmt(v) for n, v in zip(objectives.names, p["values"],
                                                         strict=True)},
                   "labels": p["labels"], "recipe": p["recipe"]}
                  for p in sorted(front, key=lambda p: p["number"])],
    }
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def plot_device(path: Path, device: str, rows: list[dict], objectives: Objectives,
                best: int | None, peers: list[dict] | None = None) -> None:
    """Metric against p50 on ``device``: every trial, marker area by size, the Pareto front
    highlighted and joined, the chosen point ringed, the peers' points where known, and the
    latency label (measured / estimated) in the title and axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["state"] == "COMPLETE"]
    labels = sorted({r["outcome"]["latency"][device]["label"] for r in done}) or ["—"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    biggest = max([r["outcome"]["size_bytes"] for r in done]
                  + [p["size_bytes"] for p in peers or []] + [1])
    _scatter(ax, done, device, best, biggest)
    for peer in peers or []:
        lat = peer.get("latency", {}).get(device)
        if lat is not None:
            ax.scatter([lat["p50_ms"]], [peer["metric"]], marker="X",
                       s=_area(peer["size_bytes"], biggest),
                       color="tab:red", zorder=4)
            ax.annotate(f"{peer['name']} ({lat['label']})", (lat["p50_ms"], peer["metric"]),
                        textcoords="offset points", xytext=(6, -10), fontsize=8,
                        color="tab:red")
    label = "/".join(labels)
    ax.set_xlabel(f"p50 latency on {device}, ms ({label})")
    ax.set_ylabel(objectives.metric)
    ax.set_title(f"edgeopt search: {objectives.metric} vs p50 on {device} [{label}]\n"
                 f"marker area: artifact size (largest {biggest / 1e6:.3g} MB); Pareto front in orange", fontsize=9)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _area(size_bytes: float, biggest: float) -> float:
    """Marker area in proportion to size: the biggest artifact drawn here is 400 pt^2."""
    return 400 * size_bytes / max(biggest, 1)


def _scatter(ax, done: list[dict], device: str, best: int | None, biggest: float) -> None:
    def xy(rows):
        return ([r["outcome"]["latency"][device]["p50_ms"] for r in rows],
                [r["outcome"]["metric"] for r in rows],
                [_area(r["outcome"]["size_bytes"], biggest) for r in rows])

    others = [r for r in done if not r.get("pareto")]
    front = sorted((r for r in done if r.get("pareto")),
                   key=lambda r: r["outcome"]["latency"][device]["p50_ms"])
    x, y, s = xy(others)
    ax.scatter(x, y, s=s, color="tab:gray", alpha=0.45, label="trial")
    x, y, s = xy(front)
    ax.scatter(x, y, s=s, color="tab:orange", edgecolor="black", zorder=3, label="Pareto front")
    ax.plot(x, y, color="tab:orange", alpha=0.6, zorder=2)
    chosen = [r for r in done if r["number"] == best]
    if chosen:
        x, y, _ = xy(chosen)
        ax.scatter(x, y, s=300, facecolor="none", edgecolor="tab:blue", linewidth=2, zorder=5,
                   label=f"best (trial {best})")
    ax.legend(fontsize=8, loc="lower right")
