"""Terminal output for the CLI: progress bars and tables (rich), kept out of library code."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

def _width(stream) -> int | None:
    """None (the terminal's width) on a terminal or with $COLUMNS set; else wide enough that a CI
    log gets whole names in tables rather than rich's 80-column fallback with ellipses."""
    if os.environ.get("COLUMNS") or stream.isatty():
        return None
    return 4096


console = Console(stderr=True, width=_width(sys.stderr))
stdout = Console(soft_wrap=True, width=_width(sys.stdout))


QUIET = False  # -q: no progress bars


_ACTIVE: list[Progress] = []  # the live bar; a bar opened inside it becomes another line of it


@contextlib.contextmanager
def progress(total: int | None, description: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields `advance(n)`. Shown only when stderr is a terminal.

    A bar opened while another is shown (the accuracy budget inside quantize's calibration bar)
    is added to it as one more line: the terminal has one live display.
    """
    if _ACTIVE:
        outer = _ACTIVE[-1]
        task = outer.add_task(description, total=total)
        yield lambda amount=1: outer.advance(task, amount)
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=QUIET or not sys.stderr.isatty(),
        transient=False,
    )
    with bar:
        _ACTIVE.append(bar)
        try:
            task = bar.add_task(description, total=total)
            yield lambda amount=1: bar.advance(task, amount)
        finally:
            _ACTIVE.pop()


def calibration_bar(method: str, num_samples: int) -> tuple[int, str]:
    """The calibration progress bar's total and label. Calibration streams the samples once for the
    ranges and, except for minmax, once more for the histograms; the label says so, so that a
    count of 1024 for 512 samples reads as two passes."""
    passes = 1 if method == "minmax" else 2
    label = f"calibrating ({method}, {num_samples} samples)" if passes == 1 else \
        f"calibrating ({method}, 2 passes over {num_samples} samples)"
    return passes * num_samples, label


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    """A rich table with string-formatted cells."""
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*("" if cell is None else str(cell) for cell in row))
    return result
