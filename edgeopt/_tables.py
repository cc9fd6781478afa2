"""Rich tables shared by the CLI commands.

A cell is never cut short: rich's default ends a cell that does not fit with an ellipsis,
and two artifact names that differ only at the end (``NAME.fp32.onnx``, ``NAME.int8.onnx``)
then read the same. Columns made here fold what does not fit onto the next line instead,
and the results table, when its columns cannot fit the terminal side by side, gives each
artifact its whole name on a line and its figures on the next.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from edgeopt._markdown import shown_status

_TEXT_COLUMNS = {"artifact", "runtime", "device", "status", "label"}


def _ms(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def add_column(table: Table, header: str, *, right: bool = False) -> None:
    """A column whose cells fold onto more lines where they do not fit, never cut."""
    table.add_column(header, justify="right" if right else "left", overflow="fold")


def _cells(a: dict) -> list[str]:
    b = a.get("bench") or {}
    acc = (a.get("accuracy") or {}).get("value")
    speed = a.get("speedup_vs_fp32")
    return [a["path"], a["runtime"], a["device"] or "—", a["precision"],
            f"{a['size_bytes'] / 1024:.0f}", _ms(b.get("p50_ms")), _ms(b.get("p90_ms")),
            "—" if b.get("cv") is None else f"{b['cv']:.3f}",
            "—" if speed is None else f"{speed:.2f}x",
            "—" if acc is None else f"{acc:.4f}", b.get("label", "—"), shown_status(a)]


def _status(shown: str) -> str:
    return shown if shown == "ok" else f"[bold red]{shown}[/bold red]"


def artifacts_table(report: dict, width: int | None = None) -> Table:
    """The results table; on a console narrower than its columns (``width``), one artifact
    per row: the whole name on a line, the figures (each with its header) below it."""
    headers = ["artifact", "runtime", "device", "prec", "size KB", "p50 ms", "p90 ms", "CV",
               "vs FP32", report["data"]["metric"], "label", "status"]
    rows = [_cells(a) for a in report["artifacts"]]
    table = Table(title=f"edgeopt optimize {report['input']['spec']}")
    untimed = sorted({b["reason"] for a in report["artifacts"]
                      if (b := a.get("bench") or {}).get("label") == "not-run" and "reason" in b})
    if untimed:
        table.caption = "Not timed: " + "; ".join(untimed)
    natural = sum(max(len(h), *(len(r[i]) for r in rows)) + 3
                  for i, h in enumerate(headers)) + 1
    if width is None or natural <= width:
        for col in headers:
            add_column(table, col, right=col not in _TEXT_COLUMNS)
        for row in rows:
            table.add_row(*row[:-1], _status(row[-1]))
        return table
    add_column(table, "artifact, then its figures")
    table.show_lines = True
    for row in rows:
        keys = ("", "", "", "size=", "p50=", "p90=", "CV=", "vs-FP32=", f"{headers[9]}=", "")
        units = ("", "", "", "KB", "ms", "ms", "", "", "", "")
        figures = "  ".join(f"{k}{v}{u if v != '—' else ''}"
                            for k, v, u in zip(keys, row[1:-1], units, strict=True))
        table.add_row(Text.assemble((row[0], "bold"), "\n", figures, "  ",
                                    Text.from_markup(_status(row[-1]))))
    return table


def console_width() -> int | None:
    """Full-width tables in pipes and CI logs, where rich would otherwise wrap at 80."""
    import shutil
    import sys

    return None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
