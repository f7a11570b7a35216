"""A race (`lsearch compare --seeds auto`): seeds only where a comparison is still open.

Every cell starts with the race's start seeds (the fewest at which the anytime-valid interval
at the family's split α can exclude anything: `lsearch.analysis.racing`). After that, each
comparison still undecided asks for the next seed that both its cells lack, in the race's
seed order, until it is decided or its cells have `max_seeds`. The seed-runs wanted are
recomputed from the study before every trial, by every worker, so a rerun continues where the
race stopped and several workers share it through the storage. Seeds in flight are skipped,
not waited for: while one worker trains a seed-run an open comparison needs, another takes the
comparison's next seed, and the next after that when it finishes first, and so on. Those
seed-runs are wasted when the one in flight decides the comparison; how many there are
depends on how many the other workers finish meanwhile, not on their number alone, so the
only bound is `max_seeds` on every cell (the fixed design).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lsearch.analysis.racing import Race, family_size, open_cells, sequential_block, start_seeds
from lsearch.comparison.plan import (
    Cell,
    Found,
    Key,
    Plan,
    collect,
    failed_keys,
    key_of,
    plan_cell_seeds,
)
from lsearch.comparison.request import Request
from lsearch.errors import UserError
from lsearch.store.catalog import FAIL_REASON_ATTR

RACE_ATTR = "lsearch_race"  # a race's identity: what it decides on, and its margin


def race_seeds(first: Sequence[int], max_seeds: int) -> list[int]:
    """The race's seeds in order: `first`, then the next whole numbers, `max_seeds` in all.

    >>> race_seeds([0, 1, 2, 3, 4], 8)
    [0, 1, 2, 3, 4, 5, 6, 7]
    """
    seeds = list(first[:max_seeds])
    nxt = max(seeds, default=-1) + 1
    while len(seeds) < max_seeds:
        seeds.append(nxt)
        nxt += 1
    return seeds


def cell_values(
    cells: Sequence[Cell], seeds: Sequence[int], found: dict[Key, Found], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Each cell's levels and its per-seed values of `metrics`, as the analysis takes them
    (a seed without a result, or without one of the metrics, is left out)."""
    values = []
    for cell in cells:
        per_seed = {}
        for seed in seeds:
            hit = found.get(key_of(cell.config, seed))
            if hit is not None and all(m in hit.results for m in metrics):
                per_seed[seed] = {m: hit.results[m] for m in metrics}
        values.append({"label": cell.label, "levels": cell.levels, "per_seed": per_seed})
    return values


def _started(trials: Sequence[FrozenTrial]) -> set[Key]:
    started = set()
    for trial in trials:
        if trial.state in (TrialState.RUNNING, TrialState.WAITING) and "seed" in trial.params:
            started.add(key_of(trial.params, int(trial.params["seed"])))
    return started


def race_plans(request: Request, trials: Sequence[FrozenTrial]) -> list[Plan]:
    """The seed-runs the race wants now that no trial has started, seed by seed."""
    found = collect(trials, request.constant_schedule)
    failed, started = failed_keys(trials), _started(trials)
    race = _race(request)
    cells, seeds = request.cells, request.seeds
    block = sequential_block(cell_values(cells, seeds, found, race.decide_on), request.grid, race)
    wanted = {(i, seed) for i in range(len(cells)) for seed in seeds[: block["start_seeds"]]}
    for pair in open_cells(block):
        for seed in seeds:
            keys = {i: key_of(cells[i].config, seed) for i in pair}
            if any(key in failed for key in keys.values()):
                continue  # a failed seed-run leaves this seed out of the pair
            lacking = [i for i, key in keys.items() if key not in found]
            if not lacking:
                continue
            unstarted = [i for i in lacking if keys[i] not in started]
            if unstarted:
                wanted |= {(i, seed) for i in unstarted}
                break
            # Both lacking ones are in flight: the next seed is this worker's to start.
    wanted = {(i, s) for i, s in wanted if key_of(cells[i].config, s) not in started}
    ordered = sorted(wanted, key=lambda pair: (seeds.index(pair[1]), pair[0]))
    plans = plan_cell_seeds(
        [(cells[i], seed) for i, seed in ordered], found, failed, request.constant_schedule
    )
    return plans


def _race(request: Request) -> Race:
    assert request.race is not None, "a race's request carries its Race"
    return request.race


def check_identity(study: optuna.Study, request: Request, record: bool = True) -> None:
    """Refuse to continue a race under another hypothesis, a race as a fixed-seed
    comparison, or a fixed-seed comparison as a race; record a new race's identity (unless
    `record` is False: a dry run writes nothing)."""
    stored = study.user_attrs.get(RACE_ATTR)
    name = study.study_name
    if request.race is None:
        if stored is not None:
            raise UserError(
                f"comparison '{name}' is a race; continue it with --seeds auto and the same "
                "--decide-on and --margin, or pass --name for a comparison on fixed seeds"
            )
        return
    identity = request.race.identity()
    if stored is None:
        if any(FAIL_REASON_ATTR in t.user_attrs or t.params for t in study.trials):
            raise UserError(
                f"comparison '{name}' was trained on fixed seeds; pass --name to start a race"
            )
        if record:
            study.set_user_attr(RACE_ATTR, identity)
    elif stored != identity:
        raise UserError(
            f"race '{name}' decides on {', '.join(stored['decide_on'])} with margin "
            f"{stored['margin']}; rerun it with the same --decide-on and --margin, or pass "
            "--name to start a new race (choosing the hypothesis after seeing data voids "
            "the guarantee)"
        )


def cost(request: Request, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """Seed-runs the race trained (complete, or failed for a reason) against the fixed
    design of `max_seeds` on every cell."""
    trained = len(
        {
            key_of(t.params, int(t.params["seed"]))
            for t in trials
            if "seed" in t.params
            and (t.state == TrialState.COMPLETE or t.user_attrs.get(FAIL_REASON_ATTR))
        }
    )
    race = _race(request)
    return {
        "max_seeds": race.max_seeds,
        "trained": trained,
        "fixed_design": len(request.cells) * race.max_seeds,
        "done": not race_plans(request, trials) and not _started(trials),
    }


def race_start(request: Request) -> dict[str, Any]:
    """What a race starts with: its family, split α, start seeds and its budget."""
    race = _race(request)
    family = family_size(request.grid, race.decide_on)
    alpha_split = race.alpha / family
    return {
        "family": family,
        "alpha": race.alpha,
        "alpha_split": alpha_split,
        "start_seeds": start_seeds(alpha_split, race.prior_scale),
        "decide_on": list(race.decide_on),
        "margin": race.margin,
        "max_seeds": race.max_seeds,
        "fixed_design": len(request.cells) * race.max_seeds,
    }
