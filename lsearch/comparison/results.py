"""A comparison's results: every number recomputed from the per-seed results in its study,
the record of how often a search's configurations met the test set, and the request a
comparison study was last trained for.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any

import optuna
from optuna.trial import TrialState

from lsearch.analysis.answer import HEADLINE
from lsearch.analysis.racing import Race
from lsearch.comparison.plan import Cell, Found, Key, collect, failed_keys, key_of
from lsearch.comparison.race import RACE_ATTR
from lsearch.comparison.request import DEFAULT_METRICS, Request
from lsearch.errors import UserError
from lsearch.search.objective import TrialConfig
from lsearch.spec import StudySpec
from lsearch.store.catalog import (
    BASE_ATTR,
    CONFIG_ATTR,
    FINISHED,
    GRID_ATTR,
    HELD_OUT_ATTR,
    METRICS_ATTR,
    SEARCH_STUDY_ATTR,
    SEEDS_ATTR,
    SEEDS_RUN_ATTR,
    SPEC_ATTR,
    TEST_COUNT_ATTR,
    comparisons_of,
    find_study,
    is_comparison,
    study_names,
)
from lsearch.training.evaluation import pooled_reliability


def existing_comparison(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    """The comparison study `name`, or None when the storage has none of that name."""
    if find_study(storage, name) is None:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def seconds_per_seed_epoch(url: str, request: Request) -> float | None:
    """Measured training time per seed and epoch in the comparison and its search, read
    without creating anything (None when nothing has been timed)."""
    from lsearch.store.storage import open_storage

    try:
        storage = open_storage(url, must_exist=True)
    except UserError:
        return None
    seconds, epochs = 0.0, 0
    known = set(study_names(storage))
    for name in (request.name, request.search_study):
        if name not in known:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=FINISHED):
            attrs = trial.user_attrs
            if "train_seconds" in attrs and attrs.get("epochs_trained"):
                seconds += attrs["train_seconds"]
                epochs += attrs["epochs_trained"] * len(attrs.get(SEEDS_RUN_ATTR, [0]))
    return seconds / epochs if epochs else None


class _CellReader:
    """Reads each cell's per-seed results out of the found results, noting every seed left
    out and why."""

    def __init__(self, request: Request, found: dict[Key, Found], failed: dict[Key, str]):
        self.request = request
        self.found = found
        self.failed = failed
        self.notes = list(request.notes)
        self.seen_metrics: set[str] = set()

    def _result(self, cell: Cell, seed: int) -> Found | None:
        """The seed's result in the cell, or None (with a note) when it is left out."""
        key = key_of(cell.config, seed)
        if key in self.failed:
            self.notes.append(f"{cell.label}, seed {seed}: failed ({self.failed[key]}); left out")
            return None
        hit = self.found.get(key)
        if hit is None:
            if self.request.race is None:  # a race trains a cell's seeds only as it needs them
                self.notes.append(f"{cell.label}, seed {seed}: not trained yet; left out")
            return None
        self.seen_metrics |= set(hit.results)
        lacking = [metric for metric in self.request.metrics if metric not in hit.results]
        if lacking:
            self.notes.append(
                f"{cell.label}, seed {seed}: trial {hit.trial} has no {', '.join(lacking)} "
                "(recorded by an older lsearch); left out"
            )
            return None
        return hit

    def cell(self, cell: Cell) -> dict[str, Any]:
        """One cell's summary: its configuration, trials, per-seed metrics and reliability."""
        per_seed: dict[int, dict[str, float]] = {}
        reliability: dict[str, list[dict[str, Any]]] = {"": [], "_ts": []}
        trial_numbers, read_from = set(), set()
        for seed in self.request.seeds:
            hit = self._result(cell, seed)
            if hit is None:
                continue
            per_seed[seed] = {metric: hit.results[metric] for metric in self.request.metrics}
            for when in ("", "_ts"):
                reliability[when].extend(hit.results.get(f"test_reliability{when}_per_seed") or [])
            trial_numbers.add(hit.trial)
            if hit.trained_epochs != cell.config.epochs:
                read_from.add(hit.trained_epochs)
        if read_from:
            self.notes.append(
                f"{cell.label}: read from the first {cell.config.epochs} epochs of the "
                f"{'/'.join(map(str, sorted(read_from)))}-epoch runs (exact under the constant "
                "learning rate: a shorter run is the start of a longer one)"
            )
        both = reliability[""] and reliability["_ts"]
        return {
            "label": cell.label,
            "config": asdict(cell.config),
            "levels": cell.levels,
            "trials": sorted(trial_numbers),
            "per_seed": per_seed,
            # Test reliability bins pooled over the cell's seeds, before and after
            # temperature scaling (for reliability diagrams).
            "reliability": {
                "before": pooled_reliability(reliability[""]),
                "after": pooled_reliability(reliability["_ts"]),
            }
            if both
            else None,
        }


