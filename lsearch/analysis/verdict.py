"""What a comparison says: per-cell summaries, paired differences between cells that differ
in one factor, the 2 × 2 decomposition, and verdicts in plain words, as one JSON-ready dict.

Numbers stay in each metric's own units (accuracy and ECE as fractions); the words and the
Markdown tables show accuracy and ECE in percentage points. Every difference is "first cell
minus second cell", the first being the later level of the factor in the `--grid` order, and
every verdict names its interval and the number of seeds behind it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from lsearch.analysis import stats

LABELS = {
    "val_acc": "validation accuracy",
    "val_ece": "validation ECE",
    "val_nll": "validation NLL",
    "test_acc": "test accuracy",
    "test_ece": "test ECE",
    "test_ece_ts": "test ECE after temperature scaling",
    "test_nll": "test NLL",
    "test_nll_ts": "test NLL after temperature scaling",
    "test_brier": "test Brier score",
    "test_ace": "test adaptive ECE",
}
HIGHER_IS_BETTER = {"val_acc", "test_acc"}
ALPHA = 0.05


def in_points(metric: str) -> bool:
    """Accuracy and ECE read as percentages; NLL and Brier as they are."""
    return metric.endswith(("_acc", "_ece", "_ece_ts", "_ace"))


def show(metric: str, value: float | None, signed: bool = False) -> str:
    """A value in display units: `+0.8 pp`, `82.1 %`, `0.412`."""
    if value is None:
        return "n/a"
    sign = "+" if signed else ""
    if in_points(metric):
        return f"{value * 100:{sign}.2f} " + ("pp" if signed else "%")
    return f"{value:{sign}.4f}"


RANGES = {"acc": (0.0, 1.0), "ece": (0.0, 1.0), "ace": (0.0, 1.0), "brier": (0.0, 2.0),
          "nll": (0.0, None)}  # fmt: skip
CLIPPED_MARK = "*"
CLIPPED_NOTE = "* the t interval reaches past the metric's range and is cut at its bound"


def metric_range(metric: str) -> tuple[float | None, float | None]:
    """The values a metric can take (accuracy and ECE in [0, 1], NLL and Brier >= 0)."""
    kind = metric.removesuffix("_ts").rsplit("_", 1)[-1]
    return RANGES.get(kind, (None, None))


def clip_to_range(metric: str, low: float, high: float) -> tuple[float, float, bool]:
    """A level's interval cut at its metric's bounds, and whether it was cut.

    >>> clip_to_range("test_acc", 0.9289, 1.0014)
    (0.9289, 1.0, True)
    """
    floor, ceiling = metric_range(metric)
    cut_low = low if floor is None else max(low, floor)
    cut_high = high if ceiling is None else min(high, ceiling)
    return cut_low, cut_high, (cut_low, cut_high) != (low, high)


def show_level(metric: str, summary: dict[str, Any]) -> str:
    """A cell's mean with its interval: `97.44 % [96.61, 98.27]`, `0.2906 [0.2435, 0.3377]`;
    an interval past the metric's range is cut at its bound and marked `*`."""
    interval = summary["ci"]
    if interval is None:
        return show(metric, summary["mean"])
    scale, digits = (100, 2) if in_points(metric) else (1, 4)
    low, high, cut = clip_to_range(metric, interval["low"], interval["high"])
    mark = CLIPPED_MARK if cut else ""
    low, high = low * scale, high * scale
    return f"{show(metric, summary['mean'])} [{low:.{digits}f}, {high:.{digits}f}]{mark}"


def show_interval(metric: str, interval: dict[str, float] | None) -> str:
    """A difference's interval, signed, in the metric's units: `[+0.12 pp, +1.30 pp]`."""
    if interval is None:
        return "[n/a]"
    return f"[{show(metric, interval['low'], True)}, {show(metric, interval['high'], True)}]"


