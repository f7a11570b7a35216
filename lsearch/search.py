"""The study: sampler and pruner built from the spec, creation with a spec check, and the
loop that runs trials until the study holds N finished (complete + pruned) trials.

Samplers and pruners are not stored in the study, so every process builds the same ones
from the same study file; the spec itself is stored on the study (user attr `lsearch_spec`)
so that a second process with a different file is refused instead of mixing results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from lsearch.errors import UserError
from lsearch.spec import Pruner, StudySpec
from lsearch.train import NonFiniteLossError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SPEC_ATTR = "lsearch_spec"
FINGERPRINT_ATTR = "lsearch_spec_fingerprint"


def build_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    sampler = spec.sampler
    if sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=sampler.seed)
    if sampler.type == "grid":
        try:
            grid = {name: getattr(spec.space, name).grid() for name in spec.searched}
        except ValueError as exc:
            raise UserError(f"sampler.type = 'grid': {exc}") from None
        return optuna.samplers.GridSampler(grid, seed=sampler.seed)
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
    spec: StudySpec, storage: optuna.storages.BaseStorage, study_name: str | None = None
) -> optuna.Study:
    """Create the study, or load it when it exists and was made from the same spec."""
    name = study_name or spec.name
    directions = spec.objective.directions
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if name in existing:
        summary = existing[name]
        stored = summary.user_attrs.get(FINGERPRINT_ATTR)
        if stored is not None and stored != spec.fingerprint():
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
    if FINGERPRINT_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
    return study


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


TrialCallback = Callable[[optuna.Study, FrozenTrial], None]
MAX_CONSECUTIVE_FAILURES = 10


class StopOnRepeatedFailure:
    """Stop this process's search after `limit` failed trials in a row: a study whose every
    trial fails (say, a learning rate that always diverges) must end, not loop forever."""

    def __init__(self, limit: int = MAX_CONSECUTIVE_FAILURES) -> None:
        self.limit = limit
        self.in_a_row = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.in_a_row >= self.limit:
            study.stop()

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.limit


def run_until(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    n_finished: int,
    timeout: float | None = None,
    callbacks: Sequence[TrialCallback] = (),
) -> int:
    """Run trials until the study holds `n_finished` complete or pruned trials, the timeout
    passes, or MAX_CONSECUTIVE_FAILURES trials in a row fail. Returns how many trials this
    call started."""
    started_at = time.monotonic()
    started = 0
    stop_at_n = optuna.study.MaxTrialsCallback(n_finished, states=FINISHED)
    failures = StopOnRepeatedFailure()
    while (remaining := n_finished - count_finished(study)) > 0:
        left = None if timeout is None else timeout - (time.monotonic() - started_at)
        if left is not None and left <= 0:
            break
        before = len(study.get_trials(deepcopy=False))
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=left,
            callbacks=[*callbacks, stop_at_n, failures],
            catch=(NonFiniteLossError,),
            gc_after_trial=False,
        )
        started += len(study.get_trials(deepcopy=False)) - before
        if failures.tripped:
            raise UserError(
                f"{failures.limit} trials in a row failed (see their fail_reason user attr); "
                "fix the search space or training settings and run again"
            )
        sampler = study.sampler
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
            break
    return started
