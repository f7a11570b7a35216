"""The report's answer as a picture: a forest plot of each comparison's effects, and, for a
race (seeds added until the comparisons are decided), each anytime-valid interval against
the number of seeds. Below them, one line per decision.

A comparison's summary (what `lsearch.comparison.summarise` returns) may carry a
"sequential" part (anytime-valid intervals and decisions) and a "race" part; a summary
without them is drawn from its ordinary t intervals alone. Numbers in a summary are in the
metric's units (fractions for accuracy and ECE); the figures show them in pp.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lsearch.analysis.answer import answer_metrics
from lsearch.analysis.verdict import LABELS, describe, in_points

T_COLOR = "#1f77b4"
ANYTIME_COLOR = "#ff7f0e"
MARGIN_COLOR = "#2ca02c"
EFFECTS = (("first_main", "main effect"), ("second_main", "main effect"), ("interaction", ""))
T_NAME = "ordinary 95 % t interval (valid at a fixed number of seeds)"
ANYTIME_NAME = "anytime-valid interval (valid however many seeds were looked at)"


def digest(name: str) -> str:
    """A short stable id part for a study name."""
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def _effect_label(result: dict[str, Any], factors: Sequence[str], key: str) -> str:
    if key == "interaction":
        return "interaction (the change that neither main effect explains)"
    factor = factors[0] if key == "first_main" else factors[1]
    low, high = result["grid"][factor][0], result["grid"][factor][-1]
    if factor == "epochs":
        return f"{low} → {high} epochs (main effect, averaged over the other factor)"
    change = f"{describe({factor: low})} → {describe({factor: high}).split(' ', 1)[-1]}"
    return f"{change} (main effect, averaged over the other factor)"


def forest_rows(result: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """The rows of the answer's forest for one metric: the 2 × 2 effects where the
    comparison is 2 × 2, else its pairwise comparisons; each with `label`, `mean`, `t_ci`,
    `ci` (anytime-valid, or None: unbounded), `anytime` (whether one was computed) and
    `decision` (a race's, else None)."""
    sequential = result.get("sequential") or {}
    # Only a race decides with the anytime-valid interval; on seeds fixed in advance the
    # answer is the t interval and Holm's p, which its "undecided" would contradict.
    raced = bool(result.get("race"))
    effects = (sequential.get("effects") or {}).get(metric)
    factorial = (result.get("factorial") or {}).get(metric)
    rows: list[dict[str, Any]] = []
    if effects or (factorial and factorial.get("n")):
        source = effects or factorial
        for key, _ in EFFECTS:
            part = source.get(key)
            if not part:
                continue
            rows.append({
                "label": _effect_label(result, source["factors"], key),
                "mean": part["mean"],
                "t_ci": part.get("t_ci") if effects else part.get("ci"),
                "ci": part.get("ci") if effects else None,
                "anytime": bool(effects),
                "decision": part.get("decision") if raced else None,
            })  # fmt: skip
        return rows
    chosen = [c for c in sequential.get("comparisons") or [] if c["metric"] == metric]
    if chosen:
        return [
            {"label": c["label"], "mean": c["mean"], "t_ci": c.get("t_ci"), "ci": c.get("ci"),
             "anytime": True, "decision": c.get("decision") if raced else None}
            for c in chosen
        ]  # fmt: skip
    cells = result["cells"]
    return [
        {"label": f"{cells[p['first']]['label']} − {cells[p['second']]['label']}",
         "mean": p["mean"], "t_ci": p.get("ci"), "ci": None, "anytime": False, "decision": None}
        for p in result["comparisons"][metric]
        if p["n"]
    ]  # fmt: skip


def _bars(rows: Sequence[dict[str, Any]], key: str, scale: float) -> dict[str, Any]:
    return {
        "type": "data", "symmetric": False, "visible": True,
        "array": [scale * (r[key]["high"] - r["mean"]) if r[key] else 0 for r in rows],
        "arrayminus": [scale * (r["mean"] - r[key]["low"]) if r[key] else 0 for r in rows],
    }  # fmt: skip


def _interval_text(interval: dict[str, float] | None, scale: float, unit: str) -> str:
    if interval is None:
        return "unbounded"
    return f"[{scale * interval['low']:+.2f}, {scale * interval['high']:+.2f}]{unit}"


def _forest_metric(fig: go.Figure, row: int, result: dict[str, Any], metric: str) -> int:
    """One metric's rows in subplot `row`; the number of rows drawn."""
    rows = forest_rows(result, metric)
    scale = 100.0 if in_points(metric) else 1.0
    unit = " pp" if in_points(metric) else ""
    ys = list(range(len(rows)))
    labels = [r["label"] + (f" <b>({r['decision']})</b>" if r["decision"] else "") for r in rows]
    hover = [
        f"{r['label']}<br>{scale * r['mean']:+.2f}{unit}; "
        f"t {_interval_text(r['t_ci'], scale, unit)}"
        + (f"; anytime-valid {_interval_text(r['ci'], scale, unit)}" if r["anytime"] else "")
        for r in rows
    ]
    first = row == 1
    fig.add_trace(
        go.Scatter(
            x=[scale * r["mean"] for r in rows], y=[y - 0.12 for y in ys], mode="markers",
            marker={"size": 10, "color": T_COLOR}, name=T_NAME,
            error_x={**_bars(rows, "t_ci", scale), "thickness": 2.5, "color": T_COLOR},
            hovertext=hover, hoverinfo="text", legendgroup="t", showlegend=first,
        ), row=row, col=1,
    )  # fmt: skip
    drawn = [r for r in rows if r["anytime"]]
    if drawn:
        fig.add_trace(
            go.Scatter(
                x=[scale * r["mean"] for r in drawn],
                y=[y + 0.12 for y, r in zip(ys, rows, strict=True) if r["anytime"]],
                mode="markers+text",
                marker={"size": 8, "color": ANYTIME_COLOR, "symbol": "diamond"},
                text=["" if r["ci"] else "anytime-valid: unbounded" for r in drawn],
                textposition="middle right", name=ANYTIME_NAME, legendgroup="anytime",
                showlegend=first, hoverinfo="skip",
                error_x={**_bars(drawn, "ci", scale), "thickness": 1.5, "color": ANYTIME_COLOR},
            ), row=row, col=1,
        )  # fmt: skip
    fig.add_vline(x=0, line={"color": "#888", "dash": "dash"}, row=row, col=1)
    margin = (result.get("sequential") or {}).get("margin")
    if margin:
        for x in (-margin, margin):  # as typed, in display units (pp)
            fig.add_vline(x=x, line={"color": MARGIN_COLOR, "dash": "dot"}, row=row, col=1)
        if row == 1:  # a legend entry for the margin's lines
            fig.add_trace(
                go.Scatter(
                    x=[None], y=[None], mode="lines", name=f"± the margin ({margin:g}{unit})",
                    line={"color": MARGIN_COLOR, "dash": "dot"},
                ), row=row, col=1,
            )  # fmt: skip
    fig.update_yaxes(
        tickvals=ys, ticktext=labels, autorange="reversed", row=row, col=1, showgrid=False
    )
    fig.update_xaxes(title_text=f"{LABELS[metric]}: difference{' (pp)' if unit else ''}",
                     zeroline=False, row=row, col=1)  # fmt: skip
    return len(rows)


def answer_forest(result: dict[str, Any]) -> go.Figure | None:
    """The comparison's effects per decision metric, each with its ordinary t interval and,
    where the summary has one, its anytime-valid interval; a dashed line at zero (and dotted
    lines at ± the margin, where one was given). None where there is nothing to draw."""
    metrics = [m for m in answer_metrics(result) if forest_rows(result, m)]
    if not metrics:
        return None
    heights = [len(forest_rows(result, m)) for m in metrics]
    fig = make_subplots(
        rows=len(metrics), cols=1, row_heights=[h + 1 for h in heights], vertical_spacing=0.16
    )
    for row, metric in enumerate(metrics, start=1):
        _forest_metric(fig, row, result, metric)
    two_by_two = any(
        ((result.get("sequential") or {}).get("effects") or {}).get(m)
        or ((result.get("factorial") or {}).get(m) or {}).get("n")
        for m in metrics
    )
    what = "2 × 2 effects" if two_by_two else "paired differences"
    seeds = _seed_count(result)
    fig.update_layout(
        title=f"The answer: {what} over {seeds}<br><sup>{result['study']}</sup>",
        template="plotly_white", height=160 + 90 * sum(heights) + 80 * len(metrics),
        legend={"orientation": "h", "y": -0.12 if len(metrics) > 1 else -0.3},
        margin={"t": 80, "b": 80, "l": 40},
    )  # fmt: skip
    return fig


def _seed_count(result: dict[str, Any]) -> str:
    race = result.get("race")
    if race:
        return f"up to {race['max_seeds']} seeds (a race)"
    return f"{len(result['seeds'])} seeds"


def race_paths(result: dict[str, Any]) -> go.Figure | None:
    """For a race: each comparison's anytime-valid interval (band) and mean (line) against
    the number of seeds, its decision in the legend; None for a fixed-seeds comparison."""
    sequential = result.get("sequential") or {}
    chosen = [c for c in sequential.get("comparisons") or [] if c.get("path")]
    if not result.get("race") or not chosen:
        return None
    metrics = [m for m in answer_metrics(result) if any(c["metric"] == m for c in chosen)]
    fig = make_subplots(rows=len(metrics), cols=1, vertical_spacing=0.18)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for row, metric in enumerate(metrics, start=1):
        scale = 100.0 if in_points(metric) else 1.0
        for i, comp in enumerate(c for c in chosen if c["metric"] == metric):
            color = palette[i % len(palette)]
            name = f"{LABELS[metric]}: {comp['label']}: {comp['decision']}"
            if comp.get("decided_at"):
                name += f" at {comp['decided_at']} seeds"
            path = comp["path"]
            ns = [p["n"] for p in path]
            for key, dash in (("low", "dot"), ("high", "dot")):
                fig.add_trace(
                    go.Scatter(
                        x=ns, y=[None if p[key] is None else scale * p[key] for p in path],
                        mode="lines", line={"color": color, "dash": dash, "width": 1},
                        showlegend=False, hoverinfo="skip", legendgroup=name,
                    ), row=row, col=1,
                )  # fmt: skip
            fig.add_trace(
                go.Scatter(
                    x=ns, y=[scale * p["mean"] for p in path], mode="lines+markers",
                    line={"color": color, "width": 2}, name=name, legendgroup=name,
                ), row=row, col=1,
            )  # fmt: skip
        fig.add_hline(y=0, line={"color": "#888", "dash": "dash"}, row=row, col=1)
        unit = " (pp)" if in_points(metric) else ""
        fig.update_yaxes(title_text=f"{LABELS[metric]} difference{unit}", row=row, col=1)
        fig.update_xaxes(title_text="seeds", row=row, col=1)
    race = result["race"]
    fig.update_layout(
        title=f"The race: mean and anytime-valid interval (dotted; none while unbounded) "
        f"as seeds were added<br><sup>{result['study']}: {race['trained']} seed-runs trained, "
        f"{race['fixed_design']} for every cell at the most seeds</sup>",
        template="plotly_white", height=200 + 320 * len(metrics),
        legend={"orientation": "h", "y": -0.15},
    )  # fmt: skip
    return fig


def decision_lines(result: dict[str, Any]) -> list[str]:
    """One line per decision: a race's anytime-valid decisions and effects; on seeds fixed in
    advance, the pair verdicts (t interval, Holm) of the decision metrics, as the terminal."""
    sequential = result.get("sequential") or {}
    metrics = answer_metrics(result)
    if result.get("race"):
        lines = [c["line"] for c in sequential["comparisons"] if c["metric"] in metrics]
        return lines + [e["line"] for m, e in sequential["effects"].items() if m in metrics]
    return [pair["verdict"] for m in metrics for pair in result["comparisons"][m]]


def answer_html(lines: Sequence[str], rest: Sequence[str]) -> str:
    """The text answer: the decisions, every other verdict folded below."""
    body = "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in lines) + "</ul>"
    if rest:
        body += (
            f"<details><summary>All other verdicts ({len(rest)})</summary><ul>"
            + "".join(f"<li>{html.escape(v)}</li>" for v in rest)
            + "</ul></details>"
        )
    return body
