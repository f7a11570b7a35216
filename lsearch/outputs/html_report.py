"""`lsearch report`: a search and its comparisons as plotly figures, one self-contained HTML
file (plotly.js embedded: it opens offline), and the same figures and verdict stored in the
studies for optuna-dashboard.

The figures are drawn in `lsearch.outputs.figures` and put in order, with what each shows, in
`lsearch.outputs.sections`; this module makes the page, the static images and the notes and
figures stored in each study. A comparison's numbers are computed once per command: whoever
already has them (`lsearch compare`) passes them to :func:`publish`.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lsearch.errors import UserError
from lsearch.outputs.sections import (
    Section,
    answer_section,
    build_sections,
    comparison_only_sections,
    comparison_section,
    reliability_section,
)
from lsearch.store.catalog import FINISHED, comparisons_of, study_names

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script type="text/javascript">{plotly}</script>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; }}
pre {{ font-size: 0.8em; overflow-x: auto; background: #f7f7f7; padding: 1em; }}
.status {{ background: #fff4d6; padding: 0.6em 1em; border-left: 4px solid #e0a800; }}
</style></head><body>
<h1>{title}</h1>
<p>{subtitle}</p>
{status}
{body}
</body></html>
"""


def render_html(studies: optuna.Study | Sequence[optuna.Study], sections: Sequence[Section]) -> str:
    """The whole page: every section in order, plotly.js embedded, and a note when a study
    is still running. `studies`: the search, or the comparisons reported without one."""
    from plotly.offline import get_plotlyjs

    studies = [studies] if isinstance(studies, optuna.Study) else list(studies)
    running = [
        trial
        for study in studies
        for trial in study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)
        )
    ]
    status = (
        f'<p class="status">This study is still running ({len(running)} trials running or '
        "waiting): the report shows what was finished when it was made.</p>"
        if running
        else ""
    )
    name = studies[0].study_name if len(studies) == 1 else f"{len(studies)} comparisons"
    parts = []
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{section.text}</p>")
        parts += section.tables
        for graph_id, figure in section.figures:
            parts.append(
                figure.to_html(full_html=False, include_plotlyjs=False, div_id=graph_id,
                               config={"displaylogo": False})
            )  # fmt: skip
        parts += section.below
    made = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return PAGE.format(
        title=html.escape(f"lsearch report: {name}"),
        subtitle=f"Made {made} from the {'study' if len(studies) == 1 else 'studies'} in "
        "its storage.",
        plotly=get_plotlyjs(),
        status=status,
        body="\n".join(parts),
    )


def save_to_dashboard(study: optuna.Study, sections: Sequence[Section], note: str) -> list[str]:
    """Store the figures and a Markdown note in the study, for optuna-dashboard; stable ids,
    so running again replaces them. The ids stored."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    ids = []
    for section in sections:
        for graph_id, figure in section.figures:
            save_plotly_graph_object(study, figure, graph_object_id=graph_id)
            ids.append(graph_id)
    save_note(study, note)
    return ids


def comparison_results(
    storage: optuna.storages.BaseStorage,
    search_study: str,
    summaries: Mapping[str, dict[str, Any]] | None = None,
) -> list[tuple[optuna.Study, dict[str, Any]]]:
    """Every comparison of a search with its numbers, in name order (see
    named_comparison_results)."""
    names = [summary.study_name for summary in comparisons_of(storage, search_study)]
    return named_comparison_results(storage, names, summaries)


def verdict_note(title: str, verdicts: Sequence[str], extra: str = "") -> str:
    """The Markdown note stored in a study for optuna-dashboard: its verdicts, then `extra`."""
    lines = [f"# {title}", "", "Made by lsearch. Numbers with 95 % intervals over seeds.", ""]
    lines += [f"- {v}" for v in verdicts] or ["No comparison yet: run `lsearch compare`."]
    return "\n".join(lines) + ("\n\n" + extra if extra else "") + "\n"


def named_comparison_results(
    storage: optuna.storages.BaseStorage,
    names: Sequence[str],
    summaries: Mapping[str, dict[str, Any]] | None = None,
) -> list[tuple[optuna.Study, dict[str, Any]]]:
    """The comparison studies `names` with their numbers: those in `summaries` (comparison
    study name -> what `summarise` returned) as given, the others recomputed from their
    trials, less those whose first run never finished recording its request."""
    from lsearch.comparison import request_from_study, summarise

    given = summaries or {}
    found = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        request = request_from_study(study)
        if name in given:
            found.append((study, given[name]))
        elif request is not None:
            found.append((study, summarise(request, study)))
    return found


def _store_comparisons(results: Sequence[tuple[optuna.Study, dict[str, Any]]]) -> None:
    from lsearch.analysis.verdict import to_markdown

    for study, result in results:
        save_to_dashboard(
            study,
            [
                answer_section([result]),
                comparison_section(result),
                reliability_section([result], None, study.study_name),
            ],
            verdict_note(result["study"], result["verdicts"], to_markdown(result)),
        )


def publish(
    storage: optuna.storages.BaseStorage,
    search_study: str | None,
    *,
    summaries: Mapping[str, dict[str, Any]] | None = None,
    comparisons: Sequence[str] | None = None,
) -> tuple[list[Section], list[str]]:
    """Make the report of a search (when it exists) and of its comparisons, and store their
    figures and verdicts in each study for optuna-dashboard (same ids: replaced).

    `summaries` maps a comparison study's name to what `summarise` returned for it: such a
    comparison is not summarised again (a command that just computed its numbers passes
    them); every other linked comparison is summarised from its trials. `comparisons`
    names comparison studies to report on their own instead (no search: a lone `lsearch
    compare`, or `--study` naming a comparison); `search_study` is then not read."""
    if comparisons is not None:
        found = named_comparison_results(storage, comparisons, summaries)
        if not found:
            raise UserError(
                f"comparison '{comparisons[0]}' has no recorded results yet; run its "
                "`lsearch compare` command again to finish it"
            )
        _store_comparisons(found)
        results = [result for _, result in found]
        return comparison_only_sections(results), [v for r in results for v in r["verdicts"]]
    names = set(study_names(storage))
    found = comparison_results(storage, search_study, summaries) if search_study else []
    _store_comparisons(found)
    results = [result for _, result in found]
    if search_study is None or search_study not in names:
        return [], [v for result in results for v in result["verdicts"]]
    search = optuna.load_study(study_name=search_study, storage=storage)
    if not search.get_trials(deepcopy=False, states=FINISHED):
        return [], [v for result in results for v in result["verdicts"]]
    sections, verdicts = build_sections(search, results)
    save_to_dashboard(search, sections, verdict_note(search_study, verdicts))
    return sections, verdicts


def write_images(folder: Path, sections: Sequence[Section], image_format: str) -> list[Path]:
    """Each figure as a static image through plotly's exporter (kaleido), which needs a
    Chrome; a one-line user error says how to get both where they are missing."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise UserError(
            f"--format {image_format} needs plotly's image exporter: pip install kaleido, and a "
            "Chrome or Chromium (Debian: apt-get install chromium); the HTML report needs neither"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for section in sections:
        for graph_id, figure in section.figures:
            path = folder / f"{graph_id}.{image_format}"
            try:
                figure.write_image(
                    path, format=image_format, width=1000, height=figure.layout.height or 450
                )
            except Exception as exc:  # kaleido raises its own errors when no Chrome is found
                raise UserError(
                    f"--format {image_format}: plotly's exporter failed ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:200]}); it needs a Chrome or Chromium "
                    "(Debian: apt-get install chromium, or set BROWSER_PATH)"
                ) from None
            written.append(path)
    return written
