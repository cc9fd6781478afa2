"""Human output of the commands a device runs (bench, devices): rich where it is installed,
plain aligned text where it is not (the runtime-only install has no rich)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


def _ms(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def bench_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The bench table: one row per target, each figure with its label."""
    header = ["device", "adapter", "runtime", "label", "p50 ms", "p90 ms", "CV", "load ms",
              "peak MB", "note"]
    blank = ["—"] * 5
    rows = []
    for r in results:
        b = r["bench"]
        label = b.get("label", "—")
        if label in {"measured", "emulated"} and "p50_ms" in b:
            note = "unstable (CV > 5%)" if b.get("unstable") else ""
            if label == "emulated":
                note = "under qemu: not the device's speed"
            if b.get("fallback_nodes"):
                note = f"{b['fallback_nodes']} nodes fell back to the CPU EP"
            rows.append([r["device"], r["adapter"], r["runtime"], label, _ms(b["p50_ms"]),
                         _ms(b["p90_ms"]), f"{b['cv']:.3f}", f"{b['load_ms']:.1f}",
                         "—" if b.get("peak_rss_mb") is None else f"{b['peak_rss_mb']:.0f}",
                         note])
        elif label == "estimated":
            calibration = str(b.get("calibration", "?")).split(" (")[0]
            note = f"band {b['low_ms']:.3f}–{b['high_ms']:.3f} ms; {calibration}"
            rows.append([r["device"], r["adapter"], r["runtime"], label, _ms(b["p50_ms"]),
                         *blank[1:], note])
        else:
            rows.append([r["device"], r["adapter"], r["runtime"], label, *blank,
                         b.get("reason", "")])
        emulation = r.get("emulation")
        if emulation:
            if emulation.get("label") == "emulated":
                worst = max((o.get("max_abs_diff", 0.0) for o in emulation.get("outputs", [])),
                            default=0.0)
                verdict = "outputs match" if emulation.get("within_tolerance") else \
                    "OUTPUTS DIFFER"
                note = (f"{verdict} this machine's (max |diff| {worst:.2e}) on "
                        f"qemu -cpu {emulation.get('qemu_cpu')}; correctness only")
            else:
                note = emulation.get("reason", "")
            rows.append([r["device"], "qemu-user", r["runtime"],
                         emulation.get("label", "—"), *blank, note])
    return header, rows


class Output:
    """Warnings, a spinner for long steps, and tables on stderr/stdout."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        try:
            from rich.console import Console
        except ImportError:
            self._err = None
        else:
            self._err = Console(stderr=True, quiet=quiet, highlight=False)

    def warn(self, text: str) -> None:
        if self.quiet:
            return
        if self._err is not None:
            self._err.print(f"[yellow]{text}[/yellow]", markup=True)
        else:
            sys.stderr.write(text + "\n")

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        if self._err is not None and not self.quiet:
            with self._err.status(text):
                yield
        else:
            if not self.quiet:
                sys.stderr.write(text + " ...\n")
            yield

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        try:
            from rich.console import Console
            from rich.table import Table

            from edgeopt._tables import add_column, console_width
        except ImportError:
            sys.stdout.write(plain_table(title, header, rows))
            return
        table = Table(title=title)
        for col in header:
            add_column(table, col, right=col.endswith(("ms", "CV", "ips", "MB")))
        for row in rows:
            table.add_row(*row)
        Console(width=console_width()).print(table)

    def bench_table(self, results: list[dict]) -> None:
        self.table("edgeopt bench", *bench_rows(results))


def plain_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
              for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"
