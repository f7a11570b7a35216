"""`lsearch report`: a search and its comparisons as plotly figures, one self-contained HTML
file (plotly.js embedded: it opens offline), and the same figures and verdict stored in the
studies for optuna-dashboard.

Where Optuna's `optuna.visualization` draws a view with what the report needs (optimisation
history, parameter importances, the Pareto front), the report uses it. Optuna's contour,
slice and parallel-coordinate views leave out pruned trials (most of a pruned search) and
fixed parameters, so lsearch draws its own there, and says what each shows.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from scipy import stats as st

from lsearch.analysis.verdict import LABELS, in_points, show_level
from lsearch.errors import UserError
from lsearch.store.catalog import FINISHED

PRUNED_MARKER = {
    "symbol": "x-thin", "line": {"width": 2, "color": "#d62728"}, "size": 9, "color": "#d62728",
}  # fmt: skip
COMPLETE_COLOR = "#1f77b4"
TEMPLATE = "plotly_white"


@dataclass
class Section:
    """One part of the report: a heading, a sentence on what it shows, figures, tables."""

    title: str
    text: str = ""
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)  # (stable id, figure)
    tables: list[str] = field(default_factory=list)  # HTML


def _mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t interval (0 for fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    half = st.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(half)


def _scale(metric: str) -> float:
    return 100.0 if in_points(metric) else 1.0


def _unit(metric: str) -> str:
    return f"{LABELS.get(metric, metric)} (%)" if in_points(metric) else LABELS.get(metric, metric)


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title, xaxis_title=x, yaxis_title=y, template=TEMPLATE, height=420,
        legend={"orientation": "h", "y": -0.2}, margin={"t": 60, "b": 80},
    )  # fmt: skip
    return fig


# ----------------------------------------------------------------------------- search views


def epsilon_scatter(trials: Sequence[FrozenTrial], metric: str) -> go.Figure:
    """ε against a validation metric: every seed a small point, each trial's mean with its
    95 % interval over seeds; pruned trials in red crosses (their value at the best epoch
    before they were stopped)."""
    scale = _scale(metric)
    fig = go.Figure()
    for state, name in ((TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned")):
        chosen = [t for t in trials if t.state == state and f"{metric}_per_seed" in t.user_attrs]
        xs, seeds_x, seeds_y, means, errors, texts = [], [], [], [], [], []
        for trial in chosen:
            eps = trial.user_attrs["config"]["label_smoothing"]
            values = [v * scale for v in trial.user_attrs[f"{metric}_per_seed"]]
            mean, half = _mean_ci(values)
            xs.append(eps)
            means.append(mean)
            errors.append(half)
            texts.append(f"trial {trial.number}")
            seeds_x += [eps] * len(values)
            seeds_y += values
        marker = PRUNED_MARKER if state == TrialState.PRUNED else {"color": COMPLETE_COLOR}
        fig.add_trace(
            go.Scatter(
                x=seeds_x, y=seeds_y, mode="markers", name=f"{name}: one seed",
                marker={**marker, "size": 4, "opacity": 0.35}, hoverinfo="skip",
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=xs, y=means, mode="markers", name=f"{name}: mean ± 95 % CI", text=texts,
                error_y={"type": "data", "array": errors, "visible": True, "thickness": 1},
                marker={**marker, "size": 9},
            )
        )  # fmt: skip
    return _layout(fig, f"ε against {LABELS[metric]}", "label smoothing ε", _unit(metric))


def learning_curves(trials: Sequence[FrozenTrial], best: Sequence[FrozenTrial]) -> go.Figure:
    """Mean validation accuracy over seeds per epoch for every trial (pruned ones end in a
    red cross at the epoch they were stopped), and the seed band (min to max over seeds) of
    the best trials."""
    fig = go.Figure()
    for trial in trials:
        curves = trial.user_attrs.get("curve_val_acc")
        if not curves:
            continue
        mean = [100 * statistics.fmean(epoch) for epoch in zip(*curves, strict=True)]
        epochs = list(range(1, len(mean) + 1))
        pruned = trial.state == TrialState.PRUNED
        fig.add_trace(
            go.Scatter(
                x=epochs, y=mean, mode="lines", showlegend=False, hoverinfo="text",
                text=f"trial {trial.number} ({trial.state.name.lower()})",
                line={"width": 1, "color": "#d62728" if pruned else "#9ab"},
                opacity=0.5,
            )
        )  # fmt: skip
        if pruned:
            fig.add_trace(
                go.Scatter(
                    x=[epochs[-1]], y=[mean[-1]], mode="markers", marker=PRUNED_MARKER,
                    showlegend=False, hoverinfo="text", text=f"trial {trial.number} pruned",
                )
            )  # fmt: skip
    palette = ["#1f77b4", "#2ca02c", "#9467bd"]
    for color, trial in zip(palette, best, strict=False):
        curves = trial.user_attrs["curve_val_acc"]
        per_epoch = list(zip(*curves, strict=True))
        epochs = list(range(1, len(per_epoch) + 1))
        low = [100 * min(e) for e in per_epoch]
        high = [100 * max(e) for e in per_epoch]
        mean = [100 * statistics.fmean(e) for e in per_epoch]
        fig.add_trace(
            go.Scatter(
                x=epochs + epochs[::-1], y=high + low[::-1], fill="toself", line={"width": 0},
                fillcolor=color, opacity=0.2, showlegend=False, hoverinfo="skip",
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=epochs, y=mean, mode="lines", line={"width": 3, "color": color},
                name=f"trial {trial.number}: mean, band = seeds' min to max",
            )
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=[None], y=[None], mode="markers", marker=PRUNED_MARKER, name="pruned here")
    )
    return _layout(fig, "Learning curves", "epoch", "mean validation accuracy (%)")


def parallel_coordinates(trials: Sequence[FrozenTrial]) -> go.Figure:
    """Every finished trial (pruned included) across the four parameters and its validation
    accuracy; the last axis tells pruned (1) from complete (0)."""
    config = [t.user_attrs["config"] for t in trials]
    dimensions = [
        {"label": "ε", "values": [c["label_smoothing"] for c in config]},
        {"label": "epochs", "values": [c["epochs"] for c in config]},
        {"label": "log10 lr", "values": [math.log10(c["lr"]) for c in config]},
        {"label": "trainable layers", "values": [c["trainable_layers"] for c in config]},
        {"label": "val acc (%)", "values": [100 * t.user_attrs["val_acc"] for t in trials]},
        {
            "label": "pruned",
            "values": [int(t.state == TrialState.PRUNED) for t in trials],
            "tickvals": [0, 1],
        },
    ]
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": [100 * t.user_attrs["val_acc"] for t in trials],
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": "val acc (%)"},
            },
            dimensions=dimensions,
        )
    )
    fig.update_layout(title="Parallel coordinates (pruned trials included)", template=TEMPLATE)
    return fig


def binned_means(
    xs: Sequence[float], ys: Sequence[float], values: Sequence[float], bins: int = 8
) -> tuple[list[float], list[float], list[list[float | None]]]:
    """Means of `values` over an equal-width `bins` × `bins` grid of (x, y): the cell edges
    and the means, None where no point fell (drawn empty, never as a zero)."""

    def edges(points: Sequence[float]) -> list[float]:
        low, high = min(points), max(points)
        high = high if high > low else low + 1
        return [low + (high - low) * i / bins for i in range(bins + 1)]

    def index(value: float, cut: list[float]) -> int:
        return min(bins - 1, int((value - cut[0]) / (cut[-1] - cut[0]) * bins))

    x_edges, y_edges = edges(xs), edges(ys)
    sums = [[0.0] * bins for _ in range(bins)]
    counts = [[0] * bins for _ in range(bins)]
    for x, y, v in zip(xs, ys, values, strict=True):
        row, col = index(y, y_edges), index(x, x_edges)
        sums[row][col] += v
        counts[row][col] += 1
    z = [[s / n if n else None for s, n in zip(srow, nrow, strict=True)]
         for srow, nrow in zip(sums, counts, strict=True)]  # fmt: skip
    return x_edges, y_edges, z


def epsilon_epochs_map(trials: Sequence[FrozenTrial]) -> go.Figure:
    """Mean validation accuracy of complete trials over an 8 × 8 grid of ε × epochs (empty
    cells left blank), with every finished trial on top (pruned ones as red crosses)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    fig = go.Figure()
    if complete:
        x_edges, y_edges, z = binned_means(
            [t.user_attrs["config"]["label_smoothing"] for t in complete],
            [t.user_attrs["config"]["epochs"] for t in complete],
            [100 * t.user_attrs["val_acc"] for t in complete],
        )
        fig.add_trace(
            go.Heatmap(
                x=x_edges, y=y_edges, z=z, colorscale="Viridis", hoverongaps=False,
                colorbar={"title": "mean val acc (%)"},
            )
        )  # fmt: skip
    for state, marker in ((TrialState.COMPLETE, {"color": "white", "size": 6,
                           "line": {"color": "black", "width": 1}}),
                          (TrialState.PRUNED, PRUNED_MARKER)):  # fmt: skip
        chosen = [t for t in trials if t.state == state]
        fig.add_trace(
            go.Scatter(
                x=[t.user_attrs["config"]["label_smoothing"] for t in chosen],
                y=[t.user_attrs["config"]["epochs"] for t in chosen],
                mode="markers", marker=marker, name=state.name.lower(),
                text=[f"trial {t.number}" for t in chosen],
            )
        )  # fmt: skip
    return _layout(fig, "ε × epochs: mean validation accuracy", "label smoothing ε", "epochs")