def _summary(values: Sequence[float]) -> dict[str, Any]:
    return {**asdict(stats.summarize(values)), "per_seed": list(values)}


def _effect(effect: stats.Effect) -> dict[str, Any]:
    return {**asdict(effect.summary), "per_seed": effect.per_seed}


def analyse(
    cells: Sequence[dict[str, Any]],
    factors: dict[str, list[Any]],
    metrics: Sequence[str],
) -> dict[str, Any]:
    """The whole analysis. `cells[i]` holds `label`, `levels` (factor -> level) and
    `per_seed` (seed -> {metric: value}); seeds are paired by their number."""
    out_cells = []
    for cell in cells:
        seeds = sorted(cell["per_seed"])
        summaries = {}
        for metric in metrics:
            values = [cell["per_seed"][s][metric] for s in seeds]
            summaries[metric] = _summary(values) if values else None
        rest = {k: v for k, v in cell.items() if k != "per_seed"}
        out_cells.append({**rest, "seeds": seeds, "metrics": summaries})
    comparisons = {metric: _pairs(cells, factors, metric) for metric in metrics}
    factorial = None
    if corner_cells(cells, factors) is not None:
        factorial = {metric: _two_by_two(cells, factors, metric) for metric in metrics}
    verdicts = [c["verdict"] for metric in metrics for c in comparisons[metric]]
    if factorial is not None:
        verdicts += [factorial[metric]["verdict"] for metric in metrics]
    return {
        "cells": out_cells,
        "comparisons": comparisons,
        "factorial": factorial,
        "verdicts": verdicts,
    }


def common_seeds(*cells: dict[str, Any]) -> list[int]:
    return sorted(set.intersection(*(set(c["per_seed"]) for c in cells)))


def corner_cells(
    cells: Sequence[dict[str, Any]], factors: dict[str, list[Any]]
) -> list[dict[str, Any]] | None:
    """A 2 × 2's cells a (both factors at their first level), b (first factor changed),
    c (second changed) and d (both); None when the grid is not 2 × 2."""
    if len(factors) != 2 or any(len(levels) != 2 for levels in factors.values()):
        return None
    (f1, (l1a, l1b)), (f2, (l2a, l2b)) = factors.items()
    index = {(c["levels"][f1], c["levels"][f2]): c for c in cells}
    return [index[l1a, l2a], index[l1b, l2a], index[l1a, l2b], index[l1b, l2b]]


def one_factor_pairs(
    cells: Sequence[dict[str, Any]], factors: dict[str, list[Any]]
) -> list[dict[str, Any]]:
    """Every pair of cells that differ in exactly one factor: `first` (the later level in the
    `--grid` order) and `second` as cell indices, the factor, its two levels and the levels
    of the other factors (`at`)."""
    index = {tuple(c["levels"][f] for f in factors): i for i, c in enumerate(cells)}
    names = list(factors)
    pairs = []
    for factor in names:
        others = [f for f in names if f != factor]
        for rest in itertools.product(*(factors[f] for f in others)):
            at = dict(zip(others, rest, strict=True))
            for low, high in itertools.combinations(factors[factor], 2):
                first, second = at | {factor: high}, at | {factor: low}
                pairs.append(
                    {
                        "factor": factor,
                        "first": index[tuple(first[f] for f in names)],
                        "second": index[tuple(second[f] for f in names)],
                        "first_level": high,
                        "second_level": low,
                        "at": at,
                    }
                )
    return pairs


