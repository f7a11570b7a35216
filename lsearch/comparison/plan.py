"""Cells and seed-runs: the grid's full factorial, the results a comparison study already
holds, and the seed-runs still to train.

Under a constant learning rate a run of E epochs is exactly the first E epochs of a longer
run with the same ε, lr, layers and seed (early stopping included), so cells that differ
only in epochs train once, at the most epochs, and the shorter cells are read from that run
(test metrics included: they are computed after E epochs, on the model chosen by then).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lsearch.analysis.verdict import describe
from lsearch.search.objective import TrialConfig
from lsearch.store.catalog import (
    CONFIG_ATTR,
    DUPLICATE_ATTR,
    FAIL_REASON_ATTR,
    HELD_OUT_ATTR,
    OUT_OF_MEMORY_ATTR,
    SEEDS_RUN_ATTR,
)

if TYPE_CHECKING:
    from lsearch.comparison.request import Request

Key = tuple[float, int, float, int, int]  # label_smoothing, epochs, lr, layers, seed

# A seed-run that ran out of device memory is tried this many times in all before it is
# left failed: another worker on the same GPU may have caused it.
OUT_OF_MEMORY_TRIES = 2


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid."""

    config: TrialConfig
    levels: dict[str, float | int]  # the grid's factors and this cell's level of each

    @property
    def label(self) -> str:
        """The cell's levels in words (its whole configuration for a one-cell evaluation)."""
        if not self.levels:
            return describe(asdict(self.config))
        return describe(self.levels)


def build_cells(grid: dict[str, list[float | int]], base: TrialConfig) -> list[Cell]:
    """The full factorial of the grid's levels, the first factor varying slowest."""
    names = list(grid)
    cells = []
    for combo in itertools.product(*(grid[name] for name in names)):
        levels = dict(zip(names, combo, strict=True))
        cells.append(Cell(TrialConfig(**{**asdict(base), **levels}), levels))
    return cells


def fresh_seeds(used: Sequence[int], count: int) -> list[int]:
    """`count` seeds after the largest one a search used: seeds that chose a configuration
    carry their luck into its numbers, so the configuration is measured on new ones."""
    start = max(used, default=-1) + 1
    return list(range(start, start + count))


def key_of(config: TrialConfig | dict[str, Any], seed: int) -> Key:
    """The key of a seed-run: its configuration and seed, as plain numbers."""
    c = asdict(config) if isinstance(config, TrialConfig) else config
    return (
        float(c["label_smoothing"]), int(c["epochs"]), float(c["lr"]),
        int(c["trainable_layers"]), int(seed),
    )  # fmt: skip


@dataclass(frozen=True)
class Found:
    """One cell-seed result and where it came from."""

    results: dict[str, Any]
    trial: int
    trained_epochs: int  # the planned epochs of the run it was read from


def collect(trials: Sequence[FrozenTrial], constant_schedule: bool) -> dict[Key, Found]:
    """Every cell-seed result the study's complete trials hold, keyed by configuration and
    seed; the lowest trial number wins a duplicate, and under a constant learning rate a
    run's shorter epoch counts count too. A run's own epochs beat a read-off."""
    found: dict[Key, Found] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state != TrialState.COMPLETE or "held_out" not in trial.user_attrs:
            continue
        config = trial.user_attrs[CONFIG_ATTR]
        seed = trial.user_attrs[SEEDS_RUN_ATTR][0]
        for count_text, results in trial.user_attrs[HELD_OUT_ATTR].items():
            count = int(count_text)
            if count != config["epochs"] and not constant_schedule:
                continue
            key = key_of({**config, "epochs": count}, seed)
            own = count == config["epochs"]
            if key not in found or (own and found[key].trained_epochs != count):
                found[key] = Found(results, trial.number, config["epochs"])
    return found


def trial_key(trial: FrozenTrial) -> Key | None:
    """The seed-run a trial trained (None for one that never chose a seed-run)."""
    if "seed" in trial.params:
        return key_of(trial.params, int(trial.params["seed"]))
    attrs = trial.user_attrs
    if CONFIG_ATTR in attrs and attrs.get(SEEDS_RUN_ATTR):
        return key_of(attrs[CONFIG_ATTR], attrs[SEEDS_RUN_ATTR][0])
    return None


def failed_keys(trials: Sequence[FrozenTrial]) -> dict[Key, str]:
    """Seed-runs that failed for a reason (a NaN loss, an exception, out of memory twice):
    not trained again, by this run or a rerun. A seed-run that ran out of memory fewer
    than OUT_OF_MEMORY_TRIES times is tried again."""
    failed: dict[Key, str] = {}
    out_of_memory: dict[Key, int] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        reason = trial.user_attrs.get(FAIL_REASON_ATTR)
        key = trial_key(trial)
        if trial.state != TrialState.FAIL or not reason or key is None:
            continue
        if DUPLICATE_ATTR in trial.user_attrs:  # it yielded to another worker's claim
            continue
        if trial.user_attrs.get(OUT_OF_MEMORY_ATTR):
            out_of_memory[key] = out_of_memory.get(key, 0) + 1
            if out_of_memory[key] < OUT_OF_MEMORY_TRIES:
                continue
        failed.setdefault(key, reason)
    return failed


@dataclass(frozen=True)
class Plan:
    """One seed-run to train: a configuration, a seed, and the shorter epoch counts whose
    results are read from it."""

    config: TrialConfig
    seed: int
    test_at: tuple[int, ...]

    @property
    def key(self) -> Key:
        """The seed-run's key (see key_of)."""
        return key_of(self.config, self.seed)


def plan_runs(
    cells: Sequence[Cell],
    seeds: Sequence[int],
    found: dict[Key, Found],
    failed: dict[Key, str],
    constant_schedule: bool,
) -> list[Plan]:
    """The seed-runs still to train so that every cell has every seed."""
    wanted = list(itertools.product(cells, seeds))
    return plan_cell_seeds(wanted, found, failed, constant_schedule)


def plan_cell_seeds(
    wanted: Iterable[tuple[Cell, int]],
    found: dict[Key, Found],
    failed: dict[Key, str],
    constant_schedule: bool,
) -> list[Plan]:
    """The seed-runs that give each (cell, seed) wanted its result, unless it has one or
    failed for a reason; under a constant learning rate the runs of one ε, lr, layers and
    seed are one run, at the most epochs."""
    missing: dict[tuple[float, float, int, int], set[int]] = {}
    for cell, seed in wanted:
        key = key_of(cell.config, seed)
        if key in found or key in failed:
            continue
        c = cell.config
        group = (c.label_smoothing, c.lr, c.trainable_layers, seed)
        missing.setdefault(group, set()).add(c.epochs)
    plans = []
    for (epsilon, lr, layers, seed), counts in missing.items():
        if constant_schedule:
            longest = max(counts)
            config = TrialConfig(epsilon, longest, lr, layers)
            plans.append(Plan(config, seed, tuple(sorted(counts - {longest}))))
        else:
            plans.extend(
                Plan(TrialConfig(epsilon, count, lr, layers), seed, ()) for count in sorted(counts)
            )
    return plans


def pending_plans(request: Request, study: optuna.Study | None) -> list[Plan]:
    """The seed-runs the comparison still has to train (a race's: those it wants now)."""
    trials = [] if study is None else study.get_trials(deepcopy=False)
    if request.race is not None:
        from lsearch.comparison.race import race_plans

        return race_plans(request, trials)
    found = collect(trials, request.constant_schedule)
    return plan_runs(
        request.cells, request.seeds, found, failed_keys(trials), request.constant_schedule
    )