# ----------------------------------------------------------------------------- comparisons


def cell_means(result: dict[str, Any], metric: str) -> go.Figure:
    """Each cell's mean with its 95 % interval over seeds, and every seed's value."""
    scale = _scale(metric)
    fig = go.Figure()
    labels = [c["label"] for c in result["cells"]]
    summaries = [c["metrics"][metric] for c in result["cells"]]
    fig.add_trace(
        go.Scatter(
            x=[scale * s["mean"] for s in summaries], y=labels, mode="markers",
            name="mean ± 95 % CI", marker={"size": 10, "color": COMPLETE_COLOR},
            error_x={
                "type": "data", "symmetric": False,
                "array": [scale * (s["ci"]["high"] - s["mean"]) if s["ci"] else 0
                          for s in summaries],
                "arrayminus": [scale * (s["mean"] - s["ci"]["low"]) if s["ci"] else 0
                               for s in summaries],
            },
        )
    )  # fmt: skip
    xs = [scale * v for s in summaries for v in s["per_seed"]]
    ys = [label for label, s in zip(labels, summaries, strict=True) for _ in s["per_seed"]]
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="markers", name="one seed",
            marker={"size": 5, "opacity": 0.4, "color": "#555"},
        )
    )  # fmt: skip
    fig = _layout(fig, f"{LABELS[metric]} per cell", _unit(metric), "")
    fig.update_yaxes(autorange="reversed")
    return fig


