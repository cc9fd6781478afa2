"""Rich tables shared by the CLI commands."""

from __future__ import annotations

from rich.table import Table

from edgeopt._markdown import shown_status


def _ms(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def artifacts_table(report: dict) -> Table:
    table = Table(title=f"edgeopt optimize {report['input']['spec']}")
    for col in ("artifact", "runtime", "device", "prec", "size KB", "p50 ms", "p90 ms",
                "CV", "vs FP32", report["data"]["metric"], "label", "status"):
        table.add_column(col, justify="right" if col not in {"artifact", "runtime", "device",
                                                              "status", "label"} else "left")
    untimed = sorted({b["reason"] for a in report["artifacts"]
                      if (b := a.get("bench") or {}).get("label") == "not-run" and "reason" in b})
    if untimed:
        table.caption = "Not timed: " + "; ".join(untimed)
    for a in report["artifacts"]:
        b = a.get("bench") or {}
        acc = (a.get("accuracy") or {}).get("value")
        speed = a.get("speedup_vs_fp32")
        shown = shown_status(a)
        status = shown if shown == "ok" else f"[bold red]{shown}[/bold red]"
        table.add_row(a["path"], a["runtime"], a["device"] or "—", a["precision"],
                      f"{a['size_bytes'] / 1024:.0f}", _ms(b.get("p50_ms")), _ms(b.get("p90_ms")),
                      "—" if b.get("cv") is None else f"{b['cv']:.3f}",
                      "—" if speed is None else f"{speed:.2f}x",
                      "—" if acc is None else f"{acc:.4f}", b.get("label", "—"), status)
    return table


def console_width() -> int | None:
    """Full-width tables in pipes and CI logs, where rich would otherwise wrap at 80."""
    import shutil
    import sys

    return None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
