"""Tables and JSON on stdout: what the API returns, drawn."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.markup import escape
from rich.table import Table

from lsearch.api import TableData
from lsearch.cli.options import out


def table(data: TableData, cell: Any = escape) -> Table:
    """A rich table of the API's TableData (`cell` turns each text into what rich draws)."""
    drawn = Table(
        title=escape(data.title),
        caption=escape(data.caption) if data.caption else None,
        show_header=data.show_header,
    )
    for index, column in enumerate(data.header):
        drawn.add_column(escape(column), justify="left" if index < data.left else "right")
    for row in data.rows:
        drawn.add_row(*(cell(text) for text in row))
    return drawn


def print_table(data: TableData) -> None:
    out.print(table(data))


def print_json(payload: Any) -> None:
    """One JSON object on stdout, indented (`default=str` for paths and other odd values)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def print_lines(lines: list[str]) -> None:
    for line in lines:
        out.print(line, highlight=False, markup=False)
