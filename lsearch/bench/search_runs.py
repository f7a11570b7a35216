"""`lsearch bench --search`: whole searches in memory with the study's pruner and with none,
over several sampler seeds, and what each search's best configuration is worth on the
held-out test set.

Each search runs as `lsearch run --trials N` runs it (the one trial loop, the study's sampler
and objective) in an in-memory Optuna study: nothing is written to a storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lsearch.errors import UserError
from lsearch.spec import StudySpec
from lsearch.training.data import ImagePool, TestSet, load_pool, load_test_set

# A search's metric and the held-out metric its best configuration is judged by.
TEST_METRIC = {"val_acc": "test_acc", "val_ece": "test_ece"}


@dataclass
class SearchRun:
    """One search of `bench --search`."""

    sampler_seed: int
    pruned: bool
    seed_epochs: int  # epochs trained, summed over trials and seeds
    wall_s: float
    best_value: float
    pruned_trials: int
    # The best trial's configuration trained again on fresh seeds and measured on the held-out
    # test set (the study metric's test counterpart, mean over the seeds): what the search's
    # answer is worth on data it never read, free of the best value's winner's curse.
    test_value: float
    best_config: dict[str, Any]  # the best trial's configuration


def run_search(
    spec: StudySpec, pool: ImagePool, device: torch.device, trials: int, sampler_seed: int,
    prune: bool, held_out: tuple[TestSet, Sequence[int]],
) -> SearchRun:  # fmt: skip
    """One search in memory, as `lsearch run --trials N` runs it, with the study's pruner or
    with none; its best configuration is then trained on `held_out`'s fresh seeds and
    measured on its test set."""
    import optuna
    from optuna.trial import TrialState

    from lsearch.search.loop import run_until
    from lsearch.search.objective import SearchObjective, TrialConfig
    from lsearch.search.study import build_pruner, build_sampler
    from lsearch.store.catalog import CONFIG_ATTR, EPOCHS_TRAINED_ATTR, SEEDS_RUN_ATTR

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if not prune:
        spec = spec.model_copy(update={"pruner": spec.pruner.model_copy(update={"type": "none"})})
    study = optuna.create_study(
        directions=spec.objective.directions,
        sampler=build_sampler(spec, sampler_seed),
        pruner=build_pruner(spec),
    )
    started = time.perf_counter()
    run_until(study, SearchObjective(spec, pool, device), trials)
    wall = time.perf_counter() - started
    finished = study.get_trials(deepcopy=False)
    seed_epochs = sum(
        int(t.user_attrs.get(EPOCHS_TRAINED_ATTR, 0)) * len(t.user_attrs.get(SEEDS_RUN_ATTR, []))
        for t in finished
    )
    best_config = study.best_trial.user_attrs[CONFIG_ATTR]
    test_set, seeds = held_out
    attrs = SearchObjective(spec, pool, device).train(
        study.ask(), TrialConfig(**best_config), seeds, prunes=False, test_set=test_set
    )
    test_value = float(attrs[TEST_METRIC[spec.objective.metric]])
    return SearchRun(
        sampler_seed=sampler_seed,
        pruned=prune,
        seed_epochs=seed_epochs,
        wall_s=wall,
        best_value=float(study.best_value),
        pruned_trials=sum(t.state == TrialState.PRUNED for t in finished),
        test_value=test_value,
        best_config=best_config,
    )


def bench_search(
    spec: StudySpec,
    device: torch.device,
    trials: int,
    sampler_seeds: int,
    on_run: Callable[[SearchRun], None] | None = None,
    test_seeds: int = 5,
) -> list[SearchRun]:
    """The study's search with its pruner and with none, over `sampler_seeds` sampler seeds
    (one search against one search is noise); each search's best configuration is measured
    on the test set over the same `test_seeds` fresh seeds."""
    from lsearch.comparison import fresh_seeds

    if len(spec.objective.directions) != 1:
        raise UserError("bench --search needs a single-objective study (pruning needs one)")
    pool = load_pool(spec.data, device, spec.model.weights)
    held_out = (load_test_set(spec.data, device), fresh_seeds(spec.seeds, test_seeds))
    runs = []
    for seed in range(sampler_seeds):
        for prune in (True, False):
            runs.append(run_search(spec, pool, device, trials, seed, prune, held_out))
            if on_run is not None:
                on_run(runs[-1])
    return runs


def summarise_search(runs: list[SearchRun]) -> dict[str, Any]:
    """Medians and ranges of each arm, and the pruned arm's share of the unpruned work and
    its best value's difference, per sampler seed (paired) and in the median."""

    def arm(pruned: bool) -> list[SearchRun]:
        return [run for run in runs if run.pruned == pruned]

    def stats(values: list[float]) -> dict[str, float]:
        return {"median": float(np.median(values)), "min": min(values), "max": max(values)}

    out: dict[str, Any] = {}
    for name, pruned in (("pruned", True), ("unpruned", False)):
        chosen = arm(pruned)
        out[name] = {
            "seed_epochs": stats([float(r.seed_epochs) for r in chosen]),
            "wall_s": stats([r.wall_s for r in chosen]),
            "best_value": stats([r.best_value for r in chosen]),
            "test_value": stats([r.test_value for r in chosen]),
        }
    pairs = list(zip(arm(True), arm(False), strict=True))
    out["work_share"] = stats([p.seed_epochs / u.seed_epochs for p, u in pairs])
    out["best_value_difference"] = stats([p.best_value - u.best_value for p, u in pairs])
    out["test_value_difference"] = stats([p.test_value - u.test_value for p, u in pairs])
    out["sampler_seeds"] = len(pairs)
    return out