def forest(result: dict[str, Any], metric: str) -> go.Figure:
    """Paired differences (first − second, by seed) with their 95 % t intervals, and a line
    at zero: an interval that crosses it is not distinguishable from seed noise."""
    scale = _scale(metric)
    pairs = [p for p in result["comparisons"][metric] if p["n"] and p.get("ci")]
    cells = result["cells"]
    labels = [f"{cells[p['first']]['label']} − {cells[p['second']]['label']}" for p in pairs]
    fig = go.Figure(
        go.Scatter(
            x=[scale * p["mean"] for p in pairs], y=labels, mode="markers",
            marker={"size": 10, "color": COMPLETE_COLOR}, name="difference ± 95 % CI",
            error_x={
                "type": "data", "symmetric": False,
                "array": [scale * (p["ci"]["high"] - p["mean"]) for p in pairs],
                "arrayminus": [scale * (p["mean"] - p["ci"]["low"]) for p in pairs],
            },
        )
    )  # fmt: skip
    fig.add_vline(x=0, line={"color": "#d62728", "dash": "dash"})
    unit = " (pp)" if in_points(metric) else ""
    fig = _layout(fig, f"{LABELS[metric]}: paired differences", f"difference{unit}", "")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=max(300, 70 * len(pairs) + 150))
    return fig


