"""The report's sections: the answer first, the study at a glance, the search's views, each
comparison, and the reliability diagrams; each a heading, a sentence on what it shows, its
figures and its tables. The page and the dashboard are made from them (`html_report`).
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from lsearch.analysis.verdict import LABELS, cell_rows, pair_rows, show_level
from lsearch.errors import UserError
from lsearch.outputs import answer
from lsearch.outputs.figures import (
    cell_means,
    epsilon_epochs_map,
    epsilon_scatter,
    forest,
    learning_curves,
    parallel_coordinates,
    reliability_diagram,
)
from lsearch.store.catalog import (
    CONFIG_ATTR,
    DEVICE_ATTR,
    FINISHED,
    PRODUCED_BY_ATTR,
    SPEC_ATTR,
    TEST_COUNT_ATTR,
    TRAIN_SECONDS_ATTR,
)


@dataclass
class Section:
    """One part of the report: a heading, a sentence on what it shows, figures, tables."""

    title: str
    text: str = ""
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)  # (stable id, figure)
    tables: list[str] = field(default_factory=list)  # HTML
    below: list[str] = field(default_factory=list)  # HTML after the figures


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def answer_section(comparisons: Sequence[dict[str, Any]]) -> Section:
    """The answer first, as a picture: per comparison a forest of its effects (the 2 × 2
    effects, or its pairwise differences) with their t and anytime-valid intervals, and for a
    race its intervals against the number of seeds; below, one line per decision, every
    other verdict folded away."""
    section = Section(
        "The answer",
        "Test-set numbers (data no search or epoch choice saw): differences with their 95 % "
        "intervals over seeds. Blue: the ordinary t interval, valid for a number of seeds "
        "fixed in advance; orange, where computed: the anytime-valid interval, valid however "
        "often seeds were added and looked at. An interval that crosses the dashed zero line "
        "shows no difference.",
    )
    lines, rest = [], []
    for result in comparisons:
        digest = answer.digest(result["study"])
        forest_figure = answer.answer_forest(result)
        if forest_figure is not None:
            section.figures.append((f"lsearch-answer-{digest}", forest_figure))
        race = answer.race_paths(result)
        if race is not None:
            section.figures.append((f"lsearch-race-{digest}", race))
        decided = answer.decision_lines(result)
        lines += decided
        rest += [v for v in result["verdicts"] if v not in decided]
        if not any(result["comparisons"][m] for m in result["metrics"]):
            # A one-cell comparison (lsearch evaluate): its test numbers are the answer.
            cell = result["cells"][0]
            shown = [
                f"{LABELS[m]} {show_level(m, cell['metrics'][m])}"
                for m in result["metrics"]
                if cell["metrics"].get(m)
            ]
            lines.append(f"{result['study']} ({cell['label']}): " + "; ".join(shown))
    section.below.append(answer.answer_html(lines, rest))
    return section


def glance(study: optuna.Study, spec: dict[str, Any] | None) -> Section:
    """The study at a glance: its trials, time, devices and provenance, the study file and
    the best trial."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    seconds = sum(t.user_attrs.get(TRAIN_SECONDS_ATTR, 0.0) for t in trials)
    devices = sorted({t.user_attrs[DEVICE_ATTR] for t in trials if DEVICE_ATTR in t.user_attrs})
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    rows = [
        ["trials", ", ".join(f"{n} {s}" for s, n in counts.items() if n)],
        ["wall time (first trial's start to last trial's end)", f"{wall:.1f} s"],
        ["training time (sum over trials)", f"{seconds:.1f} s"],
        ["devices", ", ".join(devices) or "-"],
        ["directions", ", ".join(d.name.lower() for d in study.directions)],
    ]
    produced = study.user_attrs.get(PRODUCED_BY_ATTR)
    if produced:
        rows.append(["made by", ", ".join(f"{k} {v}" for k, v in produced.items())])
    tested = study.user_attrs.get(TEST_COUNT_ATTR)
    rows.append(["configurations evaluated on the test set", tested or 0])
    section = Section("The study at a glance", tables=[_table(rows, ["", ""])])
    if spec:
        keys = [
            [f"{table}.{key}", _fmt(value)]
            for table, values in spec.items()
            if isinstance(values, dict)
            for key, value in values.items()
        ]
        section.tables.append(
            "<details><summary>The study file (every key)</summary>"
            + _table(keys, ["study file key", "value"])
            + "</details>"
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete and len(study.directions) == 1:
        best = study.best_trial
        attrs = best.user_attrs
        rows = [[k, _fmt(v)] for k, v in attrs["config"].items()]
        for key in ("val_acc_per_seed", "val_ece_per_seed", "val_nll_per_seed", "seeds",
                    "chosen_epoch", "epochs_run"):  # fmt: skip
            if key in attrs:
                rows.append([key, _fmt(attrs[key])])
        section.tables.append(_table(rows, [f"best trial {best.number}", "value"]))
    return section


def build_sections(
    study: optuna.Study, comparisons: Sequence[dict[str, Any]]
) -> tuple[list[Section], list[str]]:
    """The report's sections in order, and the verdict lines that lead it."""
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    trials = [t for t in trials if "config" in t.user_attrs and "val_acc" in t.user_attrs]
    if not trials:
        raise UserError(
            f"study '{study.study_name}' has no finished trial to report yet; run it first"
        )
    sections = []
    verdicts = [v for result in comparisons for v in result["verdicts"]]
    if comparisons:
        sections.append(answer_section(comparisons))
    sections.append(glance(study, study.user_attrs.get(SPEC_ATTR)))
    multi = len(study.directions) > 1
    section = Section(
        "Label smoothing against accuracy and calibration",
        "Validation metrics at each trial's chosen epoch (optimistic: the epoch was chosen on "
        "them). Small points are single seeds; large points are a complete trial's mean with "
        "its 95 % t interval over seeds, cut at the metric's bounds (0 and 100 %) where it "
        "would cross them, with a red bar there (hover it for the whole t interval). Light "
        "red crosses are pruned trials' means at their best epoch before the pruner stopped "
        "them, without intervals; the axis fits the complete trials, so pruned trials far "
        "below them are left off and counted in the title.",
    )
    section.figures += [
        ("lsearch-epsilon-val-acc", epsilon_scatter(trials, "val_acc")),
        ("lsearch-epsilon-val-ece", epsilon_scatter(trials, "val_ece")),
    ]
    sections.append(section)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    sign = 1 if multi or study.directions[0].name == "MAXIMIZE" else -1
    best = sorted(complete, key=lambda t: -sign * t.values[0])[:3] if not multi else []
    sections.append(
        Section(
            "Learning curves",
            "Mean validation accuracy over seeds after each epoch, for every trial; the "
            "three best complete trials are drawn thick with their seeds' range as a band.",
            [("lsearch-learning-curves", learning_curves(trials, best))],
        )
    )
    sections.append(search_views(study, trials))
    sections += [comparison_section(result) for result in comparisons]
    best_config = None
    if not multi and complete:
        best_config = study.best_trial.user_attrs.get(CONFIG_ATTR)
    sections.append(reliability_section(comparisons, best_config, study.study_name))
    return sections, verdicts


def comparison_only_sections(comparisons: Sequence[dict[str, Any]]) -> list[Section]:
    """The report of comparisons without their search: the answer, each comparison, and
    the reliability diagrams of their cells."""
    name = comparisons[0]["study"] if len(comparisons) == 1 else "these comparisons"
    return [
        answer_section(comparisons),
        *(comparison_section(result) for result in comparisons),
        reliability_section(comparisons, None, name),
    ]


def search_views(study: optuna.Study, trials: Sequence[FrozenTrial]) -> Section:
    """Optuna's views of the search (history and importances, or the Pareto front) and
    lsearch's own that include pruned trials (parallel coordinates, the ε × epochs map)."""
    from optuna.visualization import (
        plot_optimization_history,
        plot_param_importances,
        plot_pareto_front,
    )

    views = Section(
        "The search",
        "Optimisation history and parameter importances are Optuna's (complete trials "
        "only; importances need two or more complete trials and a searched parameter). The "
        "parallel coordinates and the ε × epochs map are lsearch's: they include pruned "
        "trials, which Optuna's views leave out.",
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(study.directions) > 1:
        views.figures.append(
            ("lsearch-pareto-front", plot_pareto_front(study, target_names=["val acc", "val ECE"]))
        )
        front = sorted(study.best_trials, key=lambda t: t.number)
        views.tables.append(
            _table(
                [[t.number, _fmt(t.values), _fmt(t.user_attrs[CONFIG_ATTR])] for t in front],
                ["Pareto-optimal trial", "val acc, val ECE", "configuration"],
            )
        )
    else:
        views.figures.append(("lsearch-history", plot_optimization_history(study)))
        if (
            len(complete) >= 2
            and study.user_attrs.get(SPEC_ATTR)
            and any(t.params for t in complete)
        ):
            views.figures.append(("lsearch-importances", plot_param_importances(study)))
    views.figures += [
        ("lsearch-parallel", parallel_coordinates(trials)),
        ("lsearch-epsilon-epochs", epsilon_epochs_map(trials)),
    ]
    return views


def comparison_section(result: dict[str, Any]) -> Section:
    """A comparison's cells and paired differences per metric, with its tables."""
    digest = hashlib.sha1(result["study"].encode()).hexdigest()[:8]
    part = Section(
        f"Comparison: {result['study']}",
        f"Every cell trained on seeds {_fmt(result['seeds'])}; test metrics on the held-out "
        "test set. Differences are paired by seed (first − second); an interval that "
        "crosses the dashed zero line is not distinguishable from seed noise.",
    )
    for metric in result["metrics"]:
        part.figures.append((f"lsearch-cells-{digest}-{metric}", cell_means(result, metric)))
        if any(p["n"] and p.get("ci") for p in result["comparisons"][metric]):
            part.figures.append((f"lsearch-forest-{digest}-{metric}", forest(result, metric)))
    # The figures first; the numbers below them, the long table of pairs folded.
    part.below.append(_table(*reversed(cell_rows(result))))
    header, rows = pair_rows(result)
    if rows:
        part.below.append(
            f"<details><summary>Every paired difference ({len(rows)})</summary>"
            + _table(rows, header)
            + "</details>"
        )
    return part


def reliability_section(
    comparisons: Sequence[dict[str, Any]], best_config: dict[str, Any] | None, study_name: str
) -> Section:
    """Reliability diagrams from the stored test reliability data (no retraining). With a
    search's best configuration: it, ε = 0 where a comparison has that cell, and the best
    after temperature scaling; for a comparison alone: each of its cells."""
    section = Section(
        "Reliability diagrams",
        "Test-set accuracy against confidence, 15 equal-width bins, seeds pooled; from the "
        "reliability data <code>lsearch compare</code> and <code>lsearch evaluate</code> stored.",
    )
    curves: list[tuple[str, dict[str, list[Any]]]] = []
    cells = [cell for result in comparisons for cell in result["cells"] if cell.get("reliability")]
    if best_config is None:
        curves = [(cell["label"], cell["reliability"]["before"]) for cell in cells[:6]]
    else:
        best = [cell for cell in cells if cell["config"] == best_config]
        plain = [cell for cell in cells if cell["config"]["label_smoothing"] == 0]
        if best:
            eps = best_config["label_smoothing"]
            curves.append((f"best configuration (ε {eps:.3g})", best[0]["reliability"]["before"]))
            curves.append(("best, temperature-scaled", best[0]["reliability"]["after"]))
        if plain and best:
            curves.append((f"ε = 0 ({plain[0]['label']})", plain[0]["reliability"]["before"]))
    if not curves:
        section.text = (
            "No test-set data for the best configuration yet. `lsearch evaluate --study "
            f'"{html.escape(study_name)}"` evaluates it on the test set, and `lsearch compare '
            "--grid label_smoothing=0,&lt;best ε&gt; --from-best` compares it with ε = 0; run "
            "either, then make this report again."
        )
        return section
    section.figures.append(("lsearch-reliability", reliability_diagram(curves)))
    return section
