"""The report's figures: plotly views of a search's trials and of a comparison's cells.

Where Optuna's `optuna.visualization` draws a view with what the report needs, the report
uses it (see `lsearch.outputs.sections`); Optuna's contour, slice and parallel-coordinate
views leave out pruned trials (most of a pruned search) and fixed parameters, so these are
lsearch's own, and each docstring says what it shows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from scipy import stats as st

from lsearch.analysis.verdict import LABELS, in_points
from lsearch.store.catalog import CONFIG_ATTR, curve_attr

PRUNED_MARKER = {
    "symbol": "x-thin", "line": {"width": 2, "color": "#d62728"}, "size": 9, "color": "#d62728",
}  # fmt: skip
COMPLETE_COLOR = "#1f77b4"
TEMPLATE = "plotly_white"


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
            eps = trial.user_attrs[CONFIG_ATTR]["label_smoothing"]
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
        curves = trial.user_attrs.get(curve_attr("val_acc"))
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
        curves = trial.user_attrs[curve_attr("val_acc")]
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
    config = [t.user_attrs[CONFIG_ATTR] for t in trials]
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
            [t.user_attrs[CONFIG_ATTR]["label_smoothing"] for t in complete],
            [t.user_attrs[CONFIG_ATTR]["epochs"] for t in complete],
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
                x=[t.user_attrs[CONFIG_ATTR]["label_smoothing"] for t in chosen],
                y=[t.user_attrs[CONFIG_ATTR]["epochs"] for t in chosen],
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
