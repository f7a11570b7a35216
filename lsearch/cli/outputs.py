"""`lsearch report`, `export` and `dashboard`: what a storage's studies become."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from lsearch import api
from lsearch.cli.options import StorageOption, StudyNameOption, err, user_errors


@user_errors
def export(
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="Output format: csv or json (required)", show_default=False),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option("--study", help="Study name [default: the only search study in the storage]"),
    ] = None,
    storage: StorageOption = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Write to this file, atomically [default: standard output]"
        ),
    ] = None,
) -> None:
    """Export a study as one row per trial and seed: parameters, seed and every per-seed
    metric, as CSV or JSON (columns: see lsearch/outputs/export.py)."""
    exported = api.export(study, storage, fmt)
    if output is None:
        sys.stdout.write(exported.text)
        return
    api.write_atomic(output, exported.text)
    err.print(f"wrote {exported.rows} rows to {output}", highlight=False, markup=False)


@user_errors
def dashboard(
    storage: StorageOption = None,
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; any but loopback exposes it (it has no login)"),
    ] = "127.0.0.1",
    artifacts: Annotated[
        str,
        typer.Option(help="Checkpoint store to list kept checkpoints from: folder, s3://, gs://"),
    ] = "artifacts",
) -> None:
    """Serve optuna-dashboard for a storage, with its kept checkpoints, on 127.0.0.1:8080.
    Ctrl-C stops it."""
    try:
        served = api.dashboard(storage, host=host, port=port, artifacts=artifacts)
        try:
            if served.warning is not None:
                err.print(served.warning, highlight=False, markup=False, soft_wrap=True)
            err.print(
                f"serving {served.storage} on {served.url} (Ctrl-C to stop)",
                highlight=False, markup=False, soft_wrap=True,
            )  # fmt: skip
            served.serve()
        finally:
            served.close()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@user_errors
def report(
    study: StudyNameOption = None,
    storage: StorageOption = None,
    output: Annotated[
        str, typer.Option("-o", "--output", help="HTML file, or folder for --format png/svg")
    ] = "report.html",
    image_format: Annotated[
        str, typer.Option("--format", help="html (one self-contained file), png or svg")
    ] = "html",
) -> None:
    """Draw a search and its comparisons, or with --study a comparison on its own (a
    storage of comparisons alone: all of them): one self-contained HTML file (plotly.js
    embedded, opens offline), and the same figures and verdicts stored in the studies for
    optuna-dashboard."""
    written = api.report(study, storage, output, image_format)
    if image_format == "html":
        err.print(
            f"wrote {written.written[0]} ({written.figures} figures, "
            f"{len(written.verdicts)} verdicts; opens offline); figures and verdicts also "
            "stored in the studies for optuna-dashboard",
            highlight=False,
        )
    else:
        err.print(
            f"wrote {len(written.written)} {image_format} files to {output}/", highlight=False
        )