def _pairs(
    cells: Sequence[dict[str, Any]], factors: dict[str, list[Any]], metric: str
) -> list[dict[str, Any]]:
    """Every pair of cells that differ in exactly one factor, with Holm over the pairs."""
    pairs = []
    for pair in one_factor_pairs(cells, factors):
        a, b = pair["first"], pair["second"]
        seeds = common_seeds(cells[a], cells[b])
        entry: dict[str, Any] = {"metric": metric, **pair, "seeds": seeds, "n": len(seeds)}
        if seeds:
            diff = stats.paired_difference(
                [cells[a]["per_seed"][s][metric] for s in seeds],
                [cells[b]["per_seed"][s][metric] for s in seeds],
                higher_is_better=metric in HIGHER_IS_BETTER,
            )
            entry.update(asdict(diff))
        pairs.append(entry)
    adjusted = stats.holm([p.get("t_pvalue") for p in pairs])
    for pair, p_holm in zip(pairs, adjusted, strict=True):
        pair["t_pvalue_holm"] = p_holm
        pair["verdict"] = _pair_verdict(pair)
    return pairs


_SHORT = {"label_smoothing": "ε", "lr": "lr", "trainable_layers": "layers"}


def describe(levels: dict[str, Any]) -> str:
    """`ε 0.1, 20 epochs` style labels of parameter levels."""
    parts = []
    for name, value in levels.items():
        if name == "epochs":
            parts.append(f"{value} epochs")
        else:
            parts.append(f"{_SHORT[name]} {value:.4g}")
    return ", ".join(parts)


def pair_label(pair: dict[str, Any]) -> str:
    """A one-factor pair in words: `ε 0.15 vs 0.1 at 20 epochs`, `20 vs 10 epochs at ε 0.1`."""
    factor = pair["factor"]
    if factor == "epochs":
        versus = f"{pair['first_level']} vs {pair['second_level']} epochs"
    else:
        versus = f"{describe({factor: pair['first_level']})} vs {pair['second_level']:.4g}"
    return versus + (f" at {describe(pair['at'])}" if pair["at"] else "")


def better_or_worse(pair: dict[str, Any]) -> str:
    """Whether the first cell of a pair is `better` or `worse` in its metric's direction
    (higher accuracy; lower ECE, NLL, Brier)."""
    return "better" if (pair["mean"] > 0) == (pair["metric"] in HIGHER_IS_BETTER) else "worse"


def _pair_verdict(pair: dict[str, Any]) -> str:
    metric = pair["metric"]
    factor = pair["factor"]
    first = describe({factor: pair["first_level"]})
    second = describe({factor: pair["second_level"]})
    versus = f"{first} vs {second}"
    if factor == "epochs":
        versus = f"{pair['first_level']} vs {pair['second_level']} epochs"
    at = f" at {describe(pair['at'])}" if pair["at"] else ""
    head = f"{LABELS[metric]}: {versus}{at}"
    n = pair["n"]
    if n == 0:
        return f"{head}: no seed has both cells (see the cells' failures)"
    diff = show(metric, pair["mean"], signed=True)
    if n < 2:
        return f"{head}: {diff} on 1 seed: no interval (give --seeds at least 2 seeds)"
    if pair["identical"]:
        return f"{head}: identical on every one of {n} seeds ({diff})"
    interval = show_interval(metric, pair["ci"])
    p, p_holm = pair["t_pvalue"], pair["t_pvalue_holm"]
    numbers = f"{head}: {diff} {interval}, p = {p:.2g} (Holm {p_holm:.2g}) over {n} seeds"
    if p_holm < ALPHA:
        return f"{numbers}: {first} is {better_or_worse(pair)} beyond seed noise"
    needed = pair["seeds_needed"]
    power = (
        f"about {needed} seeds would detect a difference of this size"
        if needed is not None
        else (pair["seeds_needed_note"] or "no difference to detect")
    )
    return f"{numbers}: not distinguishable from seed noise; {power}"