def reliability_diagram(curves: Sequence[tuple[str, dict[str, list[Any]]]]) -> go.Figure:
    """Accuracy against confidence per bin (15 equal-width bins over [0, 1]; the diagonal is
    perfect calibration), with each curve's predictions per bin as bars on the right axis."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
            line={"dash": "dot", "color": "#888"},
        )
    )  # fmt: skip
    centers = [(b + 0.5) / 15 for b in range(15)]
    for label, bins in curves:
        points = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"], strict=True)
                  if c is not None]  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[c for c, _ in points], y=[a for _, a in points], mode="lines+markers",
                name=label,
            )
        )  # fmt: skip
        fig.add_trace(
            go.Bar(
                x=centers, y=bins["counts"], name=f"{label}: predictions per bin",
                yaxis="y2", opacity=0.25, width=1 / 15,
            )
        )  # fmt: skip
    fig = _layout(fig, "Reliability diagram (test set, seeds pooled)", "confidence", "accuracy")
    fig.update_layout(
        yaxis={"range": [0, 1]},
        xaxis={"range": [0, 1]},
        yaxis2={"overlaying": "y", "side": "right", "title": "predictions per bin",
                "showgrid": False},
        barmode="overlay",
        height=480,
    )  # fmt: skip
    return fig


# ----------------------------------------------------------------------------- assembling


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


HEADLINE_METRICS = ("test_acc", "test_ece")


def answer_section(comparisons: Sequence[dict[str, Any]]) -> Section:
    """The verdicts first: for each comparison, the 2 × 2 decomposition (when there is one)
    and the test accuracy and ECE comparisons; every other verdict folded below."""
    items, rest = [], []
    for result in comparisons:
        for metric in result["metrics"]:
            lines = [pair["verdict"] for pair in result["comparisons"][metric]]
            if result.get("factorial"):
                lines.insert(0, result["factorial"][metric]["verdict"])
            (items if metric in HEADLINE_METRICS else rest).extend(lines)
        if not any(result["comparisons"][m] for m in result["metrics"]):
            # A one-cell comparison (lsearch evaluate): its test numbers are the answer.
            cell = result["cells"][0]
            shown = [
                f"{LABELS[m]} {show_level(m, cell['metrics'][m])}"
                for m in result["metrics"]
                if cell["metrics"].get(m)
            ]
            items.append(f"{result['study']} ({cell['label']}): " + "; ".join(shown))
    body = "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in items) + "</ul>"
    if rest:
        body += (
            f"<details><summary>All other verdicts ({len(rest)})</summary><ul>"
            + "".join(f"<li>{html.escape(v)}</li>" for v in rest)
            + "</ul></details>"
        )
    return Section(
        "The answer",
        "Test-set numbers (data no search or epoch choice saw), as mean differences with 95 % "
        "intervals over seeds; p-values are Holm-adjusted within each metric.",
        tables=[body],
    )


def glance(study: optuna.Study, spec: dict[str, Any] | None) -> Section:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    seconds = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    devices = sorted({t.user_attrs["device"] for t in trials if "device" in t.user_attrs})
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
    produced = study.user_attrs.get("lsearch_produced_by")
    if produced:
        rows.append(["made by", ", ".join(f"{k} {v}" for k, v in produced.items())])
    tested = study.user_attrs.get("lsearch_test_configurations")
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
    from optuna.visualization import (
        plot_optimization_history,
        plot_param_importances,
        plot_pareto_front,
    )

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
    sections.append(glance(study, study.user_attrs.get("lsearch_spec")))
    multi = len(study.directions) > 1
    section = Section(
        "Label smoothing against accuracy and calibration",
        "Validation metrics at each trial's chosen epoch (optimistic: the epoch was chosen on "
        "them). Small points are single seeds; large points are a trial's mean with its 95 % "
        "t interval over seeds; red crosses are pruned trials, at their best epoch before "
        "the pruner stopped them.",
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
    views = Section(
        "The search",
        "Optimisation history and parameter importances are Optuna's (complete trials "
        "only; importances need two or more complete trials and a searched parameter). The "
        "parallel coordinates and the ε × epochs map are lsearch's: they include pruned "
        "trials, which Optuna's views leave out.",
    )
    if multi:
        views.figures.append(
            ("lsearch-pareto-front", plot_pareto_front(study, target_names=["val acc", "val ECE"]))
        )
        front = sorted(study.best_trials, key=lambda t: t.number)
        views.tables.append(
            _table(
                [[t.number, _fmt(t.values), _fmt(t.user_attrs["config"])] for t in front],
                ["Pareto-optimal trial", "val acc, val ECE", "configuration"],
            )
        )
    else:
        views.figures.append(("lsearch-history", plot_optimization_history(study)))
        if (
            len(complete) >= 2
            and study.user_attrs.get("lsearch_spec")
            and any(t.params for t in complete)
        ):
            views.figures.append(("lsearch-importances", plot_param_importances(study)))
    views.figures += [
        ("lsearch-parallel", parallel_coordinates(trials)),
        ("lsearch-epsilon-epochs", epsilon_epochs_map(trials)),
    ]
    sections.append(views)
    sections += [comparison_section(result) for result in comparisons]
    best_config = None
    if not multi and complete:
        best_config = study.best_trial.user_attrs.get("config")
    sections.append(reliability_section(comparisons, best_config, study.study_name))
    return sections, verdicts


def comparison_section(result: dict[str, Any]) -> Section:
    """A comparison's cells and paired differences per metric, with its tables."""
    from lsearch.analysis.verdict import cell_rows, pair_rows

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
    part.tables.append(_table(*reversed(cell_rows(result))))
    header, rows = pair_rows(result)
    if rows:
        part.tables.append(_table(rows, header))
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


