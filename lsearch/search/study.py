"""The study: sampler and pruner built from the spec, and opening it with a spec check.

Samplers and pruners are not stored in the study, so every process builds the same ones
from the same study file; the spec itself is stored on the study (user attr `lsearch_spec`)
so that a second process with a different file is refused instead of mixing results.
"""

from __future__ import annotations

import logging
import platform
from typing import Any

import optuna
import torch
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.trial import FrozenTrial, TrialState

from lsearch.errors import UserError
from lsearch.spec import Pruner, StudySpec
from lsearch.store.catalog import (
    DUPLICATE_ATTR,
    FAIL_REASON_ATTR,
    FINGERPRINT_ATTR,
    FINISHED,
    PRODUCED_BY_ATTR,
    SPEC_ATTR,
    find_study,
)

log = logging.getLogger("lsearch.search.study")


def trial_seed(seed: int, number: int) -> int:
    """The seed a trial's sampling starts from: the study file's `sampler.seed` for trial 0,
    and one of its own for every other trial number.

    >>> trial_seed(0, 0), trial_seed(0, 1) != trial_seed(0, 0), trial_seed(7, 3) == trial_seed(7, 3)
    (0, True, True)
    """
    return (seed + 1_000_003 * number) % 2**32


def _reseed(sampler: optuna.samplers.BaseSampler, seed: int) -> None:
    """Seed every random state of an Optuna sampler and of the samplers it holds (TPE's and
    GP's random sampler for their first trials)."""
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            value.rng.seed(seed)
        elif isinstance(value, optuna.samplers.BaseSampler):
            _reseed(value, seed)


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler whose draws for a trial are seeded from the study file's seed and the
    trial's number (see trial_seed), not from whatever this process drew before.

    The storage gives each trial of a study its own number (Optuna locks the study while it
    numbers one), so workers on one study draw distinct configurations however and wherever
    they were started, with no registry of workers, and a search run by one process draws the
    same configurations from the same study file every time. An unseeded sampler
    (`sampler.seed` unset) draws from fresh entropy in every process.
    """

    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, seed=seed, **kwargs)
        self._study_seed = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._study_seed is not None:
            _reseed(self, trial_seed(self._study_seed, trial.number))
        super().before_trial(study, trial)


class RandomSampler(TrialSeeded, optuna.samplers.RandomSampler):
    """Optuna's random sampler, seeded per trial (see TrialSeeded)."""


class TPESampler(TrialSeeded, optuna.samplers.TPESampler):
    """Optuna's TPE sampler, seeded per trial (see TrialSeeded)."""


class GPSampler(TrialSeeded, optuna.samplers.GPSampler):
    """Optuna's Gaussian-process sampler, seeded per trial (see TrialSeeded)."""


class GridSampler(TrialSeeded, optuna.samplers.GridSampler):
    """Optuna's grid sampler, seeded per trial (see TrialSeeded), without its `study.stop()`
    once the grid is used up, which only works inside `study.optimize`: lsearch's loop checks
    `is_exhausted` itself."""

    def after_trial(self, *args: object, **kwargs: object) -> None:
        pass


def build_sampler(spec: StudySpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The study file's sampler (its seed, or `seed` where given), seeded per trial."""
    sampler = spec.sampler.model_copy(update={"seed": seed}) if seed is not None else spec.sampler
    if sampler.type == "random":
        return RandomSampler(seed=sampler.seed)
    if sampler.type == "grid":
        try:
            grid = {name: getattr(spec.space, name).grid() for name in spec.searched}
        except ValueError as exc:
            raise UserError(f"sampler.type = 'grid': {exc}") from None
        return GridSampler(grid, seed=sampler.seed)
    if sampler.type == "gp":
        return GPSampler(seed=sampler.seed, n_startup_trials=sampler.n_startup_trials)
    # Optuna 5's defaults (multivariate, constant liar) suit parallel workers: keep them.
    return TPESampler(seed=sampler.seed, n_startup_trials=sampler.n_startup_trials)


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
    device: str = "cpu",
) -> optuna.Study:
    """Create the study, or load it when it exists and was made from the same spec.
    A new study records the versions and the device that made it (`lsearch_produced_by`).
    Nothing else is created: the storage holds the user's studies only (workers need no
    number: see TrialSeeded)."""
    name = study_name or spec.name
    directions = spec.objective.directions
    summary = find_study(storage, name)
    if summary is not None:
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
        sampler=build_sampler(spec),
        pruner=build_pruner(spec),
        load_if_exists=True,
    )
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
        study.set_user_attr(PRODUCED_BY_ATTR, {**produced_by(), "device": device})
    return study


def produced_by() -> dict[str, str]:
    """The versions that made a study (each trial records its own `device`). lsearch's own
    comes from the package, not its installed metadata: a checkout run as `python -m lsearch`
    (the GPU check on a bare machine) has none."""
    import lsearch

    return {
        "lsearch": lsearch.__version__,
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
    retry of a failed trial is not a duplicate of it). Per-trial sampler seeds (TrialSeeded)
    make this rare; it is the backstop behind them."""
    own = trial.params
    for other in trial.study.get_trials(
        deepcopy=False,
        states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING),
    ):
        if other.number != trial.number and other.params == own:
            trial.set_user_attr(DUPLICATE_ATTR, other.number)
            trial.set_user_attr(FAIL_REASON_ATTR, f"same configuration as trial {other.number}")
            raise DuplicateConfiguration(f"same configuration as trial {other.number}")
