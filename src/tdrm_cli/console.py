"""One stderr console for logs, tables and progress; stdout carries only the run path.

tdrm's own lines, bars and tables always show. What the libraries print on their own
(transformers' load reports and `Loading weights` bars, accelerate / datasets / TRL
logging, Python warnings) shows only with `tdrm -v` (`set_verbose`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)

VERBOSE = False
"""`tdrm -v`: the libraries' own logging, warnings and progress bars show too."""

_IGNORE_WARNINGS = ("ignore", None, Warning, None, 0)  # what filterwarnings("ignore") adds


def log(message: str) -> None:
    console.print(f"[dim]{message}[/]", highlight=False)


def warn(message: str) -> None:
    """A yellow `warning: ...` line, shown with or without -v."""
    console.print(f"[yellow]warning: {message}[/]", highlight=False)


def set_verbose(verbose: bool) -> None:
    """Turn the libraries' own output on (`-v`) or off, now and for libraries loaded later."""
    global VERBOSE
    VERBOSE = verbose
    quiet_libraries()


def quiet_libraries() -> None:
    """Apply `VERBOSE` to logging, warnings and the progress bars of the libraries loaded
    so far (cheap; the stages call it again once they have imported datasets or TRL)."""
    logging.disable(logging.NOTSET if VERBOSE else logging.WARNING)  # errors still show
    if VERBOSE:
        while _IGNORE_WARNINGS in warnings.filters:
            warnings.filters.remove(_IGNORE_WARNINGS)
        getattr(warnings, "_filters_mutated", lambda: None)()
    elif warnings.filters[:1] != [_IGNORE_WARNINGS]:
        warnings.filterwarnings("ignore")
    from huggingface_hub import utils as hub  # small; transformers reads it when imported

    # A user's HF_HUB_DISABLE_PROGRESS_BARS=1 wins (the hub itself refuses to re-enable).
    if VERBOSE and os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:
        hub.enable_progress_bars()
    elif not VERBOSE:
        hub.disable_progress_bars()
    for module, on, off in (
        ("transformers.utils.logging", "enable_progress_bar", "disable_progress_bar"),
        ("datasets", "enable_progress_bars", "disable_progress_bars"),
    ):
        if module in sys.modules:
            getattr(sys.modules[module], on if VERBOSE else off)()


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


class TokenRate(ProgressColumn):
    """Generated tokens/s since the bar started, for a task with a `tokens` field (the
    tokens so far), and its items/s when `unit` names them (`problems/s`)."""

    def __init__(self, unit: str | None = None):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0 or "tokens" not in task.fields:
            return Text("")
        items = f"{task.completed / elapsed:.2f} {self.unit}/s  " if self.unit else ""
        return Text(f"{items}{task.fields['tokens'] / elapsed:,.0f} tokens/s", style="cyan")


def fitted(table: Table, width: int | None = None) -> Table:
    """`table` made to fit `width` columns (the console's) without cutting anything with
    '…': every column gets its longest word where the room allows (else the longest words
    are folded, all at one width), the room left goes first to the columns it puts on one
    line."""
    width = width or console.width
    wide = console.options.update_width(10**6)
    ranges = []  # (longest word, longest line) of every column's header and cells
    for column in table.columns:
        column.no_wrap, column.overflow, column.min_width = False, "fold", None
        cells = [Measurement.get(console, wide, c) for c in (column.header, *column.cells)]
        ranges.append((max(m.minimum for m in cells), max(m.maximum for m in cells)))
    natural = Measurement.get(console, wide, table).maximum
    room = width - (natural - sum(line for _, line in ranges))  # less borders and padding
    if natural <= width or room < 4 * len(ranges):
        return table  # it fits, or nothing sensible does: rich folds it as it can
    cap = max(word for word, _ in ranges)
    while sum(min(word, cap) for word, _ in ranges) > room:
        cap -= 1
    widths = [min(word, cap) for word, _ in ranges]
    spare = room - sum(widths)
    for i in sorted(range(len(ranges)), key=lambda i: ranges[i][1] - widths[i]):
        extra = min(spare, ranges[i][1] - widths[i])
        widths[i] += extra
        spare -= extra
    for column, column_width in zip(table.columns, widths, strict=True):
        column.width = column_width
    return table
