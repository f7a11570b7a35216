"""What a storage's studies become: the HTML report (and the same figures in the studies,
for optuna-dashboard), CSV/JSON exports, and optuna-dashboard itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsearch.api.common import quiet_libraries
from lsearch.errors import UserError


@dataclass(frozen=True)
class Report:
    """What `report` wrote: the HTML file or the image files, and how much went in."""

    written: list[Path]
    figures: int
    verdicts: list[str]


def report(
    study: str | None = None,
    storage: str | None = None,
    output: str | Path = "report.html",
    image_format: str = "html",
) -> Report:
    """Draw a search and its comparisons (``lsearch report``): one self-contained HTML file
    (plotly.js embedded, opens offline), or a folder of png/svg files; the same figures and
    verdicts are stored in the studies for optuna-dashboard. ``study`` is the search
    (default: the only one in the storage), or a comparison to report on its own; a storage
    with comparisons and no search (a lone ``lsearch compare``) reports every comparison.

    >>> import lsearch, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> url = f"sqlite:///{folder}/lsearch.db"
    >>> tiny = {"space.epochs": {"low": 1, "high": 2}, "seeds": [0, 1],
    ...         "data.train_per_class": 20, "data.val_per_class": 20,
    ...         "checkpoint.location": f"{folder}/artifacts"}
    >>> _ = lsearch.run("digits", tiny, storage=url, trials=2, device="cpu")
    >>> written = lsearch.report(storage=url, output=f"{folder}/report.html")
    >>> written.written[0].name, written.figures > 0
    ('report.html', True)
    """
    import optuna

    from lsearch.outputs import html_report
    from lsearch.outputs.export import write_atomic
    from lsearch.store.catalog import report_studies
    from lsearch.store.storage import open_storage, resolve_url

    if image_format not in ("html", "png", "svg"):
        raise UserError(f"--format {image_format!r}: use html, png or svg")
    quiet_libraries()
    opened = open_storage(resolve_url(storage), must_exist=True)
    search, comparisons = report_studies(opened, study)
    if search is None:
        sections, verdicts = html_report.publish(opened, None, comparisons=comparisons)
        names = comparisons
    else:
        sections, verdicts = html_report.publish(opened, search)
        names = [search]
    if not sections:
        raise UserError(f"study '{names[0]}' has nothing to report yet; run it first")
    figures = sum(len(section.figures) for section in sections)
    target = Path(output)
    if image_format == "html":
        studies = [optuna.load_study(study_name=name, storage=opened) for name in names]
        write_atomic(target, html_report.render_html(studies, sections))
        return Report([target], figures, verdicts)
    return Report(html_report.write_images(target, sections, image_format), figures, verdicts)


@dataclass(frozen=True)
class Export:
    """A study as one row per trial and seed, rendered as CSV or JSON text."""

    study: str
    rows: int
    text: str


def export(study: str | None = None, storage: str | None = None, fmt: str | None = None) -> Export:
    """Export a study (``lsearch export``): parameters, seed and every per-seed metric, one
    row per trial and seed, as ``fmt`` "csv" or "json" text (columns: see
    lsearch/outputs/export.py); ``lsearch.api.write_atomic`` writes it to a file.

    >>> import lsearch, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> url = f"sqlite:///{folder}/lsearch.db"
    >>> tiny = {"space.epochs": {"low": 1, "high": 2}, "seeds": [0, 1],
    ...         "data.train_per_class": 20, "data.val_per_class": 20,
    ...         "checkpoint.location": f"{folder}/artifacts"}
    >>> _ = lsearch.run("digits", tiny, storage=url, trials=2, device="cpu")
    >>> exported = lsearch.export(storage=url, fmt="csv")
    >>> exported.rows, exported.text.splitlines()[0].split(",")[:3]
    (4, ['study', 'trial', 'state'])
    """
    from lsearch.outputs.export import check_format, export_rows, render
    from lsearch.store.catalog import pick_study
    from lsearch.store.storage import open_storage, resolve_url

    fmt = check_format(fmt)
    quiet_libraries()
    found = pick_study(open_storage(resolve_url(storage), must_exist=True), study)
    columns, rows = export_rows(found.study_name, found.get_trials(deepcopy=False))
    return Export(found.study_name, len(rows), render(fmt, columns, rows))


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file whole or not at all (a temporary file renamed over it)."""
    from lsearch.outputs.export import write_atomic as write

    write(Path(path), text)


@dataclass(frozen=True)
class Dashboard:
    """optuna-dashboard listening (``serve()`` until Ctrl-C, then ``close()``)."""

    server: Any
    url: str  # where it listens
    storage: str  # the storage URL, password masked
    warning: str | None  # set when it listens beyond loopback (it has no login)

    def serve(self) -> None:
        self.server.serve_forever()

    def close(self) -> None:
        self.server.server_close()


def dashboard(
    storage: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: str = "artifacts",
) -> Dashboard:
    """Open optuna-dashboard for a storage, with its kept checkpoints (``lsearch dashboard``)."""
    from lsearch.outputs.dashboard import exposure_warning, is_loopback, open_dashboard, url_of
    from lsearch.store.storage import mask_url, resolve_url

    quiet_libraries()
    url = resolve_url(storage)
    server = open_dashboard(url, host=host, port=port, artifacts=artifacts)
    warning = None if is_loopback(host) else exposure_warning(host, server.server_address[1])
    return Dashboard(server, url_of(server), mask_url(url), warning)
