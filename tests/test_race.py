"""Races (`lsearch compare --seeds auto`): decisions with the anytime-valid interval, the
seed-runs a race wants, its identity, its answer, and end to end on the default study."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

import lsearch
from lsearch.analysis.racing import (
    Race,
    decide,
    family_size,
    margin_in_units,
    sequential_block,
    start_seeds,
)
from lsearch.analysis.sequential import sequential_interval, sequential_multiplier
from lsearch.api.comparison import comparison_job
from lsearch.comparison import Request
from lsearch.comparison.plan import collect
from lsearch.comparison.race import cell_values, check_identity, cost, race_plans, race_seeds
from lsearch.errors import UserError

ALPHA = 0.05
G = 2.0


# --------------------------------------------------------------------------- decisions


def test_a_clear_difference_is_decided_at_the_first_look_that_can_exclude_zero() -> None:
    """+1 ± 0.1 per seed: infinite intervals at 2 and 3 seeds, decided at 4 (q₄ = 12.05:
    half-width 12.05 · 0.13/2 < 1), with the numbers of that look."""
    diffs = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0]
    entry = decide(list(range(6)), diffs, ALPHA, G, None, 30)
    assert entry["decision"] == "different"
    assert entry["decided_at"] == 4 and entry["n"] == 4 and entry["seeds"] == [0, 1, 2, 3]
    low, high = sequential_interval(diffs[:4], ALPHA, G)
    assert entry["ci"] == {"low": low, "high": high} and low > 0
    assert [step["low"] for step in entry["path"][:2]] == [None, None]  # n = 2, 3: unbounded
    assert entry["mean"] == pytest.approx(sum(diffs[:4]) / 4)


def test_a_decision_stands_when_later_seeds_would_not_decide() -> None:
    """Seeds trained later for another comparison do not reopen a decided one."""
    decided = decide(list(range(4)), [1.0, 1.1, 0.9, 1.05], ALPHA, G, None, 30)
    longer = decide(list(range(7)), [1.0, 1.1, 0.9, 1.05, -5.0, 6.0, -4.0], ALPHA, G, None, 30)
    assert longer["decided_at"] == decided["decided_at"] == 4
    assert longer["ci"] == decided["ci"]


def test_a_margin_is_in_points_for_accuracy_and_ece_and_raw_for_nll_and_brier() -> None:
    """`--margin 0.5` is 0.5 pp (0.005) of accuracy or ECE, but 0.5 of Brier or NLL."""
    assert margin_in_units("test_acc", 0.5) == 0.005
    assert margin_in_units("test_ece", 0.5) == 0.005
    assert margin_in_units("test_ace", 0.5) == 0.005
    assert margin_in_units("test_brier", 0.5) == 0.5
    assert margin_in_units("test_nll", 0.5) == 0.5
    assert margin_in_units("test_brier", None) is None


def test_equivalence_within_a_margin_and_both_at_once() -> None:
    """Inside (−margin, +margin): equivalent; excluding 0 too: different, within margin."""
    around_zero = [0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0]
    entry = decide(list(range(8)), around_zero, ALPHA, G, 0.5, 30)
    assert entry["decision"] == "equivalent"
    assert entry["ci"]["low"] > -0.5 and entry["ci"]["high"] < 0.5 and entry["ci"]["low"] < 0
    small = [0.10, 0.11, 0.09, 0.10, 0.105, 0.095]
    both = decide(list(range(6)), small, ALPHA, G, 0.5, 30)
    assert both["decision"] == "different, within margin"
    assert both["ci"]["low"] > 0 and both["ci"]["high"] < 0.5


def test_an_open_comparison_says_how_many_seeds_would_decide_it() -> None:
    """Undecided at all its seeds: its numbers are those of all seeds, with an estimate of
    the seeds that would decide it at this mean and spread, and a margin below the spread
    is out of reach at --max-seeds."""
    diffs = [0.3, -0.5, 0.8, -0.2, 0.6, 0.1]
    entry = decide(list(range(6)), diffs, ALPHA, G, 0.05, 30)
    assert entry["decision"] == "undecided" and entry["decided_at"] is None and entry["n"] == 6
    more = entry["seeds_to_decide"]
    mean, std = float(np.mean(diffs)), float(np.std(diffs, ddof=1))

    def half(n: int) -> float:
        return sequential_multiplier(n, ALPHA, G) * std / math.sqrt(n)

    assert more is not None and more > 6
    assert half(more) < abs(mean) <= half(more - 1)
    assert entry["margin_out_of_reach"] is True and half(30) >= 0.05


def test_the_family_split_and_the_start_seeds() -> None:
    """A 2 × 2 has 4 one-factor pairs; on 2 metrics 8 comparisons, α 0.05/8, start at 6
    seeds (the interval is unbounded at 5 at that α); one comparison starts at 5."""
    grid = {"label_smoothing": [0.1, 0.15], "epochs": [10, 20]}
    assert family_size(grid, ["test_acc", "test_ece"]) == 8
    assert family_size({"label_smoothing": [0, 0.1, 0.2]}, ["test_acc"]) == 3
    assert start_seeds(0.05 / 8) == 6 and start_seeds(0.05) == 5
    assert sequential_interval([1, 2, 3, 4, 5], 0.05 / 8)[0] == -math.inf
    assert race_seeds([3, 4], 5) == [3, 4, 5, 6, 7] and race_seeds(list(range(9)), 4) == [
        0,
        1,
        2,
        3,
    ]


def _cells(per_cell: list[dict[int, float]], metric: str = "test_acc") -> list[dict[str, Any]]:
    return [
        {"label": f"ε {e}", "levels": {"label_smoothing": e},
         "per_seed": {s: {metric: v} for s, v in values.items()}}
        for e, values in zip((0.0, 0.1), per_cell, strict=True)
    ]  # fmt: skip


def test_a_pair_is_compared_on_the_seeds_both_its_cells_finished() -> None:
    """Seed 2 failed in one cell: it is left out of the pair, in both cells."""
    a = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.5, 4: 0.55, 5: 0.6}
    b = {0: 0.6, 1: 0.7, 3: 0.6, 4: 0.65, 5: 0.7}
    race = Race(("test_acc",), None, 30)
    block = sequential_block(_cells([a, b]), {"label_smoothing": [0.0, 0.1]}, race)
    (entry,) = block["comparisons"]
    assert entry["seeds"] == [0, 1, 3, 4] and entry["decided_at"] == 4
    assert entry["mean"] == pytest.approx(0.1) and entry["decision"] == "different"
    assert entry["label"] == "ε 0.1 vs 0" and block["family"] == 1


# --------------------------------------------------------------------------- race_plans


def _request(tmp_path: Path, grid: list[str], **race: Any) -> Request:
    job = comparison_job(
        grid, seeds="auto", storage=f"sqlite:///{tmp_path}/x.db", overrides={"baseline.epochs": 3},
        **race,
    )  # fmt: skip
    return job.request


def _run(request: Request, cell: int, seed: int, state: TrialState, acc: float = 0.5) -> Any:
    """A race trial of `cell` and `seed`, as the study stores it."""
    c = request.cells[cell].config
    params = {"label_smoothing": c.label_smoothing, "epochs": c.epochs, "lr": c.lr,
              "trainable_layers": c.trainable_layers, "seed": seed}  # fmt: skip
    distributions = {
        name: FloatDistribution(v, v) if isinstance(v, float) else IntDistribution(v, v)
        for name, v in params.items()
    }
    attrs: dict[str, Any] = {"config": {k: v for k, v in params.items() if k != "seed"},
                             "seeds": [seed]}  # fmt: skip
    if state == TrialState.COMPLETE:
        attrs["held_out"] = {str(c.epochs): {"test_acc": acc}}
    if state == TrialState.FAIL:
        attrs["fail_reason"] = "ValueError: poison"
    return create_trial(
        state=state, value=acc if state == TrialState.COMPLETE else None, params=params,
        distributions=distributions, user_attrs=attrs,
    )  # fmt: skip


def _keys(plans: list[Any]) -> list[tuple[float, int]]:
    return [(p.config.label_smoothing, p.seed) for p in plans]


def test_a_race_starts_every_cell_at_its_start_seeds_seed_by_seed(tmp_path: Path) -> None:
    request = _request(tmp_path, ["label_smoothing=0,0.3"], max_seeds=8)
    assert request.seeds == list(range(8)) and request.name.startswith("digits-transfer race")
    plans = race_plans(request, [])
    assert _keys(plans) == [(e, s) for s in range(5) for e in (0.0, 0.3)]


def test_a_race_adds_seeds_only_while_a_comparison_is_open(tmp_path: Path) -> None:
    """Five noisy seeds: undecided, both cells want seed 5. Seed 5 running in one cell: the
    other still wants it. Both running: the next worker takes seed 6. A failed seed is left
    out; five clearly different seeds: decided, nothing more to train."""
    request = _request(tmp_path, ["label_smoothing=0,0.3"], max_seeds=8)
    noisy, apart = [0.5, 0.7, 0.4, 0.6, 0.55], [0.02, -0.01, 0.03, 0.0, -0.02]
    done = [_run(request, cell, s, TrialState.COMPLETE, noisy[s] + apart[s] * cell)
            for s in range(5) for cell in (0, 1)]  # fmt: skip
    assert _keys(race_plans(request, done)) == [(0.0, 5), (0.3, 5)]
    one = [*done, _run(request, 0, 5, TrialState.RUNNING)]
    assert _keys(race_plans(request, one)) == [(0.3, 5)]
    both = [*one, _run(request, 1, 5, TrialState.RUNNING)]
    assert _keys(race_plans(request, both)) == [(0.0, 6), (0.3, 6)]
    failed = [*done, _run(request, 0, 5, TrialState.FAIL)]
    assert _keys(race_plans(request, failed)) == [(0.0, 6), (0.3, 6)]
    full = [*done, *(_run(request, c, s, TrialState.COMPLETE, 0.5) for s in (5, 6, 7)
                     for c in (0, 1))]  # fmt: skip
    assert race_plans(request, full) == []  # every open cell at --max-seeds
    clear = [_run(request, cell, s, TrialState.COMPLETE, 0.5 + 0.3 * cell + 0.01 * (s % 2))
             for s in range(5) for cell in (0, 1)]  # fmt: skip
    assert race_plans(request, clear) == []


def test_a_worker_runs_ahead_while_a_seed_run_trains_as_far_as_it_gets(tmp_path: Path) -> None:
    """Two workers: one trains seed 4 of the first cell, slowly; the other, rather than wait,
    finishes seed 4 of the second cell, then seeds 5 and 6 of both, and still wants seed 7.
    Once seed 4 is in, the comparison is decided at 5 seeds, as a lone worker (10 seed-runs)
    would have it: 4 seed-runs more with 2 workers, so no bound in the number of workers
    holds, only --max-seeds on every cell."""
    request = _request(tmp_path, ["label_smoothing=0,0.3"], max_seeds=8)
    gap = [0.3, 0.2, 0.4, 0.25, 0.35, -0.5, 0.6]  # decided by seeds 0-4, not by 0-3 with 5

    def run(cell: int, seed: int, state: TrialState = TrialState.COMPLETE) -> Any:
        return _run(request, cell, seed, state, 0.5 + gap[seed] * cell / 2)

    trials = [run(cell, s) for s in range(4) for cell in (0, 1)]
    assert _keys(race_plans(request, trials)) == [(0.0, 4), (0.3, 4)]
    trials += [run(0, 4, TrialState.RUNNING), run(1, 4)]
    for seed in (5, 6):
        assert _keys(race_plans(request, trials)) == [(0.0, seed), (0.3, seed)]
        trials += [run(0, seed), run(1, seed)]
    assert _keys(race_plans(request, trials)) == [(0.0, 7), (0.3, 7)]
    trials[8] = run(0, 4)  # the slow seed-run is in
    assert race_plans(request, trials) == []
    spent = cost(request, trials)
    assert spent["done"] and spent["trained"] == 14 == 10 + 4
    found = cell_values(request.cells, request.seeds, collect(trials, False), ["test_acc"])
    (entry,) = sequential_block(found, request.grid, request.race)["comparisons"]
    assert entry["decision"] == "different" and entry["decided_at"] == 5


def test_a_race_refuses_another_hypothesis_and_mixing_with_fixed_seeds(tmp_path: Path) -> None:
    request = _request(tmp_path, ["label_smoothing=0,0.3"], max_seeds=8)
    study = optuna.create_study()
    check_identity(study, request)
    check_identity(study, request)  # the same again: fine
    other = _request(tmp_path, ["label_smoothing=0,0.3"], max_seeds=12, margin=0.5)
    with pytest.raises(UserError, match="same --decide-on and --margin, or pass --name"):
        check_identity(study, other)
    more = _request(tmp_path, ["label_smoothing=0,0.3"], max_seeds=12)
    check_identity(study, more)  # a larger budget continues it
    fixed = comparison_job(["label_smoothing=0,0.3"], seeds="0-4").request
    with pytest.raises(UserError, match="is a race"):
        check_identity(study, fixed)
    trained = optuna.create_study()
    trained.add_trial(_run(request, 0, 0, TrialState.COMPLETE))
    with pytest.raises(UserError, match="trained on fixed seeds; pass --name"):
        check_identity(trained, request)


@pytest.mark.parametrize(
    ("race", "message"),
    [
        ({"max_seeds": 5, "decide_on": ["test_acc", "test_ece"]},
         "--max-seeds 5: the race starts every cell at 6 seeds"),
        ({"margin": -1.0}, "--margin -1.0: give a positive number"),
        ({"decide_on": ["val_f1"]}, "--decide-on val_f1: not a metric"),
    ],
)  # fmt: skip
def test_race_options_are_checked(tmp_path: Path, race: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        _request(tmp_path, ["label_smoothing=0,0.3", "epochs=2,3"], **race)


# --------------------------------------------------------------------------- end to end


def _race(tmp_path: Path, grid: dict[str, list[Any]], **options: Any) -> dict[str, Any]:
    overrides = {"baseline.epochs": 3, "checkpoint.location": f"{tmp_path}/artifacts"}
    result = lsearch.compare(
        grid, overrides=overrides, seeds="auto", storage=f"sqlite:///{tmp_path}/race.db",
        device="cpu", **options,
    )  # fmt: skip
    return result.to_dict()


def _trained(tmp_path: Path, name: str) -> list[tuple[Any, ...]]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/race.db")
    return [tuple(t.params.values()) for t in study.get_trials(states=(TrialState.COMPLETE,))]


def test_a_race_decides_early_reruns_nothing_and_a_larger_budget_continues(
    tmp_path: Path,
) -> None:
    """On the default study: a linear probe against fine-tuning every layer is decided at the
    start seeds, with fewer seed-runs than --max-seeds on every cell, and a rerun trains
    nothing; two all-but-identical cells stay undecided at --max-seeds, and a larger
    --max-seeds continues them."""
    clear = _race(tmp_path, {"trainable_layers": [1, 4]}, max_seeds=8)
    (entry,) = clear["sequential"]["comparisons"]
    assert entry["decision"] == "different" and entry["decided_at"] == 5
    assert clear["race"] == {"max_seeds": 8, "trained": 10, "fixed_design": 16, "done": True}
    trained = _trained(tmp_path, clear["study"])
    assert len(trained) == 10 == len(set(trained))
    again = _race(tmp_path, {"trainable_layers": [1, 4]}, max_seeds=8)
    assert _trained(tmp_path, clear["study"]) == trained and again["race"]["trained"] == 10

    same = _race(tmp_path, {"label_smoothing": [0, 1e-9]}, max_seeds=5)
    (entry,) = same["sequential"]["comparisons"]
    assert entry["decision"] == "undecided" and same["race"]["trained"] == 10
    longer = _race(tmp_path, {"label_smoothing": [0, 1e-9]}, max_seeds=7)
    (entry,) = longer["sequential"]["comparisons"]
    assert entry["n"] == 7 and entry["seeds"] == list(range(7))
    assert longer["race"] == {"max_seeds": 7, "trained": 14, "fixed_design": 14, "done": True}


def test_two_workers_race_one_grid_without_training_a_seed_run_twice(tmp_path: Path) -> None:
    result = _race(tmp_path, {"trainable_layers": [1, 4]}, max_seeds=8, workers=2, threads=1)
    trained = _trained(tmp_path, result["study"])
    assert len(trained) == len(set(trained)) == result["race"]["trained"]
    assert result["race"]["done"] and result["sequential"]["comparisons"][0]["decided_at"] == 5
    # What a lone worker trains (10), and any the other worker started while a seed-run the
    # decision needed was training: how many depends on how long seed-runs take (see
    # test_a_worker_runs_ahead_while_a_seed_run_trains_as_far_as_it_gets), so only the fixed
    # design bounds them.
    assert 10 <= len(trained) <= result["race"]["fixed_design"] == 16


def test_the_cli_prints_the_answer_first_and_the_tables_on_request(tmp_path: Path) -> None:
    """A finished race rerun from the command line: the answer in a few lines (the family,
    the decision, the cost), nothing trained; --tables adds the tables; --dry-run says what
    the race starts with."""
    from tests.conftest import run_lsearch

    _race(tmp_path, {"trainable_layers": [1, 4]}, max_seeds=8)
    args = ["compare", "--grid", "trainable_layers=1,4", "--seeds", "auto", "--max-seeds", "8",
            "--set", "baseline.epochs=3", "--set", f"checkpoint.location={tmp_path}/artifacts",
            "--storage", f"sqlite:///{tmp_path}/race.db", "--device", "cpu"]  # fmt: skip
    answer = run_lsearch(*args, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    lines = answer.stdout.splitlines()
    assert len(lines) <= 15
    assert lines[0].startswith("race: 1 comparisons, α 0.05 kept over all of them")
    assert "every cell started at 5 seeds" in lines[0]
    assert lines[1] == "test accuracy"
    assert lines[2].startswith("  layers 4 vs 1: +") and "different at 5 seeds" in lines[2]
    assert "cost: 10 seed-runs trained against 16 for 8 seeds on every cell (0.62); done" in (
        answer.stdout
    )
    assert "0 seed-runs to train now" in answer.stderr
    tables = run_lsearch(*args, "--tables", cwd=tmp_path)
    assert "paired differences" in tables.stdout and "paired differences" not in answer.stdout
    dry = run_lsearch(*args, "--max-seeds", "9", "--dry-run", cwd=tmp_path)
    assert "race on test_acc (margin none): 1 comparisons, α 0.05 split to 0.05 each" in (
        dry.stdout
    )
    assert "every cell starts at 5 seeds, at most 9 (18 seed-runs on every cell)" in dry.stdout


def test_effects_and_far_seeds_in_a_race_s_numbers() -> None:
    """A 2 × 2: both main effects and the interaction with the anytime interval at the split
    α on the seeds all four cells share; a seed far from the others is named."""
    seeds = range(8)
    base = [0.80, 0.82, 0.81, 0.79, 0.80, 0.81, 0.82, 0.80]
    shift = {(0, 0): 0.0, (1, 0): 0.05, (0, 1): 0.01, (1, 1): 0.07}
    jitter = [0.001, -0.002, 0.0, 0.002, -0.001, 0.001, 0.0, -0.001]
    cells = [
        {"label": f"{e}/{k}", "levels": {"label_smoothing": e, "epochs": k},
         "per_seed": {s: {"test_acc": base[s] + shift[i, j] + (i * j) * jitter[s]}
                      for s in seeds if not (i == j == 1 and s == 7)}}
        for i, e in enumerate((0.0, 0.1)) for j, k in enumerate((10, 20))
    ]  # fmt: skip
    block = sequential_block(
        cells, {"label_smoothing": [0.0, 0.1], "epochs": [10, 20]}, Race(("test_acc",), None, 8)
    )
    effects = block["effects"]["test_acc"]
    assert effects["n"] == 7 and effects["seeds"] == list(range(7))
    assert block["alpha_split"] == pytest.approx(0.05 / 4)
    assert effects["first_main"]["mean"] == pytest.approx(0.055, abs=1e-3)
    assert effects["interaction"]["mean"] == pytest.approx(0.01, abs=1e-3)
    low, high = sequential_interval(
        [(cells[2]["per_seed"][s]["test_acc"] + cells[3]["per_seed"][s]["test_acc"]
          - cells[0]["per_seed"][s]["test_acc"] - cells[1]["per_seed"][s]["test_acc"]) / 2
         for s in range(7)], 0.05 / 4,
    )  # fmt: skip
    assert effects["first_main"]["ci"] == {"low": pytest.approx(low), "high": pytest.approx(high)}
    noisy = [0.01, -0.012, 0.009, -0.011, 0.0, 0.3, 0.011, -0.01]
    entry = decide(list(range(10, 18)), noisy, 0.05, G, None, 30)
    assert entry["decision"] == "undecided"
    assert entry["far_seeds"] == [{"seed": 15, "difference": 0.3}]


def test_no_level_is_printed_outside_its_metric_s_range() -> None:
    """A cell's t interval past 100 % accuracy or below 0 ECE is cut at the bound and
    marked, with the note in the table's caption and the Markdown."""
    from lsearch.analysis.verdict import cell_rows, show_level, to_markdown
    from lsearch.api import ComparisonResult

    high = {"mean": 0.9652, "ci": {"low": 0.9289, "high": 1.0014}}
    low = {"mean": 0.01, "ci": {"low": -0.004, "high": 0.024}}
    inside = {"mean": 0.5, "ci": {"low": 0.4, "high": 0.6}}
    assert show_level("test_acc", high) == "96.52 % [92.89, 100.00]*"
    assert show_level("test_ece", low) == "1.00 % [0.00, 2.40]*"
    assert show_level("test_nll", {"mean": 0.01, "ci": {"low": -0.02, "high": 0.04}}) == (
        "0.0100 [0.0000, 0.0400]*"
    )
    assert show_level("test_acc", inside) == "50.00 % [40.00, 60.00]"
    summary = {"study": "s", "metrics": ["test_acc", "test_ece"], "notes": [],
               "cells": [{"label": "ε 0", "seeds": [0, 1],
                          "metrics": {"test_acc": high, "test_ece": inside}}],
               "comparisons": {"test_acc": [], "test_ece": []}, "verdicts": [],
               "factorial": None, "race": None}  # fmt: skip
    assert cell_rows(summary)[1][0][2].endswith("*")
    assert "cut at its bound" in (ComparisonResult(summary).cell_table().caption or "")
    assert "cut at its bound" in to_markdown(summary)


def test_a_race_from_the_best_trial_races_fresh_seeds_and_says_which(tmp_path: Path) -> None:
    """--from-best: the race's seed order starts after the search's seeds, and the note names
    the seeds the race may use."""
    from lsearch.api.studyfile import load_with_texts
    from lsearch.comparison.request import RaceOptions, comparison_request
    from lsearch.store.catalog import SPEC_ATTR

    spec, _ = load_with_texts("digits-transfer", None)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db")
    search = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize")
    search.set_user_attr(SPEC_ATTR, spec.to_dict())
    config = {"label_smoothing": 0.1, "epochs": 10, "lr": 3e-3, "trainable_layers": 2}
    search.add_trial(create_trial(value=0.9, user_attrs={"config": config}))
    request = comparison_request(
        spec, storage, ["label_smoothing=0,0.1"], 4, "auto", True, None, [], RaceOptions(8)
    )
    assert list(spec.seeds) == [0, 1, 2] and request.seeds == list(range(3, 11))
    assert request.base.epochs == 10 and request.race is not None
    assert any(
        note.startswith("seeds 3, 4, 5, 6, 7, 8, 9, 10: fresh seeds") for note in request.notes
    )