def summarise(request: Request, study: optuna.Study | None) -> dict[str, Any]:
    """Every number of the comparison, recomputed from the per-seed results in the study."""
    from lsearch.analysis.racing import sequential_block
    from lsearch.analysis.verdict import analyse
    from lsearch.comparison.race import cost

    trials = [] if study is None else study.get_trials(deepcopy=False)
    reader = _CellReader(request, collect(trials, request.constant_schedule), failed_keys(trials))
    cells = [reader.cell(cell) for cell in request.cells]
    seen = reader.seen_metrics
    absent = [m for m in request.metrics if seen and m not in seen]
    if absent:
        raise UserError(
            f"--metric {absent[0]}: no cell of '{request.name}' has it (its runs were recorded "
            "without it); leave it out or train the cells again under a new --name"
        )
    analysis = analyse(cells, request.grid, request.metrics)
    race = request.race or _fixed_rule(request)
    analysis["sequential"] = sequential_block(cells, request.grid, race)
    analysis["race"] = None if request.race is None else cost(request, trials)
    return {
        "study": request.name,
        "search_study": request.search_study,
        "grid": request.grid,
        "base": asdict(request.base),
        "seeds": request.seeds,
        "metrics": request.metrics,
        "select_epoch": request.spec.objective.select_epoch,
        "notes": reader.notes,
        **analysis,
    }


def _fixed_rule(request: Request) -> Race:
    """A fixed-seed comparison's anytime-valid intervals, on test accuracy and ECE (or its
    first test metric), for the report's figures beside the ordinary ones."""
    tested = [m for m in request.metrics if m.startswith("test_")]
    headline = tuple(m for m in HEADLINE if m in request.metrics)
    decide_on = headline or tuple(tested[:1])
    return Race(decide_on, None, len(request.seeds))


def record_test_use(
    storage: optuna.storages.BaseStorage, request: Request, study: optuna.Study
) -> int:
    """Count the configurations evaluated on the test set for this search, over all its
    comparisons, and store the count on the comparison and the search (when it exists),
    with the request on the comparison."""
    configs = set()
    for summary in comparisons_of(storage, request.search_study):
        other = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            config = trial.user_attrs.get(CONFIG_ATTR)
            if config is not None:
                for count in trial.user_attrs.get(HELD_OUT_ATTR, {}):
                    configs.add(key_of({**config, "epochs": int(count)}, 0)[:4])
    study.set_user_attr(TEST_COUNT_ATTR, len(configs))
    study.set_user_attr(GRID_ATTR, request.grid)
    study.set_user_attr(BASE_ATTR, asdict(request.base))
    study.set_user_attr(SEEDS_ATTR, request.seeds)
    study.set_user_attr(METRICS_ATTR, request.metrics)
    with contextlib.suppress(KeyError):
        search = optuna.load_study(study_name=request.search_study, storage=storage)
        search.set_user_attr(TEST_COUNT_ATTR, len(configs))
    return len(configs)


def request_from_study(study: optuna.Study) -> Request | None:
    """The last request a comparison study was trained for, from its user attrs (None for a
    comparison whose run never finished recording them)."""
    attrs = study.user_attrs
    if not is_comparison(study) or SEEDS_ATTR not in attrs:
        return None
    race = None
    if RACE_ATTR in attrs:
        identity = attrs[RACE_ATTR]
        race = Race(tuple(identity["decide_on"]), identity["margin"], len(attrs[SEEDS_ATTR]))
    return Request(
        spec=StudySpec.model_validate(attrs[SPEC_ATTR]),
        grid=attrs[GRID_ATTR],
        base=TrialConfig(**attrs[BASE_ATTR]),
        seeds=list(attrs[SEEDS_ATTR]),
        metrics=list(attrs.get(METRICS_ATTR, DEFAULT_METRICS)),
        search_study=attrs[SEARCH_STUDY_ATTR],
        name=study.study_name,
        race=race,
    )
