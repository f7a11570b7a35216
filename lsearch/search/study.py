"""The study: sampler and pruner built from the spec, and opening it with a spec check.

Samplers and pruners are not stored in the study, so every process builds the same ones
from the same study file; the spec itself is stored on the study (user attr `lsearch_spec`)
so that a second process with a different file is refused instead of mixing results.
"""

from __future__ import annotations

import logging
import os
import platform

import optuna
import torch
from optuna.trial import TrialState

from lsearch.errors import UserError
from lsearch.spec import Pruner, StudySpec
from lsearch.store.catalog import (
    DUPLICATE_ATTR,
    FINGERPRINT_ATTR,
    FINISHED,
    KIND_ATTR,
    PRODUCED_BY_ATTR,
    SPEC_ATTR,
    WORKERS_STUDY,
)

log = logging.getLogger("lsearch.search.study")


def sampler_seed(spec: StudySpec, trials_at_start: int, worker_index: int) -> int | None:
    """This process's sampler seed. A fresh single-process study draws exactly what the
    study file's seed says; a process that joins or resumes a study shifts the seed by the
    trials already there, and each worker by its index, so that no two processes repeat
    each other's draws (a fixed seed in every worker would)."""
    if spec.sampler.seed is None:
        return None
    return (spec.sampler.seed + trials_at_start + 1_000_003 * worker_index) % 2**32


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its `study.stop()` once the grid is used up, which only
    works inside `study.optimize`: lsearch's loop checks `is_exhausted` itself."""

    def after_trial(self, *args: object, **kwargs: object) -> None:
        pass


def build_sampler(spec: StudySpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    sampler = spec.sampler.model_copy(update={"seed": seed}) if seed is not None else spec.sampler
    if sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=sampler.seed)
    if sampler.type == "grid":
        try:
            grid = {name: getattr(spec.space, name).grid() for name in spec.searched}
        except ValueError as exc:
            raise UserError(f"sampler.type = 'grid': {exc}") from None
        return GridSampler(grid, seed=sampler.seed)
    if sampler.type == "gp":
        return optuna.samplers.GPSampler(
            seed=sampler.seed, n_startup_trials=sampler.n_startup_trials
        )
    # Optuna 5's defaults (multivariate, constant liar) suit parallel workers: keep them.
    return optuna.samplers.TPESampler(seed=sampler.seed, n_startup_trials=sampler.n_startup_trials)


def _single_pruner(kind: str, pruner: Pruner) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(
            pruner.n_startup_trials, pruner.n_warmup_steps, pruner.interval_steps
        )
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(
            pruner.percentile, pruner.n_startup_trials, pruner.n_warmup_steps, pruner.interval_steps
        )
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    return optuna.pruners.NopPruner()


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    pruner = spec.pruner
    if pruner.type == "patient":
        return optuna.pruners.PatientPruner(
            _single_pruner(pruner.wrapped, pruner),
            patience=pruner.patience,
            min_delta=pruner.min_delta,
        )
    return _single_pruner(pruner.type, pruner)


def open_study(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    study_name: str | None = None,
    worker_index: int = 0,
    device: str = "cpu",
) -> optuna.Study:
    """Create the study, or load it when it exists and was made from the same spec.
    A new study records the versions and the device that made it (`lsearch_produced_by`)."""
    name = study_name or spec.name
    directions = spec.objective.directions
    existing = {
        s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    trials_at_start = 0
    if name in existing:
        summary = existing[name]
        trials_at_start = summary.n_trials
        stored = summary.user_attrs.get(SPEC_ATTR)
        if stored is not None and not spec.same_trials_as(stored):
            raise UserError(
                f"study '{name}' in this storage was made from a different study file or --set "
                "values; run with the same ones to continue it, or pass --name to start a new study"
            )
        if [d.name.lower() for d in summary.directions] != directions:
            raise UserError(
                f"study '{name}' in this storage optimises {summary.directions}, not "
                f"{directions}; pass --name to start a new study"
            )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=directions,
        sampler=build_sampler(spec, sampler_seed(spec, trials_at_start, worker_index)),
        pruner=build_pruner(spec),
        load_if_exists=True,
    )
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
        study.set_user_attr(PRODUCED_BY_ATTR, {**produced_by(), "device": device})
    return study


def produced_by() -> dict[str, str]:
    """The versions that made a study (each trial records its own `device`)."""
    from importlib.metadata import version

    return {
        "lsearch": version("lsearch"),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class DuplicateConfiguration(Exception):
    """The sampler drew a configuration the study already holds (see check_new)."""


def check_new(trial: optuna.Trial) -> None:
    """Refuse a configuration another live or finished trial of the study already has (a
    retry of a failed trial is not a duplicate of it). Distinct sampler seeds per worker make
    this rare; it is the backstop behind them."""
    own = trial.params
    for other in trial.study.get_trials(
        deepcopy=False,
        states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING),
    ):
        if other.number != trial.number and other.params == own:
            trial.set_user_attr(DUPLICATE_ATTR, other.number)
            trial.set_user_attr("fail_reason", f"same configuration as trial {other.number}")
            raise DuplicateConfiguration(f"same configuration as trial {other.number}")


def register_worker(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """This process's number among the workers that ever joined `study_name`: 0 for the
    first, 1 for the next, and so on, whatever host they run on and however they were
    started. The storage hands out trial ids atomically, so each worker records itself as
    one trial of the storage's registry study (`lsearch:workers`, kind `workers`: it holds
    who joined what, when) and counts the registrations of its study made before its own."""
    registry = optuna.create_study(
        storage=storage, study_name=WORKERS_STUDY, load_if_exists=True
    )  # fmt: skip
    if registry.user_attrs.get(KIND_ATTR) != "workers":
        registry.set_user_attr(KIND_ATTR, "workers")
    trial = registry.ask()
    trial.set_user_attr("study", study_name)
    trial.set_user_attr("host", platform.node())
    trial.set_user_attr("pid", os.getpid())
    registry.tell(trial, 0.0)
    own_id = trial._trial_id
    return sum(
        1
        for other in registry.get_trials(deepcopy=False)
        if other.user_attrs.get("study") == study_name and other._trial_id < own_id
    )
