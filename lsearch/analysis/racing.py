"""Decisions that stay valid however often they are looked at: a comparison's family of
paired comparisons, each decided with the anytime-valid interval
(:func:`lsearch.analysis.sequential.sequential_interval`) at the family's split α.

The family is every pair of cells that differ in one factor, on every decision metric;
α = 0.05 is split evenly over it (Bonferroni), so the chance that any decision in the family
is wrong stays at most α at every look. A comparison is looked at after each seed its two
cells share (in seed order) and is decided at the first look where its interval excludes 0
(*different*) or, with a margin, lies inside (−margin, +margin) (*equivalent*); both can
hold. A decision, once made, stands: later seeds (trained for other comparisons) do not
reopen it, and the numbers shown are those at the look that decided it.

Plain data in and out (the cells as `lsearch.analysis.verdict.analyse` takes them); numpy and
scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsearch.analysis import stats
from lsearch.analysis.sequential import (
    far_seeds,
    fewest_deciding_seeds,
    seeds_to_decide,
    sequential_interval,
    sequential_multiplier,
)
from lsearch.analysis.verdict import (
    LABELS,
    common_seeds,
    corner_cells,
    describe,
    in_points,
    one_factor_pairs,
    pair_label,
    show,
)

ALPHA = 0.05
PRIOR_SCALE = 2.0
FEWEST_START = 5  # a race never starts below 5 seeds, whatever its interval allows


@dataclass(frozen=True)
class Race:
    """What a race decides on and how far it may go. `margin` is in the metrics' display
    units (percentage points for accuracy and ECE, adaptive ECE included; the metric's own
    units for Brier and NLL, nats), None for none: see `margin_in_units`."""

    decide_on: tuple[str, ...]
    margin: float | None
    max_seeds: int
    alpha: float = ALPHA
    prior_scale: float = PRIOR_SCALE

    def identity(self) -> dict[str, Any]:
        """What a rerun must repeat: choosing the hypothesis after seeing data voids the
        guarantee (the seed budget may grow: the interval holds at every n)."""
        return {"decide_on": list(self.decide_on), "margin": self.margin}


def family_size(factors: dict[str, list[Any]], metrics: Sequence[str]) -> int:
    """The comparisons a race decides on: pairs of cells differing in one factor, per metric.

    >>> family_size({"label_smoothing": [0.1, 0.15], "epochs": [10, 20]}, ["test_acc"])
    4
    """
    pairs = 0
    for factor, levels in factors.items():
        others = math.prod(len(v) for f, v in factors.items() if f != factor)
        pairs += others * len(levels) * (len(levels) - 1) // 2
    return pairs * len(metrics)


def start_seeds(alpha_split: float, prior_scale: float = PRIOR_SCALE) -> int:
    """The seeds every cell starts with: the fewest, at least 5, at which the interval at
    the split α can exclude anything.

    >>> start_seeds(0.05 / 8)
    6
    """
    return fewest_deciding_seeds(alpha_split, prior_scale, at_least=FEWEST_START)


def margin_in_units(metric: str, margin: float | None) -> float | None:
    """A margin typed in display units, in the metric's own units (pp -> fraction for
    accuracy and ECE; Brier and NLL are displayed in their own units, so unchanged)."""
    if margin is None:
        return None
    return margin / 100 if in_points(metric) else margin


def _bounds(low: float, high: float) -> dict[str, float] | None:
    return {"low": low, "high": high} if math.isfinite(low) and math.isfinite(high) else None


def _decision(low: float, high: float, margin: float | None) -> str | None:
    different = low > 0 or high < 0
    equivalent = margin is not None and -margin < low and high < margin
    if different and equivalent:
        return "different, within margin"
    if different:
        return "different"
    return "equivalent" if equivalent else None


def decide(
    seeds: Sequence[int], differences: Sequence[float], alpha: float, prior_scale: float,
    margin: float | None, max_seeds: int,
) -> dict[str, Any]:  # fmt: skip
    """One comparison looked at after each of its seeds: its interval path, the look that
    decided it (or all its seeds when none did), and what more seeds would take."""
    d = np.asarray(differences, dtype=float)
    path, decided_at, decision = [], None, "undecided"
    for n in range(2, d.size + 1):
        low, high = sequential_interval(d[:n], alpha, prior_scale)
        mean = float(d[:n].mean())
        path.append({"n": n, "mean": mean, **(_bounds(low, high) or {"low": None, "high": None})})
        found = _decision(low, high, margin)
        if found is not None:
            decided_at, decision = n, found
            break
    n = decided_at or d.size
    shown = d[:n]
    entry: dict[str, Any] = {
        "seeds": list(seeds[:n]),
        "n": n,
        "mean": float(shown.mean()) if n else None,
        "t_ci": None,
        "ci": None,
        "decision": decision,
        "decided_at": decided_at,
        "path": path,
        "far_seeds": [
            {"seed": seeds[i], "difference": float(shown[i])}
            for i in (far_seeds(list(shown)) if n else [])
        ],
        "seeds_to_decide": None,
        "margin_out_of_reach": False,
    }
    if n >= 2:
        summary = stats.summarize(list(shown))
        entry["t_ci"] = None if summary.ci is None else {
            "low": summary.ci.low, "high": summary.ci.high
        }  # fmt: skip
        entry["ci"] = _bounds(*sequential_interval(shown, alpha, prior_scale))
        std = float(shown.std(ddof=1))
        if decided_at is None:
            more = _seeds_to_decide(entry["mean"], std, margin, alpha, prior_scale)
            entry["seeds_to_decide"] = more
        if margin is not None:
            half = sequential_multiplier(max_seeds, alpha, prior_scale) * std / math.sqrt(max_seeds)
            entry["margin_out_of_reach"] = bool(half >= margin)
    return entry


def _seeds_to_decide(
    mean: float, std: float, margin: float | None, alpha: float, prior_scale: float
) -> int | None:
    """The seeds at which the interval would decide if mean and spread stayed as they are."""
    counts = [seeds_to_decide(mean, std, abs(mean), alpha, prior_scale)]
    if margin is not None:
        counts.append(seeds_to_decide(mean, std, margin - abs(mean), alpha, prior_scale))
    known = [c for c in counts if c is not None]
    return min(known) if known else None


def comparisons(
    cells: Sequence[dict[str, Any]], factors: dict[str, list[Any]], race: Race, alpha_split: float
) -> list[dict[str, Any]]:
    """Every comparison of the family, decided (see the module's docstring)."""
    found = []
    for metric in race.decide_on:
        margin = margin_in_units(metric, race.margin)
        for pair in one_factor_pairs(cells, factors):
            a, b = cells[pair["first"]], cells[pair["second"]]
            seeds = common_seeds(a, b)
            diffs = [a["per_seed"][s][metric] - b["per_seed"][s][metric] for s in seeds]
            entry = {
                "metric": metric, "first": pair["first"], "second": pair["second"],
                "factor": pair["factor"], "label": pair_label(pair), "margin": margin,
                **decide(seeds, diffs, alpha_split, race.prior_scale, margin, race.max_seeds),
            }  # fmt: skip
            entry["line"] = decision_line(entry)
            found.append(entry)
    return found


def _interval(metric: str, bounds: dict[str, float] | None) -> str:
    """`[-1.84, +3.16]` in the metric's display units (the unit is on the mean before it)."""
    if bounds is None:
        return "[unbounded]"
    scale, digits = (100, 2) if in_points(metric) else (1, 4)
    low, high = bounds["low"] * scale, bounds["high"] * scale
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def decision_line(entry: dict[str, Any]) -> str:
    """One comparison in one line: difference, both intervals, decision and its seeds."""
    metric, n = entry["metric"], entry["n"]
    head = f"{LABELS[metric]}: {entry['label']}"
    if n < 2:
        return f"{head}: {n} seed(s) in both cells, nothing to decide yet"
    text = (
        f"{head}: {show(metric, entry['mean'], True)} anytime {_interval(metric, entry['ci'])}"
        f" (t {_interval(metric, entry['t_ci'])} if n were fixed)"
    )
    if entry["decided_at"] is not None:
        text += f": {entry['decision']} at {n} seeds"
    else:
        more = entry["seeds_to_decide"]
        text += f": undecided at {n} seeds" + (f", ~{more} would decide it" if more else "")
    if entry["margin_out_of_reach"] and "equivalent" not in entry["decision"]:
        text += "; the margin is out of reach at --max-seeds"
    if entry["far_seeds"]:
        far = ", ".join(
            f"{f['seed']} ({show(metric, f['difference'], True)})" for f in entry["far_seeds"]
        )
        text += f"; far-off seeds: {far}"
    return text


def _effect(values: Sequence[float], alpha: float, prior_scale: float) -> dict[str, Any]:
    summary = stats.summarize(values)
    t_ci = None if summary.ci is None else {"low": summary.ci.low, "high": summary.ci.high}
    ci = _bounds(*sequential_interval(values, alpha, prior_scale)) if len(values) >= 2 else None
    return {"mean": summary.mean, "t_ci": t_ci, "ci": ci}


def effects(
    cells: Sequence[dict[str, Any]], factors: dict[str, list[Any]], race: Race, alpha_split: float
) -> dict[str, Any]:
    """A 2 × 2's main effects and interaction per decision metric, with the anytime-valid
    interval at the split α on the seeds all four cells share (reported, not decided on)."""
    four = corner_cells(cells, factors)
    if four is None:
        return {}
    f1, f2 = factors
    seeds = common_seeds(*four)
    found = {}
    for metric in race.decide_on:
        entry: dict[str, Any] = {"factors": [f1, f2], "n": len(seeds), "seeds": seeds}
        if seeds:
            parts = stats.two_by_two(*[[c["per_seed"][s][metric] for s in seeds] for c in four])
            for name in ("first_main", "second_main", "interaction"):
                per_seed = getattr(parts, name).per_seed
                entry[name] = _effect(per_seed, alpha_split, race.prior_scale)
        entry["line"] = _effects_line(metric, entry, factors)
        found[metric] = entry
    return found


def _effects_line(metric: str, entry: dict[str, Any], factors: dict[str, list[Any]]) -> str:
    if not entry["n"]:
        return f"{LABELS[metric]}: no seed has all four cells yet"
    (f1, (l1a, l1b)), (f2, (l2a, l2b)) = factors.items()

    def part(name: str) -> str:
        e = entry[name]
        return f"{show(metric, e['mean'], True)} {_interval(metric, e['ci'])}"

    change1 = f"{describe({f1: l1a})} → {l1b:g}"
    change2 = f"{describe({f2: l2a})} → {l2b:g}"
    return (
        f"{LABELS[metric]}: effects over {entry['n']} seeds, anytime: {change1} "
        f"{part('first_main')}; {change2} {part('second_main')}; interaction {part('interaction')}"
    )


def sequential_block(
    cells: Sequence[dict[str, Any]], factors: dict[str, list[Any]], race: Race
) -> dict[str, Any]:
    """The family, its split α, each comparison decided, and the 2 × 2 effects."""
    family = family_size(factors, race.decide_on)
    alpha_split = race.alpha / max(family, 1)
    return {
        "alpha": race.alpha,
        "family": family,
        "alpha_split": alpha_split,
        "prior_scale": race.prior_scale,
        "decide_on": list(race.decide_on),
        "margin": race.margin,
        "start_seeds": start_seeds(alpha_split, race.prior_scale),
        "comparisons": comparisons(cells, factors, race, alpha_split) if family else [],
        "effects": effects(cells, factors, race, alpha_split),
    }


def open_cells(block: dict[str, Any]) -> list[tuple[int, int]]:
    """The cell pairs of the comparisons still undecided (each pair once)."""
    pairs = {(c["first"], c["second"]) for c in block["comparisons"] if c["decided_at"] is None}
    return sorted(pairs)