def render_html(study: optuna.Study, sections: Sequence[Section]) -> str:
    from plotly.offline import get_plotlyjs

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    status = (
        f'<p class="status">This study is still running ({len(running)} trials running or '
        "waiting): the report shows what was finished when it was made.</p>"
        if running
        else ""
    )
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
    made = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return PAGE.format(
        title=html.escape(f"lsearch report: {study.study_name}"),
        subtitle=f"Made {made} from the study in its storage.",
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
    storage: optuna.storages.BaseStorage, search_study: str
) -> list[tuple[optuna.Study, dict[str, Any]]]:
    """Every comparison of a search with its numbers, recomputed from its trials."""
    from lsearch.comparison.compare import linked_comparisons, summarise

    return [(study, summarise(request, study)) for study, request in linked_comparisons(
        storage, search_study)]  # fmt: skip


def verdict_note(title: str, verdicts: Sequence[str], extra: str = "") -> str:
    lines = [f"# {title}", "", "Made by lsearch. Numbers with 95 % intervals over seeds.", ""]
    lines += [f"- {v}" for v in verdicts] or ["No comparison yet: run `lsearch compare`."]
    return "\n".join(lines) + ("\n\n" + extra if extra else "") + "\n"


def publish(
    storage: optuna.storages.BaseStorage, search_study: str | None
) -> tuple[list[Section], list[str]]:
    """Recompute the report of a search (when it exists) and of its comparisons, and store
    their figures and verdicts in each study for optuna-dashboard (same ids: replaced)."""
    from lsearch.analysis.verdict import to_markdown

    names = {s.study_name for s in optuna.get_all_study_summaries(storage, False)}
    results = comparison_results(storage, search_study) if search_study else []
    for study, result in results:
        save_to_dashboard(
            study,
            [comparison_section(result), reliability_section([result], None, study.study_name)],
            verdict_note(result["study"], result["verdicts"], to_markdown(result)),
        )
    if search_study is None or search_study not in names:
        return [], [v for _, result in results for v in result["verdicts"]]
    search = optuna.load_study(study_name=search_study, storage=storage)
    if not search.get_trials(deepcopy=False, states=FINISHED):
        return [], [v for _, result in results for v in result["verdicts"]]
    sections, verdicts = build_sections(search, [result for _, result in results])
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
