"""Fast in-process unit tests of the pure logic of `lsearch.comparison` and verdicts:
parsing, cells, planning, collecting results from trials, the analysis and its words.

No subprocess and no training: trials are made with `optuna.trial.create_trial`, cells by hand.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from scipy import stats as st

from lsearch.analysis import stats
from lsearch.analysis.verdict import analyse, describe, show, show_interval, to_markdown
from lsearch.comparison import (
    ADVISED_SEEDS,
    ALL_METRICS,
    DEFAULT_METRICS,
    Plan,
    Request,
    build_cells,
    check_metrics,
    check_seeds,
    collect,
    parse_grid,
    parse_seeds,
    plan_runs,
    summarise,
)
from lsearch.errors import UserError
from lsearch.search.objective import TrialConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = TrialConfig(label_smoothing=0.0, epochs=20, lr=3e-4, trainable_layers=3)
NAN_WORD = re.compile(r"\bnan\b", re.IGNORECASE)


# ----------------------------------------------------------------------------- parse_seeds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-4", [0, 1, 2, 3, 4]),
        ("0,3,7", [0, 3, 7]),
        ("0-4,9", [0, 1, 2, 3, 4, 9]),
        (" 0 - 2 , 9 ", [0, 1, 2, 9]),
        ("7,3,5", [7, 3, 5]),  # order kept
        ("9,0-2", [9, 0, 1, 2]),
        ("3-3", [3]),
        ("12", [12]),
    ],
)
def test_parse_seeds_accepts_ranges_and_lists(text: str, expected: list[int]) -> None:
    seeds = parse_seeds(text)
    assert seeds == expected
    assert all(type(seed) is int for seed in seeds)


@pytest.mark.parametrize(
    "text",
    ["4-0", "a", "1,1", "0-2,2", "-1", "2,-1", "", " ", "1,", "0-", "1.5", "0-2-4"],
)
def test_parse_seeds_refuses_bad_text(text: str) -> None:
    with pytest.raises(UserError, match="--seeds"):
        parse_seeds(text)


# ----------------------------------------------------------------------------- parse_grid


def test_parse_grid_keeps_order_and_types() -> None:
    grid = parse_grid(
        [" epochs = 60, 20 ", "label_smoothing=0.1,0", "lr=1e-3,3e-4", "trainable_layers=4,1"],
        layer_groups=4,
    )
    assert list(grid) == ["epochs", "label_smoothing", "lr", "trainable_layers"]
    assert grid == {
        "epochs": [60, 20],
        "label_smoothing": [0.1, 0.0],
        "lr": [1e-3, 3e-4],
        "trainable_layers": [4, 1],
    }
    for name in ("epochs", "trainable_layers"):
        assert all(type(level) is int for level in grid[name]), name
    for name in ("label_smoothing", "lr"):
        assert all(type(level) is float for level in grid[name]), name


def test_parse_grid_whole_float_text_is_an_int() -> None:
    grid = parse_grid(["epochs=20.0,40"], layer_groups=2)
    assert grid == {"epochs": [20, 40]}
    assert all(type(level) is int for level in grid["epochs"])


@pytest.mark.parametrize(
    "texts",
    [
        ["epochs=60"],  # beyond a study's usual search range, inside the domain
        ["epochs=1"],
        ["label_smoothing=0.99"],
        ["label_smoothing=0"],
        ["lr=10"],
        ["trainable_layers=4"],  # exactly the model's layer groups
    ],
)
def test_parse_grid_accepts_levels_inside_the_domain(texts: list[str]) -> None:
    name, _, raw = texts[0].partition("=")
    assert parse_grid(texts, layer_groups=4) == {name: [pytest.approx(float(raw))]}


@pytest.mark.parametrize(
    ("texts", "name"),
    [
        (["momentum=0.9"], "momentum"),
        (["epochs"], "epochs"),  # no '='
        (["epochs="], "epochs"),
        (["label_smoothing=1.0"], "label_smoothing"),
        (["label_smoothing=-0.1"], "label_smoothing"),
        (["label_smoothing=nan"], "label_smoothing"),
        (["epochs=0"], "epochs"),
        (["epochs=2.5"], "epochs"),
        (["epochs=abc"], "epochs"),
        (["epochs=inf"], "epochs"),
        (["epochs=20,,60"], "epochs"),
        (["lr=0"], "lr"),
        (["lr=-1e-3"], "lr"),
        (["lr=nan"], "lr"),
        (["lr=inf"], "lr"),
        (["trainable_layers=5"], "trainable_layers"),
        (["trainable_layers=0"], "trainable_layers"),
        (["trainable_layers=1.5"], "trainable_layers"),
        (["epochs=20,20"], "epochs"),  # a level listed twice
        (["epochs=20,20.0"], "epochs"),  # the same level written twice
        (["label_smoothing=0.1,0.10"], "label_smoothing"),
        (["epochs=20", "epochs=60"], "epochs"),  # a factor given twice
        (["lr=1e-3", " lr = 3e-4"], "lr"),
    ],
)
def test_parse_grid_refuses(texts: list[str], name: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_grid(texts, layer_groups=4)
    message = str(caught.value)
    assert message.startswith("--grid")
    assert name in message


def test_parse_grid_refusal_names_the_bad_level() -> None:
    with pytest.raises(UserError, match=r"trainable_layers.*5.*4 layer"):
        parse_grid(["epochs=20", "trainable_layers=2,5"], layer_groups=4)


# ----------------------------------------------------------------------------- build_cells


def test_build_cells_full_factorial_first_factor_slowest() -> None:
    cells = build_cells({"label_smoothing": [0.0, 0.1], "epochs": [20, 60]}, BASE)
    assert [cell.levels for cell in cells] == [
        {"label_smoothing": 0.0, "epochs": 20},
        {"label_smoothing": 0.0, "epochs": 60},
        {"label_smoothing": 0.1, "epochs": 20},
        {"label_smoothing": 0.1, "epochs": 60},
    ]
    assert [cell.config for cell in cells] == [
        TrialConfig(0.0, 20, 3e-4, 3),
        TrialConfig(0.0, 60, 3e-4, 3),
        TrialConfig(0.1, 20, 3e-4, 3),
        TrialConfig(0.1, 60, 3e-4, 3),
    ]
    assert [cell.label for cell in cells] == [
        "ε 0, 20 epochs",
        "ε 0, 60 epochs",
        "ε 0.1, 20 epochs",
        "ε 0.1, 60 epochs",
    ]


def test_build_cells_three_factors_and_base_values() -> None:
    grid = {"lr": [1e-3, 1e-4], "trainable_layers": [1, 2, 4], "epochs": [10, 30]}
    cells = build_cells(grid, BASE)
    assert len(cells) == 2 * 3 * 2
    assert [(c.config.lr, c.config.trainable_layers, c.config.epochs) for c in cells] == list(
        itertools.product(*grid.values())
    )
    assert {c.config.label_smoothing for c in cells} == {BASE.label_smoothing}
    assert cells[0].label == "lr 0.001, layers 1, 10 epochs"


def test_build_cells_empty_grid_is_the_base() -> None:
    (cell,) = build_cells({}, BASE)
    assert cell.config == BASE
    assert cell.levels == {}
    assert cell.label == "ε 0, 20 epochs, lr 0.0003, layers 3"


def test_describe() -> None:
    assert describe({"label_smoothing": 0.1, "epochs": 20}) == "ε 0.1, 20 epochs"
    assert describe({"lr": 1e-5, "trainable_layers": 2}) == "lr 1e-05, layers 2"


# ----------------------------------------------------------------------------- plan_runs


def _key(epsilon: float, epochs: int, seed: int, lr: float = 3e-4, layers: int = 3) -> tuple:
    return (epsilon, epochs, lr, layers, seed)


def _found(trial: int = 0, epochs: int = 60) -> Any:
    from lsearch.comparison import Found

    return Found({"test_acc": 0.5}, trial, epochs)


EPOCH_GRID = {"label_smoothing": [0.0, 0.1], "epochs": [20, 40, 60]}


def test_plan_runs_constant_schedule_trains_the_longest_once() -> None:
    cells = build_cells(EPOCH_GRID, BASE)
    plans = plan_runs(cells, [0, 1], {}, {}, constant_schedule=True)
    assert len(plans) == 2 * 2  # one per ε and seed
    assert sorted((p.config.label_smoothing, p.seed) for p in plans) == [
        (0.0, 0),
        (0.0, 1),
        (0.1, 0),
        (0.1, 1),
    ]
    for plan in plans:
        assert plan.config.epochs == 60
        assert plan.config.lr == BASE.lr
        assert plan.config.trainable_layers == BASE.trainable_layers
        assert plan.test_at == (20, 40)
        assert plan.key == _key(plan.config.label_smoothing, 60, plan.seed)


def test_plan_runs_cosine_schedule_one_plan_per_cell() -> None:
    cells = build_cells(EPOCH_GRID, BASE)
    plans = plan_runs(cells, [0, 1], {}, {}, constant_schedule=False)
    assert len(plans) == len(cells) * 2
    assert all(plan.test_at == () for plan in plans)
    assert {p.key for p in plans} == {
        _key(eps, epochs, seed)
        for eps, epochs, seed in itertools.product([0.0, 0.1], [20, 40, 60], [0, 1])
    }


def test_plan_runs_does_not_merge_different_lr() -> None:
    cells = build_cells({"lr": [1e-3, 3e-4], "epochs": [20, 60]}, BASE)
    plans = plan_runs(cells, [5], {}, {}, constant_schedule=True)
    assert sorted((p.config.lr, p.config.epochs, p.test_at) for p in plans) == [
        (3e-4, 60, (20,)),
        (1e-3, 60, (20,)),
    ]


def test_plan_runs_skips_found_and_failed() -> None:
    cells = build_cells(EPOCH_GRID, BASE)
    found = {
        _key(0.1, 60, 0): _found(),  # the longest is found: train 40, read 20 from it
        _key(0.0, 20, 1): _found(),  # only 40 is left to read
        _key(0.1, 20, 1): _found(),
        _key(0.1, 40, 1): _found(),
        _key(0.1, 60, 1): _found(),  # ε 0.1, seed 1: nothing left
    }
    failed = {_key(0.0, 40, 0): "NaN loss"}
    plans = plan_runs(cells, [0, 1], found, failed, constant_schedule=True)
    by_group = {(p.config.label_smoothing, p.seed): p for p in plans}
    assert set(by_group) == {(0.0, 0), (0.0, 1), (0.1, 0)}
    assert (by_group[0.0, 0].config.epochs, by_group[0.0, 0].test_at) == (60, (20,))
    assert (by_group[0.0, 1].config.epochs, by_group[0.0, 1].test_at) == (60, (40,))
    assert (by_group[0.1, 0].config.epochs, by_group[0.1, 0].test_at) == (40, (20,))
    for plan in plans:
        assert plan.key not in found
        assert plan.key not in failed

    cosine = plan_runs(cells, [0, 1], found, failed, constant_schedule=False)
    every = {_key(e, n, s) for e, n, s in itertools.product([0.0, 0.1], [20, 40, 60], [0, 1])}
    assert {p.key for p in cosine} == every - set(found) - set(failed)
    assert len(cosine) == len(every) - len(found) - len(failed)


def test_plan_runs_nothing_left() -> None:
    cells = build_cells({"epochs": [20, 60]}, BASE)
    found = {_key(0.0, n, s): _found() for n in (20, 60) for s in (0, 1)}
    assert plan_runs(cells, [0, 1], found, {}, constant_schedule=True) == []
    assert plan_runs(cells, [0, 1], found, {}, constant_schedule=False) == []


# ----------------------------------------------------------------------------- collect


def _config(epsilon: float = 0.1, epochs: int = 60) -> dict[str, Any]:
    return {"label_smoothing": epsilon, "epochs": epochs, "lr": 3e-4, "trainable_layers": 3}


def _trial(
    config: dict[str, Any],
    seed: int,
    held_out: dict[str, dict[str, float]] | None,
    state: TrialState = TrialState.COMPLETE,
) -> optuna.trial.FrozenTrial:
    attrs: dict[str, Any] = {"config": config, "seeds": [seed]}
    if held_out is not None:
        attrs["held_out"] = held_out
    value = 0.5 if state == TrialState.COMPLETE else None
    return create_trial(state=state, value=value, user_attrs=attrs)


def _numbered(*trials: optuna.trial.FrozenTrial) -> list[optuna.trial.FrozenTrial]:
    """The trials as a study stores them: numbered 0, 1, ... in the order given."""
    study = optuna.create_study()
    for trial in trials:
        study.add_trial(trial)
    return study.get_trials(deepcopy=False)


def test_collect_reads_shorter_counts_under_a_constant_schedule() -> None:
    (trial,) = _numbered(
        _trial(_config(epochs=60), 3, {"20": {"test_acc": 0.8}, "60": {"test_acc": 0.9}})
    )
    found = collect([trial], constant_schedule=True)
    assert set(found) == {_key(0.1, 20, 3), _key(0.1, 60, 3)}
    short = found[_key(0.1, 20, 3)]
    assert short.results == {"test_acc": 0.8}
    assert short.trial == 0
    assert short.trained_epochs == 60
    assert found[_key(0.1, 60, 3)].results == {"test_acc": 0.9}
    assert found[_key(0.1, 60, 3)].trained_epochs == 60


def test_collect_under_cosine_uses_only_the_trained_epochs() -> None:
    (trial,) = _numbered(
        _trial(_config(epochs=60), 3, {"20": {"test_acc": 0.8}, "60": {"test_acc": 0.9}})
    )
    found = collect([trial], constant_schedule=False)
    assert set(found) == {_key(0.1, 60, 3)}
    assert found[_key(0.1, 60, 3)].results == {"test_acc": 0.9}


@pytest.mark.parametrize("own_first", [True, False])
def test_collect_own_run_beats_a_read_off(own_first: bool) -> None:
    own = _trial(_config(epochs=20), 3, {"20": {"test_acc": 0.85}})
    long = _trial(_config(epochs=60), 3, {"20": {"test_acc": 0.8}, "60": {"test_acc": 0.9}})
    trials = _numbered(own, long) if own_first else _numbered(long, own)
    own_number = 0 if own_first else 1
    for order in (trials, trials[::-1]):
        found = collect(order, constant_schedule=True)
        hit = found[_key(0.1, 20, 3)]
        assert hit.results == {"test_acc": 0.85}
        assert hit.trial == own_number
        assert hit.trained_epochs == 20
        assert found[_key(0.1, 60, 3)].trial == 1 - own_number


def test_collect_lowest_trial_number_wins_duplicates() -> None:
    trials = _numbered(
        _trial(_config(epochs=60), 3, {"20": {"test_acc": 0.1}, "60": {"test_acc": 0.2}}),
        _trial(_config(epochs=40), 3, {"20": {"test_acc": 0.3}, "40": {"test_acc": 0.4}}),
        _trial(_config(epochs=60), 3, {"20": {"test_acc": 0.5}, "60": {"test_acc": 0.6}}),
        _trial(_config(epochs=20), 3, {"20": {"test_acc": 0.7}}),
        _trial(_config(epochs=20), 3, {"20": {"test_acc": 0.8}}),
    )
    for order in (trials, trials[::-1]):
        found = collect(order, constant_schedule=True)
        assert found[_key(0.1, 60, 3)].trial == 0
        assert found[_key(0.1, 60, 3)].results == {"test_acc": 0.2}
        assert found[_key(0.1, 40, 3)].trial == 1
        assert found[_key(0.1, 20, 3)].trial == 3  # the first own run, over earlier read-offs
        assert found[_key(0.1, 20, 3)].results == {"test_acc": 0.7}

    # Without the own runs, the earliest read-off wins.
    found = collect(trials[:3][::-1], constant_schedule=True)
    assert found[_key(0.1, 20, 3)].trial == 0
    assert found[_key(0.1, 20, 3)].trained_epochs == 60


def test_collect_ignores_unfinished_and_resultless_trials() -> None:
    held_out = {"20": {"test_acc": 0.8}, "60": {"test_acc": 0.9}}
    trials = _numbered(
        _trial(_config(epochs=60), 1, held_out, state=TrialState.FAIL),
        _trial(_config(epochs=60), 2, held_out, state=TrialState.PRUNED),
        _trial(_config(epochs=60), 3, held_out, state=TrialState.RUNNING),
        _trial(_config(epochs=60), 4, None),  # complete but without held-out results
        _trial(_config(epochs=60), 5, held_out),
    )
    found = collect(trials, constant_schedule=True)
    assert set(found) == {_key(0.1, 20, 5), _key(0.1, 60, 5)}
    assert found[_key(0.1, 60, 5)].trial == 4


def test_collect_keys_by_seed_and_configuration() -> None:
    trials = _numbered(
        _trial(_config(0.0, 20), 0, {"20": {"test_acc": 0.1}}),
        _trial(_config(0.0, 20), 1, {"20": {"test_acc": 0.2}}),
        _trial(_config(0.1, 20), 0, {"20": {"test_acc": 0.3}}),
    )
    found = collect(trials, constant_schedule=False)
    assert {k: v.results["test_acc"] for k, v in found.items()} == {
        _key(0.0, 20, 0): 0.1,
        _key(0.0, 20, 1): 0.2,
        _key(0.1, 20, 0): 0.3,
    }


# ----------------------------------------------------------------------------- analyse


def _cells(
    factors: dict[str, list[Any]],
    values: dict[tuple[Any, ...], dict[int, dict[str, float]]],
) -> list[dict[str, Any]]:
    """Hand-made cells in `build_cells` order; `values[levels tuple]` is the per_seed."""
    cells = []
    for combo in itertools.product(*factors.values()):
        levels = dict(zip(factors, combo, strict=True))
        cells.append({"label": describe(levels), "levels": levels, "per_seed": values[combo]})
    return cells


def _random_values(
    factors: dict[str, list[Any]], metrics: list[str], seeds: list[int], seed: int = 0
) -> dict[tuple[Any, ...], dict[int, dict[str, float]]]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, combo in enumerate(itertools.product(*factors.values())):
        out[combo] = {
            s: {m: round(float(0.80 + 0.01 * i + rng.normal(0, 0.01)), 4) for m in metrics}
            for s in seeds
        }
    return out


def _expected_pairs(cells: list[dict[str, Any]], factors: dict[str, list[Any]]) -> set[tuple]:
    """(factor, first, second) of every pair of cells that differ in exactly one factor, the
    first being the cell at the later level."""
    expected = set()
    for i, j in itertools.combinations(range(len(cells)), 2):
        li, lj = cells[i]["levels"], cells[j]["levels"]
        differ = [f for f in factors if li[f] != lj[f]]
        if len(differ) == 1:
            (f,) = differ
            later = factors[f].index(li[f]) > factors[f].index(lj[f])
            expected.add((f, i, j) if later else (f, j, i))
    return expected


TWO_BY_TWO = {"label_smoothing": [0.0, 0.1], "epochs": [20, 60]}
METRICS = ["test_acc", "test_ece"]


def test_analyse_cell_summaries_equal_stats_summarize() -> None:
    values = _random_values(TWO_BY_TWO, METRICS, list(range(6)))
    values[0.1, 60] = {s: v for s, v in values[0.1, 60].items() if s != 2}
    cells = _cells(TWO_BY_TWO, values)
    result = analyse(cells, TWO_BY_TWO, METRICS)
    assert len(result["cells"]) == 4
    for cell, out in zip(cells, result["cells"], strict=True):
        seeds = sorted(cell["per_seed"])
        assert out["seeds"] == seeds
        assert out["label"] == cell["label"]
        assert out["levels"] == cell["levels"]
        assert "per_seed" not in out
        for metric in METRICS:
            per_seed = [cell["per_seed"][s][metric] for s in seeds]
            assert out["metrics"][metric] == {
                **asdict(stats.summarize(per_seed)),
                "per_seed": per_seed,
            }
    assert result["cells"][3]["metrics"]["test_acc"]["n"] == 5


def test_analyse_empty_cell_has_no_summary() -> None:
    factors = {"epochs": [20, 60]}
    cells = _cells(factors, {(20,): {0: {"test_acc": 0.5}, 1: {"test_acc": 0.6}}, (60,): {}})
    result = analyse(cells, factors, ["test_acc"])
    assert result["cells"][1]["metrics"] == {"test_acc": None}
    (pair,) = result["comparisons"]["test_acc"]
    assert pair["n"] == 0
    assert "no seed has both cells" in pair["verdict"]
    json.dumps(result, allow_nan=False)
    assert to_markdown({"study": "s", "metrics": ["test_acc"], "notes": [], **result})


def test_analyse_pairs_means_and_holm() -> None:
    seeds = list(range(8))
    values = _random_values(TWO_BY_TWO, METRICS, seeds, seed=1)
    # Seed 4 is missing from one cell and seed 9 only exists in another.
    values[0.1, 60] = {s: v for s, v in values[0.1, 60].items() if s != 4}
    values[0.1, 20] = {**values[0.1, 20], 9: {"test_acc": 0.9, "test_ece": 0.02}}
    cells = _cells(TWO_BY_TWO, values)
    result = analyse(cells, TWO_BY_TWO, METRICS)
    assert set(result["comparisons"]) == set(METRICS)
    expected = _expected_pairs(cells, TWO_BY_TWO)
    assert len(expected) == 4
    for metric in METRICS:
        pairs = result["comparisons"][metric]
        got = [(p["factor"], p["first"], p["second"]) for p in pairs]
        assert len(got) == len(set(got))  # each pair once
        assert set(got) == expected
        raw_p = []
        for pair in pairs:
            a, b = cells[pair["first"]], cells[pair["second"]]
            factor = pair["factor"]
            assert pair["metric"] == metric
            assert pair["first_level"] == a["levels"][factor]
            assert pair["second_level"] == b["levels"][factor]
            assert pair["at"] == {f: v for f, v in a["levels"].items() if f != factor}
            common = sorted(set(a["per_seed"]) & set(b["per_seed"]))
            assert pair["seeds"] == common
            assert pair["n"] == len(common)
            assert 9 not in common
            if cells.index(a) == 3 or cells.index(b) == 3:
                assert common == [0, 1, 2, 3, 5, 6, 7]
            else:
                assert common == seeds
            xa = np.array([a["per_seed"][s][metric] for s in common])
            xb = np.array([b["per_seed"][s][metric] for s in common])
            assert pair["mean"] == pytest.approx(float(np.mean(xa - xb)), rel=1e-12, abs=1e-15)
            assert pair["std"] == pytest.approx(float(np.std(xa - xb, ddof=1)), rel=1e-9)
            p = float(st.ttest_rel(xa, xb).pvalue)
            assert pair["t_pvalue"] == pytest.approx(p, rel=1e-9)
            raw_p.append(pair["t_pvalue"])
        holm = stats.holm(raw_p)
        assert [p["t_pvalue_holm"] for p in pairs] == holm
        # Holm by hand for the smallest p-value: m · p.
        smallest = min(range(len(raw_p)), key=raw_p.__getitem__)
        assert pairs[smallest]["t_pvalue_holm"] == pytest.approx(min(1.0, 4 * raw_p[smallest]))
    # The verdicts: every pair's, metric by metric, then the factorial's.
    assert result["verdicts"] == [
        *[p["verdict"] for m in METRICS for p in result["comparisons"][m]],
        *[result["factorial"][m]["verdict"] for m in METRICS],
    ]


def test_analyse_first_is_the_later_level_in_grid_order() -> None:
    factors = {"epochs": [60, 20]}  # the grid lists 60 first
    values = {
        (60,): {s: {"test_acc": 0.90 + 0.001 * s} for s in range(4)},
        (20,): {s: {"test_acc": 0.85 + 0.002 * s} for s in range(4)},
    }
    cells = _cells(factors, values)
    (pair,) = analyse(cells, factors, ["test_acc"])["comparisons"]["test_acc"]
    assert (pair["first"], pair["second"]) == (1, 0)
    assert (pair["first_level"], pair["second_level"]) == (20, 60)
    assert pair["mean"] < 0
    assert pair["verdict"].startswith("test accuracy: 20 vs 60 epochs:")


def test_analyse_two_by_two_decomposition() -> None:
    seeds = list(range(6))
    values = _random_values(TWO_BY_TWO, METRICS, seeds, seed=2)
    values[0.0, 60] = {s: v for s, v in values[0.0, 60].items() if s != 5}
    cells = _cells(TWO_BY_TWO, values)
    result = analyse(cells, TWO_BY_TWO, METRICS)
    factorial = result["factorial"]
    assert factorial is not None
    assert set(factorial) == set(METRICS)
    common = [0, 1, 2, 3, 4]
    for metric in METRICS:
        f = factorial[metric]
        assert f["factors"] == ["label_smoothing", "epochs"]
        assert f["cells"] == {
            "a": "ε 0, 20 epochs",
            "b": "ε 0.1, 20 epochs",
            "c": "ε 0, 60 epochs",
            "d": "ε 0.1, 60 epochs",
        }
        assert f["seeds"] == common
        assert f["n"] == len(common)
        a, b, c, d = (
            np.array([values[key][s][metric] for s in common])
            for key in ((0.0, 20), (0.1, 20), (0.0, 60), (0.1, 60))
        )
        by_hand = {
            "first_main": (b + d - a - c) / 2,
            "second_main": (c + d - a - b) / 2,
            "interaction": (d - c) - (b - a),
            "first_simple": b - a,
            "second_simple": c - a,
            "total": d - a,
        }
        for name, expected in by_hand.items():
            assert f[name]["per_seed"] == pytest.approx(expected.tolist(), abs=1e-12), name
            assert f[name]["n"] == len(common)
            assert f[name]["mean"] == pytest.approx(float(expected.mean()), abs=1e-12), name
        total = np.array(f["total"]["per_seed"])
        parts = (
            np.array(f["first_simple"]["per_seed"])
            + np.array(f["second_simple"]["per_seed"])
            + np.array(f["interaction"]["per_seed"])
        )
        np.testing.assert_allclose(total, parts, atol=1e-12)
        assert f"over {len(common)} seeds" in f["verdict"]
        assert "interaction" in f["verdict"]
        assert "ε 0 → ε 0.1" in f["verdict"]
        assert "20 epochs → 60 epochs" in f["verdict"]


def test_analyse_three_levels_give_every_pair() -> None:
    factors = {"label_smoothing": [0.0, 0.05, 0.1], "epochs": [20, 60]}
    cells = _cells(factors, _random_values(factors, ["test_acc"], list(range(5)), seed=3))
    result = analyse(cells, factors, ["test_acc"])
    pairs = result["comparisons"]["test_acc"]
    by_factor = {f: [p for p in pairs if p["factor"] == f] for f in factors}
    assert len(by_factor["label_smoothing"]) == math.comb(3, 2) * 2
    assert len(by_factor["epochs"]) == math.comb(2, 2) * 3
    for epochs in (20, 60):
        at = [p for p in by_factor["label_smoothing"] if p["at"] == {"epochs": epochs}]
        assert sorted((p["second_level"], p["first_level"]) for p in at) == [
            (0.0, 0.05),
            (0.0, 0.1),
            (0.05, 0.1),
        ]
    got = {(p["factor"], p["first"], p["second"]) for p in pairs}
    assert got == _expected_pairs(cells, factors)
    assert len(got) == len(pairs) == 9
    assert [p["t_pvalue_holm"] for p in pairs] == stats.holm([p["t_pvalue"] for p in pairs])
    assert result["factorial"] is None
    assert len(result["verdicts"]) == 9


def test_analyse_one_factor_has_no_factorial() -> None:
    factors = {"lr": [1e-3, 3e-4]}
    cells = _cells(factors, _random_values(factors, METRICS, list(range(5)), seed=4))
    result = analyse(cells, factors, METRICS)
    assert result["factorial"] is None
    assert [len(result["comparisons"][m]) for m in METRICS] == [1, 1]
    assert len(result["verdicts"]) == 2
    pair = result["comparisons"]["test_acc"][0]
    assert (pair["first_level"], pair["second_level"]) == (3e-4, 1e-3)
    assert pair["verdict"].startswith("test accuracy: lr 0.0003 vs lr 0.001:")


# ----------------------------------------------------------------------------- verdicts


BASE_ACC = [0.851, 0.862, 0.843, 0.870, 0.855, 0.848, 0.866, 0.859]
NOISE = [0.001, -0.001, 0.0005, -0.0005, 0.0015, -0.0015, 0.0002, -0.0002]  # sums to 0


def _two_cells(
    shift: dict[str, list[float]], metrics: list[str], seeds: list[int] | None = None
) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """Cells ε 0 and ε 0.1, the second being the first plus `shift[metric]` on each seed."""
    seeds = list(range(8)) if seeds is None else seeds
    factors = {"label_smoothing": [0.0, 0.1]}
    low = {s: {m: BASE_ACC[i] for m in metrics} for i, s in enumerate(seeds)}
    high = {s: {m: low[s][m] + shift[m][i] for m in metrics} for i, s in enumerate(seeds)}
    return _cells(factors, {(0.0,): low, (0.1,): high}), factors


def _t_interval_text(diffs: list[float]) -> str:
    x = np.array(diffs)
    low, high = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
    return f"[{low * 100:+.2f} pp, {high * 100:+.2f} pp]"


def test_verdict_clear_differences_in_both_directions() -> None:
    shift = {
        "test_acc": [0.008 + e for e in NOISE],  # higher is better: better
        "val_acc": [-0.008 + e for e in NOISE],  # higher is better: worse
        "test_ece": [-0.008 + e for e in NOISE],  # lower is better: better
        "val_ece": [0.008 + e for e in NOISE],  # lower is better: worse
    }
    metrics = list(shift)
    cells, factors = _two_cells(shift, metrics)
    result = analyse(cells, factors, metrics)
    words = {"test_acc": "better", "val_acc": "worse", "test_ece": "better", "val_ece": "worse"}
    for metric in metrics:
        (pair,) = result["comparisons"][metric]
        verdict = pair["verdict"]
        assert pair["t_pvalue_holm"] < 0.001
        sign = "+" if shift[metric][0] > 0 else "-"
        assert f"{sign}0.80 pp" in verdict
        diffs = [
            cells[1]["per_seed"][s][metric] - cells[0]["per_seed"][s][metric] for s in range(8)
        ]
        assert _t_interval_text(diffs) in verdict
        assert show_interval(metric, pair["ci"]) in verdict
        assert "over 8 seeds" in verdict
        assert f"ε 0.1 is {words[metric]} beyond seed noise" in verdict
        assert "not distinguishable" not in verdict
        assert "p = " in verdict and "Holm" in verdict
    assert "test accuracy: ε 0.1 vs ε 0:" in result["comparisons"]["test_acc"][0]["verdict"]
    assert "test ECE: ε 0.1 vs ε 0:" in result["comparisons"]["test_ece"][0]["verdict"]
    json.dumps(result, allow_nan=False)


def test_verdict_noise_says_how_many_seeds_would_detect() -> None:
    diffs = [0.012, -0.008, 0.010, -0.006, 0.011, -0.007, 0.009, -0.005]  # mean 0.002
    cells, factors = _two_cells({"test_acc": diffs}, ["test_acc"])
    (pair,) = analyse(cells, factors, ["test_acc"])["comparisons"]["test_acc"]
    verdict = pair["verdict"]
    assert pair["t_pvalue_holm"] >= 0.05
    assert "+0.20 pp" in verdict
    assert _t_interval_text(diffs) in verdict
    assert "over 8 seeds" in verdict
    assert "not distinguishable from seed noise" in verdict
    assert f"about {pair['seeds_needed']} seeds would detect" in verdict
    assert pair["seeds_needed"] > 8
    assert "better" not in verdict and "worse" not in verdict


def test_verdict_show_formats() -> None:
    assert show("test_acc", 0.008, signed=True) == "+0.80 pp"
    assert show("test_ece", -0.0123, signed=True) == "-1.23 pp"
    assert show("test_acc", 0.821) == "82.10 %"
    assert show("test_nll", 0.41234) == "0.4123"
    assert show("test_nll", -0.05, signed=True) == "-0.0500"
    assert show("test_acc", None) == "n/a"
    assert show_interval("test_acc", None) == "[n/a]"
    assert show_interval("test_acc", {"low": -0.001, "high": 0.002}) == "[-0.10 pp, +0.20 pp]"


# Exactly representable values: every difference is exactly 0.125 (or 0.0625, 0.1875).
EXACT = [0.75, 0.8125, 0.78125, 0.6875, 0.71875, 0.765625, 0.796875, 0.703125]


@pytest.mark.parametrize("step", [0.125, 0.0])
def test_identical_differences_give_no_nan(step: float) -> None:
    seeds = list(range(8))
    values = {
        (0.0, 20): {s: {"test_acc": EXACT[s], "test_nll": EXACT[s]} for s in seeds},
        (0.1, 20): {s: {"test_acc": EXACT[s] + step, "test_nll": EXACT[s]} for s in seeds},
        (0.0, 60): {s: {"test_acc": EXACT[s] + step / 2, "test_nll": EXACT[s]} for s in seeds},
        (0.1, 60): {s: {"test_acc": EXACT[s] + 1.5 * step, "test_nll": EXACT[s]} for s in seeds},
    }
    metrics = ["test_acc", "test_nll"]
    cells = _cells(TWO_BY_TWO, values)
    result = analyse(cells, TWO_BY_TWO, metrics)
    for metric in metrics:
        for pair in result["comparisons"][metric]:
            assert pair["identical"] is True
            assert "identical on every one of 8 seeds" in pair["verdict"]
    (eps_at_20, *_) = result["comparisons"]["test_acc"]
    assert f"({step * 100:+.2f} pp)" in eps_at_20["verdict"]
    rep = {"study": "s", "metrics": metrics, "notes": [], **result}
    text = json.dumps(rep, allow_nan=False)
    assert not NAN_WORD.search(text)
    assert not NAN_WORD.search(to_markdown(rep))
    interaction = result["factorial"]["test_acc"]["interaction"]
    assert interaction["std"] == 0.0
    assert interaction["mean"] == 0.0


def test_one_shared_seed_says_no_interval() -> None:
    factors = {"epochs": [20, 60]}
    values = {
        (20,): {0: {"test_acc": 0.80}, 1: {"test_acc": 0.81}, 2: {"test_acc": 0.82}},
        (60,): {2: {"test_acc": 0.85}, 3: {"test_acc": 0.84}, 4: {"test_acc": 0.86}},
    }
    cells = _cells(factors, values)
    result = analyse(cells, factors, ["test_acc"])
    (pair,) = result["comparisons"]["test_acc"]
    assert pair["seeds"] == [2]
    assert pair["n"] == 1
    assert pair["ci"] is None
    assert pair["mean"] == pytest.approx(0.03)
    assert "+3.00 pp on 1 seed: no interval" in pair["verdict"]
    rep = {"study": "s", "metrics": ["test_acc"], "notes": [], **result}
    text = json.dumps(rep, allow_nan=False)
    assert not NAN_WORD.search(text)
    assert "[n/a]" in to_markdown(rep)


# ----------------------------------------------------------------------------- to_markdown


def _section(markdown: str, title: str) -> list[str]:
    lines = markdown.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("### ")), len(lines))
    return [line for line in lines[start:end] if line]


def test_to_markdown_tables_and_verdicts() -> None:
    seeds = list(range(5))
    values = _random_values(TWO_BY_TWO, METRICS, seeds, seed=5)
    values[0.1, 60] = {s: v for s, v in values[0.1, 60].items() if s != 0}
    cells = _cells(TWO_BY_TWO, values)
    analysis = analyse(cells, TWO_BY_TWO, METRICS)
    rep = {
        "study": "digits compare label_smoothing=0,0.1 epochs=20,60",
        "search_study": "digits",
        "grid": TWO_BY_TWO,
        "base": asdict(BASE),
        "seeds": seeds,
        "metrics": METRICS,
        "select_epoch": "best",
        "notes": ["a note about the seeds"],
        **analysis,
    }
    json.dumps(rep, allow_nan=False)
    markdown = to_markdown(rep)
    assert markdown.startswith(f"## {rep['study']}\n")
    assert "- a note about the seeds" in markdown.splitlines()

    table = _section(markdown, "### Cells")
    assert table[0] == "| cell | n | test_acc | test_ece |"
    assert table[1] == "| --- | --- | --- | --- |"
    rows = table[2:]
    assert len(rows) == len(cells)
    for row, out in zip(rows, analysis["cells"], strict=True):
        assert row.startswith(f"| {out['label']} | {len(out['seeds'])} | ")
        mean = out["metrics"]["test_acc"]["mean"]
        assert f"{mean * 100:.2f} %" in row
        assert row.count("|") == 5
    assert rows[3].startswith("| ε 0.1, 60 epochs | 4 | ")

    pairs = _section(markdown, "### Paired differences (first − second, by seed)")
    assert pairs[0].startswith("| metric | first | second | n |")
    assert len(pairs) == 2 + sum(len(analysis["comparisons"][m]) for m in METRICS)

    verdicts = _section(markdown, "### Verdicts")
    assert verdicts == [f"- {v}" for v in analysis["verdicts"]]
    assert len(verdicts) == 4 * 2 + 2  # 4 pairs and 1 factorial per metric


def _request(grid: dict[str, list[Any]], seeds: list[int], metrics: list[str]) -> Request:
    """A comparison request under the bundled digits study with a constant learning rate."""
    from lsearch.spec import load_spec

    return Request(
        spec=load_spec("digits", ['train.schedule="constant"']),
        grid=grid,
        base=BASE,
        seeds=seeds,
        metrics=metrics,
        search_study="digits",
        name="digits compare",
        notes=("a request note",),
    )


def test_report_from_a_study_renders() -> None:
    """`comparison.summarise` on an in-memory comparison study: its dict feeds `to_markdown`."""
    grid = {"label_smoothing": [0.0, 0.1], "epochs": [20, 60]}
    seeds = [0, 1, 2, 3, 4]
    request = _request(grid, seeds, ["test_acc", "test_ece"])
    rng = np.random.default_rng(7)
    study = optuna.create_study()
    for epsilon, seed in itertools.product(grid["label_smoothing"], seeds):
        held_out = {
            str(n): {m: float(rng.uniform(0.7, 0.9)) for m in DEFAULT_METRICS} for n in (20, 60)
        }
        study.add_trial(_trial(_config(epsilon, 60), seed, held_out))
    rep = summarise(request, study)
    text = json.dumps(rep, allow_nan=False)
    assert not NAN_WORD.search(text)
    assert [c["label"] for c in rep["cells"]] == [c.label for c in request.cells]
    assert all(c["seeds"] == seeds for c in rep["cells"])
    assert rep["cells"][0]["trials"] == [0, 1, 2, 3, 4]
    assert "a request note" in rep["notes"]
    assert any("read from the first 20 epochs of the 60-epoch runs" in n for n in rep["notes"])
    markdown = to_markdown(rep)
    cells_table = _section(markdown, "### Cells")
    assert len(cells_table) == 2 + 4
    assert _section(markdown, "### Verdicts") == [f"- {v}" for v in rep["verdicts"]]


def test_report_notes_a_seed_left_out_for_a_missing_metric() -> None:
    """A seed-run whose results lack one requested metric is left out of its cell (for every
    metric); like a failed or untrained seed, that has to be said in the notes."""
    grid = {"label_smoothing": [0.0, 0.1]}
    seeds = [0, 1, 2, 3]
    request = _request(grid, seeds, ["test_acc", "test_ece"])
    study = optuna.create_study()
    for epsilon, seed in itertools.product(grid["label_smoothing"], seeds):
        results = {"test_acc": 0.8 + 0.01 * seed + epsilon / 10, "test_ece": 0.05 + 0.001 * seed}
        if seed == 0:  # recorded by a version that did not compute test_ece
            del results["test_ece"]
        study.add_trial(_trial(_config(epsilon, 20), seed, {"20": results}))
    rep = summarise(request, study)
    assert [c["seeds"] for c in rep["cells"]] == [[1, 2, 3], [1, 2, 3]]
    assert any("seed 0" in note for note in rep["notes"]), rep["notes"]


# ----------------------------------------------------------------------------- checks


def test_check_seeds() -> None:
    with pytest.raises(UserError, match="at least 2 seeds"):
        check_seeds([0])
    with pytest.raises(UserError):
        check_seeds([])
    (note,) = check_seeds([0, 1, 2])
    assert note.startswith("warning")
    assert "3 seeds" in note
    assert check_seeds([0, 1, 2, 3, 4]) == ()
    assert check_seeds(list(range(ADVISED_SEEDS))) == ()
    assert len(check_seeds(list(range(ADVISED_SEEDS - 1)))) == 1


def test_check_metrics() -> None:
    with pytest.raises(UserError, match="bogus"):
        check_metrics(["test_acc", "bogus"])
    assert check_metrics([]) == list(DEFAULT_METRICS)
    assert check_metrics(["test_acc", "val_nll", "test_acc"]) == ["test_acc", "val_nll"]
    assert check_metrics(list(ALL_METRICS)) == list(ALL_METRICS)


# ----------------------------------------------------------------------------- the loop's schedule


def _seed_run(seed: int, state: TrialState, **attrs: Any) -> optuna.trial.FrozenTrial:
    """A comparison trial of seed `seed` (ε 0.1, 20 epochs), as the one trial loop sees it."""
    from optuna.distributions import FloatDistribution, IntDistribution

    config = _config(0.1, 20)
    distributions = {
        "label_smoothing": FloatDistribution(0.1, 0.1),
        "epochs": IntDistribution(20, 20),
        "lr": FloatDistribution(3e-4, 3e-4, log=True),
        "trainable_layers": IntDistribution(3, 3),
        "seed": IntDistribution(seed, seed),
    }
    value = 0.5 if state == TrialState.COMPLETE else None
    return create_trial(
        state=state,
        value=value,
        params={**config, "seed": seed},
        distributions=distributions,
        user_attrs={"config": config, "seeds": [seed], **attrs},
    )


def test_a_comparison_s_schedule_trains_waits_and_stops_as_its_seed_runs_stand() -> None:
    """SeedRunsLeft, what the one trial loop asks before each trial of a comparison: train
    while a seed-run is unstarted or a retry waits, wait while only others run the last ones,
    stop once every one is complete or failed for a reason (out of memory: after two tries)."""
    from lsearch.comparison import SeedRunsLeft
    from lsearch.search.loop import Step

    plans = [Plan(TrialConfig(0.1, 20, 3e-4, 3), seed, ()) for seed in (0, 1)]
    schedule = SeedRunsLeft(plans)
    done = _seed_run(0, TrialState.COMPLETE)
    oom = {"fail_reason": "OutOfMemoryError: out of memory", "out_of_memory": True}
    assert schedule.next_step([]) is Step.TRIAL
    assert schedule.next_step([done]) is Step.TRIAL
    assert schedule.next_step([done, _seed_run(1, TrialState.RUNNING)]) is Step.WAIT
    retry = create_trial(state=TrialState.WAITING)
    assert schedule.next_step([done, _seed_run(1, TrialState.RUNNING), retry]) is Step.TRIAL
    assert schedule.next_step([done, _seed_run(1, TrialState.COMPLETE)]) is Step.STOP
    poison = _seed_run(1, TrialState.FAIL, fail_reason="ValueError: poison")
    assert schedule.next_step([done, poison]) is Step.STOP
    assert schedule.next_step([done, _seed_run(1, TrialState.FAIL, **oom)]) is Step.TRIAL
    twice = [_seed_run(1, TrialState.FAIL, **oom), _seed_run(1, TrialState.FAIL, **oom)]
    assert schedule.next_step([done, *_numbered(*twice)]) is Step.STOP
    assert schedule.done_after(optuna.create_study(), done) is False


def test_workers_choosing_at_the_same_moment_claim_different_seed_runs() -> None:
    """Two trials asked for at the same moment, neither with a seed-run yet: the later one
    takes the next free seed-run, not the one the earlier is taking; a seed-run started,
    complete or failed for a reason is never claimed again."""
    from lsearch.comparison import NothingLeft, SeedRunObjective

    plans = [Plan(TrialConfig(0.1, 20, 3e-4, 3), seed, ()) for seed in (0, 1, 2)]
    study = optuna.create_study()
    study.add_trial(_seed_run(0, TrialState.COMPLETE))
    study.add_trial(create_trial(state=TrialState.RUNNING))  # 1: still choosing
    study.add_trial(create_trial(state=TrialState.RUNNING))  # 2: still choosing
    objective = SeedRunObjective(None, None, plans)  # type: ignore[arg-type]
    assert objective.next_plan(study, 1).seed == 1
    assert objective.next_plan(study, 2).seed == 2
    study.add_trial(_seed_run(1, TrialState.RUNNING))
    study.add_trial(_seed_run(2, TrialState.FAIL, fail_reason="ValueError: poison"))
    with pytest.raises(NothingLeft):
        objective.next_plan(study, 5)


def test_two_workers_that_claim_one_seed_run_at_once_train_it_once() -> None:
    """Two workers choosing at the same moment with one seed-run free both take it (the
    picking rank cannot part them: 1 % 1 == 0). Each checks after writing its claim: the one
    that sees the other's claim yields (duplicate_of, nothing trained), and a yielded trial
    does not count as a failed seed-run. Like every failed trial, it says why."""
    from lsearch.comparison import NothingLeft, SeedRunObjective, failed_keys

    plan = Plan(TrialConfig(0.1, 20, 3e-4, 3), 0, ())
    study = optuna.create_study()
    other, own = study.ask(), study.ask()  # both RUNNING, neither has chosen yet

    def planner(trials: object) -> list[Plan]:
        # The other worker writes its claim just after this one read the trials.
        other.suggest_float("label_smoothing", 0.1, 0.1)
        for name, value in (("epochs", 20), ("trainable_layers", 3), ("seed", 0)):
            other.suggest_int(name, value, value)
        other.suggest_float("lr", 3e-4, 3e-4, log=True)
        return [plan]

    objective = SeedRunObjective(None, None, planner)  # type: ignore[arg-type]
    with pytest.raises(NothingLeft, match="trial 0 took this seed-run first"):
        objective(own)
    assert own.user_attrs["duplicate_of"] == 0
    assert "nothing trained" in own.user_attrs["fail_reason"]
    study.tell(own, state=TrialState.FAIL)
    assert failed_keys(study.get_trials(deepcopy=False)) == {}
