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

from lsearch.analysis.verdict import LABELS, in_points, metric_range
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


def bounds(metric: str) -> tuple[float, float | None]:
    """`lsearch.analysis.verdict.metric_range` in display units (accuracy and ECE in %).

    >>> bounds("test_acc"), bounds("val_ece"), bounds("test_nll")
    ((0.0, 100.0), (0.0, 100.0), (0.0, None))
    """
    (floor, ceiling), scale = metric_range(metric), _scale(metric)
    return (floor or 0.0) * scale, None if ceiling is None else ceiling * scale


def clip_interval(metric: str, low: float, high: float) -> tuple[float, float, str]:
    """A t interval (display units) clipped to the metric's range, and a note saying so
    (empty where nothing was clipped): a t interval is symmetric, so over few seeds near a
    bound it reaches values no run can have.

    >>> clip_interval("val_acc", 96.0, 101.5)
    (96.0, 100.0, 't interval [96.00, 101.50] clipped at 100: the metric cannot go beyond')
    >>> clip_interval("test_ece", 1.0, 2.0)
    (1.0, 2.0, '')
    """
    floor, ceiling = bounds(metric)
    new_low = max(low, floor)
    new_high = high if ceiling is None else min(high, ceiling)
    if (new_low, new_high) == (low, high):
        return low, high, ""
    at = ", ".join(f"{b:g}" for b, hit in ((floor, new_low != low), (ceiling, new_high != high))
                   if hit)  # fmt: skip
    note = f"t interval [{low:.2f}, {high:.2f}] clipped at {at}: the metric cannot go beyond"
    return new_low, new_high, note


def _clip_marks(
    positions: Sequence[Any], ends: Sequence[float], notes: Sequence[str], vertical: bool
) -> go.Scatter:
    """A bar across each interval end cut at a bound, with the note as its hover text."""
    symbol = "line-ew" if vertical else "line-ns"
    xy = {"x": positions, "y": ends} if vertical else {"x": ends, "y": positions}
    return go.Scatter(
        **xy, mode="markers", name="interval clipped at the metric's bound (hover)",
        marker={"symbol": symbol, "size": 16, "line": {"width": 3, "color": "#d62728"}},
        hovertext=notes, hoverinfo="text",
    )  # fmt: skip


def _errors(
    metric: str, means: Sequence[float], halves: Sequence[tuple[float, float] | None]
) -> tuple[dict[str, Any], list[str], list[tuple[int, float]]]:
    """Error bars (display units) for `means` with t intervals `halves` (low, high, or None)
    clipped to the metric's range; each point's note, and the (index, clipped end) pairs."""
    plus, minus, notes, cut = [], [], [], []
    for i, (mean, interval) in enumerate(zip(means, halves, strict=True)):
        if interval is None:
            plus.append(0.0)
            minus.append(0.0)
            notes.append("")
            continue
        low, high, note = clip_interval(metric, *interval)
        plus.append(high - mean)
        minus.append(mean - low)
        notes.append(note)
        cut += [(i, end) for end, raw in ((low, interval[0]), (high, interval[1])) if end != raw]
    bars = {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
            "visible": True}  # fmt: skip
    return bars, notes, cut


def _padded_range(metric: str, values: Sequence[float]) -> list[float]:
    floor, ceiling = bounds(metric)
    low, high = min(values), max(values)
    pad = max(0.08 * (high - low), 0.5 if in_points(metric) else 0.005)
    top = high + pad if ceiling is None else min(high + pad, ceiling + pad / 2)
    return [max(low - pad, floor - pad / 2), top]


