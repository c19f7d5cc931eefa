"""One stderr console for logs, tables and progress; stdout carries only the run path."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def log(message: str) -> None:
    console.print(f"[dim]{message}[/]", highlight=False)


def progress(*extra_columns) -> Progress:
    """A rich progress bar on stderr with count, elapsed time and any extra columns."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra_columns,
        console=console,
        transient=False,
    )
