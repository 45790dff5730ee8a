"""Tables that stay whole at any width: text wraps between words, identifiers and numbers are never cut.

On a narrow terminal (80 columns: a CI log, an ssh session) a table keeps the columns that tell its rows
apart: optional columns are left out first, then columns whose value is the same in every row (printed once
above the table instead). If the rest still cannot fit with whole words, each row is printed as a record,
one ``header  value`` line per column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table

#: Words up to this long (``kvcache_partition_len=4096``) are kept whole; longer ones may fold.
LONGEST_UNBROKEN_WORD = 28
GAP = 2  # columns between two cells


@dataclass(frozen=True)
class Column:
    """One column: ``kind`` is ``text`` (wraps between words), ``id`` or ``number`` (one line, never cut);
    an ``optional`` column is left out when the terminal is too narrow."""

    header: str
    kind: str = "text"
    optional: bool = False


def _least_width(column: Column, values: Sequence[str]) -> int:
    """The narrowest the column can be: its longest value (ids, numbers) or longest word (text)."""
    if column.kind != "text":
        return max([len(column.header), *map(len, values)])
    words = [word for value in values for word in value.split()]
    return min(LONGEST_UNBROKEN_WORD, max([len(column.header), *map(len, words)]))


def wrapping_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], title: str | None = None) -> Table:
    """A borderless table of ``rows``: text columns wrap between words, ids and numbers keep their width."""
    table = Table(box=None, pad_edge=False, title=title, title_justify="left")
    for index, column in enumerate(columns):
        least = _least_width(column, [row[index] for row in rows])
        if column.kind == "text":
            table.add_column(column.header, overflow="fold", min_width=least)
        else:
            table.add_column(column.header, no_wrap=True, min_width=least, justify="right" if column.kind == "number" else "left")
    for row in rows:
        table.add_row(*row)
    return table


def records(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> Table:
    """Each row as a block of ``header  value`` lines (values wrap), blocks separated by a blank line."""
    grid = Table.grid(padding=(0, GAP))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for number, row in enumerate(rows):
        if number:
            grid.add_row("", "")
        for column, value in zip(columns, row):
            if value:
                grid.add_row(column.header, value)
    return grid


def _natural_width(console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> int:
    unbounded = console.options.update_width(10**6)
    return Measurement.get(console, unbounded, wrapping_table(columns, rows)).maximum


def _least_table_width(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> int:
    widths = [_least_width(column, [row[index] for row in rows]) for index, column in enumerate(columns)]
    return sum(widths) + GAP * (len(columns) - 1)


def _without(columns: list[Column], rows: list[list[str]], index: int) -> tuple[list[Column], list[list[str]]]:
    return columns[:index] + columns[index + 1:], [row[:index] + row[index + 1:] for row in rows]


def fitted_table(
    console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]]
) -> tuple[RenderableType, list[tuple[str, str]]]:
    """``rows`` laid out for ``console``'s width, and the ``(header, value)`` of each column left out because
    every row has that value (optional columns are left out silently; records leave nothing out)."""
    kept, cells = list(columns), [list(row) for row in rows]
    shared: list[tuple[str, str]] = []
    for index in reversed(range(len(kept))):
        if _natural_width(console, kept, cells) <= console.width:
            return wrapping_table(kept, cells), shared
        if kept[index].optional:
            kept, cells = _without(kept, cells, index)
    for index in reversed(range(len(kept))):
        if len(cells) < 2 or _natural_width(console, kept, cells) <= console.width:
            break
        values = {row[index] for row in cells}
        if kept[index].kind == "text" and len(values) == 1:
            shared.insert(0, (kept[index].header, values.pop()))
            kept, cells = _without(kept, cells, index)
    if _least_table_width(kept, cells) <= console.width:
        return wrapping_table(kept, cells), shared
    return records(columns, rows), []