def epsilon_scatter(trials: Sequence[FrozenTrial], metric: str) -> go.Figure:
    """ε against a validation metric, scaled to the complete trials: every seed a small
    point, each complete trial's mean with its 95 % t interval over seeds (clipped at the
    metric's bounds, with a mark and a hover note where it was); pruned trials as light red
    crosses at their mean (at the best epoch before they were stopped), without intervals,
    and those outside the complete trials' range counted in a note."""
    scale = _scale(metric)
    fig = go.Figure()
    complete = [t for t in trials if t.state == TrialState.COMPLETE
                and f"{metric}_per_seed" in t.user_attrs]  # fmt: skip
    pruned = [t for t in trials if t.state == TrialState.PRUNED
              and f"{metric}_per_seed" in t.user_attrs]  # fmt: skip
    xs, seeds_x, seeds_y, means, intervals, texts = [], [], [], [], [], []
    for trial in complete:
        eps = trial.user_attrs[CONFIG_ATTR]["label_smoothing"]
        values = [v * scale for v in trial.user_attrs[f"{metric}_per_seed"]]
        mean, half = _mean_ci(values)
        xs.append(eps)
        means.append(mean)
        intervals.append((mean - half, mean + half) if half else None)
        texts.append(f"trial {trial.number}")
        seeds_x += [eps] * len(values)
        seeds_y += values
    bars, notes, cut = _errors(metric, means, intervals)
    fig.add_trace(
        go.Scatter(
            x=seeds_x, y=seeds_y, mode="markers", name="complete: one seed",
            marker={"color": COMPLETE_COLOR, "size": 4, "opacity": 0.35}, hoverinfo="skip",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=xs, y=means, mode="markers", name="complete: mean ± 95 % t interval",
            hovertext=[f"{t}: {m:.2f}" + (f"; {n}" if n else "")
                       for t, m, n in zip(texts, means, notes, strict=True)],
            hoverinfo="text", error_y={**bars, "thickness": 1},
            marker={"color": COMPLETE_COLOR, "size": 9},
        )
    )  # fmt: skip
    if cut:
        fig.add_trace(
            _clip_marks([xs[i] for i, _ in cut], [e for _, e in cut],
                        [notes[i] for i, _ in cut], vertical=True)
        )  # fmt: skip
    pruned_means = [scale * statistics.fmean(t.user_attrs[f"{metric}_per_seed"]) for t in pruned]
    fig.add_trace(
        go.Scatter(
            x=[t.user_attrs[CONFIG_ATTR]["label_smoothing"] for t in pruned], y=pruned_means,
            mode="markers", name="pruned: mean at its best epoch (no interval)",
            marker={**PRUNED_MARKER, "size": 7, "opacity": 0.4},
            hovertext=[f"trial {t.number} (pruned): {m:.2f}"
                       for t, m in zip(pruned, pruned_means, strict=True)],
            hoverinfo="text",
        )
    )  # fmt: skip
    fig = _layout(fig, f"ε against {LABELS[metric]}", "label smoothing ε", _unit(metric))
    if seeds_y:
        shown = seeds_y + [v for interval in intervals if interval for v in interval]
        _fit_axis(fig, metric, shown, pruned_means)
    return fig


def _fit_axis(fig: go.Figure, metric: str, shown: list[float], others: list[float]) -> None:
    """Scale the y axis to `shown` (clipped to the metric's bounds, padded) and say in the
    title how many of `others` (pruned trials) it leaves out."""
    low, high, _ = clip_interval(metric, min(shown), max(shown))
    span = _padded_range(metric, [low, high])
    fig.update_yaxes(range=span)
    outside = sum(not span[0] <= value <= span[1] for value in others)
    if outside:
        fig.update_layout(title=f"{fig.layout.title.text} (axis fits the complete trials; "
                          f"{outside} pruned trials lie outside it)")  # fmt: skip


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
    cells = [c for c in result["cells"] if c["metrics"].get(metric)]  # a failed cell has none
    labels = [c["label"] for c in cells]
    summaries = [c["metrics"][metric] for c in cells]
    means = [scale * s["mean"] for s in summaries]
    intervals = [(scale * s["ci"]["low"], scale * s["ci"]["high"]) if s["ci"] else None
                 for s in summaries]  # fmt: skip
    bars, notes, cut = _errors(metric, means, intervals)
    fig.add_trace(
        go.Scatter(
            x=means, y=labels, mode="markers", name="mean ± 95 % t interval",
            marker={"size": 10, "color": COMPLETE_COLOR}, error_x=bars,
            hovertext=[f"{label}: {m:.4g}" + (f"; {n}" if n else "")
                       for label, m, n in zip(labels, means, notes, strict=True)],
            hoverinfo="text",
        )
    )  # fmt: skip
    if cut:
        fig.add_trace(
            _clip_marks([labels[i] for i, _ in cut], [e for _, e in cut],
                        [notes[i] for i, _ in cut], vertical=False)
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
