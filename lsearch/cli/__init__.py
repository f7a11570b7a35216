"""The `lsearch` command: parse, call the Python API (`lsearch.api`), print. No logic of its
own; one module per group of commands, each importing only the API, typer, rich and the
standard library."""

from __future__ import annotations

import typer

from lsearch.cli.comparison import compare, evaluate
from lsearch.cli.machine import bench, doctor
from lsearch.cli.outputs import dashboard, export, report
from lsearch.cli.search import best, proxy, run, status

app = typer.Typer(
    help="Hyperparameter search for label smoothing: accuracy and calibration over seeds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (run, proxy, status, best, compare, evaluate, export, dashboard, report, bench,
                doctor):  # fmt: skip
    app.command()(command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
