"""A comparison's answer in a few lines, for the terminal: per decision metric, the 2 × 2
decomposition (when there is one) and each comparison's decision in one line, then what the
race cost. The full tables stay in `--tables`, `--json` and `--markdown`.

A race decides with the anytime-valid interval (`lsearch.analysis.racing`); a comparison on
seeds fixed in advance with the t interval and Holm's p-values (`lsearch.analysis.verdict`).
"""

from __future__ import annotations

from typing import Any

from lsearch.analysis.verdict import (
    CLIPPED_MARK,
    CLIPPED_NOTE,
    LABELS,
    better_or_worse,
    pair_label,
    show,
    show_interval,
    show_level,
)

HEADLINE = ("test_acc", "test_ece")
ALPHA = 0.05


def answer_metrics(summary: dict[str, Any]) -> list[str]:
    """The metrics the answer is about (here and in the report): those the comparison decides
    on (a race's `--decide-on`; a fixed-seed comparison's test accuracy and ECE), else test
    accuracy and ECE where it has them, else every metric it has."""
    sequential = summary.get("sequential") or {}
    chosen = [m for m in sequential.get("decide_on") or [] if m in summary["metrics"]]
    if chosen:
        return chosen
    headline = [m for m in HEADLINE if m in summary["metrics"]]
    return headline or list(summary["metrics"])


def fixed_line(pair: dict[str, Any]) -> str:
    """One pair of a fixed-seed comparison in one line (t interval, Holm's p)."""
    metric, n = pair["metric"], pair["n"]
    head = pair_label(pair)
    if n < 2:
        return f"{head}: {n} seed(s) in both cells: no interval"
    if pair["identical"]:
        return f"{head}: identical on all {n} seeds"
    diff = f"{show(metric, pair['mean'], True)} {show_interval(metric, pair['ci'])}"
    text = f"{head}: {diff} over {n} seeds, Holm p {pair['t_pvalue_holm']:.2g}: "
    if pair["t_pvalue_holm"] < ALPHA:
        return text + better_or_worse(pair) + " beyond seed noise"
    needed = pair["seeds_needed"]
    more = f"; about {needed} seeds would detect it" if needed else ""
    return text + "not distinguishable from seed noise" + more


def _fixed_effects(metric: str, part: dict[str, Any]) -> str:
    f1, f2 = part["factors"]

    def effect(name: str) -> str:
        e = part[name]
        return f"{show(metric, e['mean'], True)} {show_interval(metric, e['ci'])}"

    return (
        f"effects over {part['n']} seeds (95 % t): {_factor(f1)} {effect('first_main')}; "
        f"{_factor(f2)} {effect('second_main')}; interaction {effect('interaction')}"
    )


def _factor(name: str) -> str:
    return {"label_smoothing": "ε", "trainable_layers": "layers"}.get(name, name)


def _metric_lines(summary: dict[str, Any], metric: str) -> list[str]:
    race = summary.get("race")
    lines = [LABELS[metric]]
    if race:
        effects = summary["sequential"]["effects"].get(metric)
        if effects:
            lines.append("  " + effects["line"].split(": ", 1)[-1])
        for entry in summary["sequential"]["comparisons"]:
            if entry["metric"] == metric:
                lines.append("  " + entry["line"].split(": ", 1)[-1])
        return lines
    factorial = (summary.get("factorial") or {}).get(metric)
    if factorial and factorial.get("n"):
        lines.append("  " + _fixed_effects(metric, factorial))
    lines += ["  " + fixed_line(pair) for pair in summary["comparisons"].get(metric, [])]
    return lines


def _one_cell(summary: dict[str, Any]) -> list[str]:
    cell = summary["cells"][0]
    lines = [f"{cell['label']} over {len(cell['seeds'])} seeds"]
    for metric in summary["metrics"]:
        s = cell["metrics"].get(metric)
        if s is not None:
            lines.append(f"  {LABELS[metric]}: {show_level(metric, s)}")
    if any(line.endswith(CLIPPED_MARK) for line in lines):
        lines.append(CLIPPED_NOTE)
    return lines


def answer_lines(summary: dict[str, Any]) -> list[str]:
    """The answer first: what each decision metric says, and for a race its family and cost.

    >>> lines = answer_lines({"metrics": ["test_acc"], "race": None, "cells": [
    ...     {"label": "ε 0.1", "seeds": [0, 1], "metrics": {"test_acc": {
    ...         "mean": 0.9, "ci": {"low": 0.85, "high": 0.95}}}}],
    ...     "comparisons": {"test_acc": []}, "factorial": None})
    >>> lines[1]
    '  test accuracy: 90.00 % [85.00, 95.00]'
    """
    if not any(summary["comparisons"].get(m) for m in summary["metrics"]):
        return _one_cell(summary)
    lines = []
    race = summary.get("race")
    if race:
        block = summary["sequential"]
        lines.append(
            f"race: {block['family']} comparisons, α {block['alpha']:g} kept over all of them "
            f"(each at {block['alpha_split']:.2g}, Bonferroni); every cell started at "
            f"{block['start_seeds']} seeds"
        )
    for metric in answer_metrics(summary):
        lines += _metric_lines(summary, metric)
    if race:
        ratio = race["trained"] / race["fixed_design"]
        state = "done" if race["done"] else "not finished: run the same command again"
        lines.append(
            f"cost: {race['trained']} seed-runs trained against {race['fixed_design']} for "
            f"{race['max_seeds']} seeds on every cell ({ratio:.2f}); {state}"
        )
    return lines
