"""Progress on stderr for long steps: a timed line per step, a bar for long loops."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Steps:
    """Shows each pipeline step as it runs and records how long it took."""

    def __init__(self, quiet: bool = False) -> None:
        from edgeopt._tables import console_width

        self.console = Console(stderr=True, quiet=quiet, highlight=False, width=console_width())
        self.timings: dict[str, float] = {}
        self.log: list[str] = []             # step names in the order they finished
        self._progress: Progress | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[Callable[[int, int], None]]:
        """Time a step; yields a ``update(done, total)`` callback that drives a bar."""
        start = time.perf_counter()
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console, transient=True,
        )
        task = progress.add_task(name, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        with progress:
            yield update
        seconds = time.perf_counter() - start
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.log.append(name)
        self.console.print(f"[green]✓[/green] {name} [dim]({seconds:.1f} s)[/dim]")

    def cached(self, name: str, seconds: float) -> None:
        """A step whose result came from the cache (``seconds``: checking and copying it)."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.log.append(name)
        self.console.print(f"[green]✓[/green] {name} [cyan](cached)[/cyan] "
                           f"[dim]({seconds:.1f} s)[/dim]")

    def warn(self, text: str) -> None:
        self.console.print(f"[bold red]WARNING[/bold red] {text}")