def _two_by_two(
    cells: Sequence[dict[str, Any]], factors: dict[str, list[Any]], metric: str
) -> dict[str, Any]:
    """a = both factors at their first level, b = first factor changed, c = second factor
    changed, d = both changed; effects per seed over the seeds all four cells share."""
    (f1, (l1a, l1b)), (f2, (l2a, l2b)) = factors.items()
    corners = corner_cells(cells, factors)
    assert corners is not None, "a 2 × 2 grid"
    a, b, c, d = corners
    seeds = common_seeds(a, b, c, d)
    result: dict[str, Any] = {
        "metric": metric,
        "factors": [f1, f2],
        "cells": {"a": a["label"], "b": b["label"], "c": c["label"], "d": d["label"]},
        "seeds": seeds,
        "n": len(seeds),
    }
    if not seeds:
        result["verdict"] = f"{LABELS[metric]}: no seed has all four cells"
        return result
    values = [[cell["per_seed"][s][metric] for s in seeds] for cell in (a, b, c, d)]
    effects = stats.two_by_two(*values)
    for name in ("first_main", "second_main", "interaction", "first_simple", "second_simple"):
        result[name] = _effect(getattr(effects, name))
    result["total"] = _effect(effects.total)

    def part(name: str) -> str:
        summary = result[name]
        return f"{show(metric, summary['mean'], True)} {show_interval(metric, summary['ci'])}"

    change1 = f"{describe({f1: l1a})} → {describe({f1: l1b})}"
    change2 = f"{describe({f2: l2a})} → {describe({f2: l2b})}"
    result["verdict"] = (
        f"{LABELS[metric]} from ({a['label']}) to ({d['label']}) over {len(seeds)} seeds: "
        f"{part('total')} = {change1} at {describe({f2: l2a})} {part('first_simple')} + "
        f"{change2} at {describe({f1: l1a})} {part('second_simple')} + interaction "
        f"{part('interaction')}; averaged main effects: {change1} {part('first_main')}, "
        f"{change2} {part('second_main')}"
    )
    return result


def cell_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The cells table (header, rows): each metric's mean and 95 % interval per cell."""
    metrics = report["metrics"]
    rows = []
    for cell in report["cells"]:
        row = [cell["label"], str(len(cell["seeds"]))]
        for metric in metrics:
            s = cell["metrics"][metric]
            row.append("n/a" if s is None else show_level(metric, s))
        rows.append(row)
    return ["cell", "n", *metrics], rows


PAIR_HEADER = [
    "metric", "first", "second", "n", "difference [95 % t]", "bootstrap 95 %", "p (t)",
    "p (Holm)", "p (Wilcoxon)", "wins", "seeds for 80 % power",
]  # fmt: skip


def pair_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The paired-differences table (header, rows), every metric's pairs."""
    cells = report["cells"]
    rows = []
    for metric in report["metrics"]:
        for pair in report["comparisons"][metric]:
            if not pair["n"]:
                continue
            rows.append(
                [
                    metric,
                    cells[pair["first"]]["label"],
                    cells[pair["second"]]["label"],
                    str(pair["n"]),
                    f"{show(metric, pair['mean'], True)} {show_interval(metric, pair['ci'])}",
                    show_interval(metric, pair["bootstrap_ci"]),
                    _p(pair["t_pvalue"]),
                    _p(pair["t_pvalue_holm"]),
                    _p(pair["wilcoxon_pvalue"]),
                    f"{pair['wins']:.2f}",
                    "n/a" if pair["seeds_needed"] is None else str(pair["seeds_needed"]),
                ]
            )
    return PAIR_HEADER, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def to_markdown(report: dict[str, Any]) -> str:
    """The cells, pairs and verdicts as Markdown tables (for a notebook or a pull request)."""
    lines = [f"## {report['study']}", ""]
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    if report.get("notes"):
        lines.append("")
    header, rows = cell_rows(report)
    lines += ["### Cells", "", *_markdown_table(header, rows)]
    if any(CLIPPED_MARK in text for row in rows for text in row):
        lines += ["", CLIPPED_NOTE]
    lines += ["", "### Paired differences (first − second, by seed)", ""]
    lines += _markdown_table(*pair_rows(report))
    lines += ["", "### Verdicts", ""]
    lines += [f"- {verdict}" for verdict in report["verdicts"]]
    return "\n".join(lines) + "\n"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
