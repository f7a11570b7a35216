"""The study: sampler and pruner built from the spec, creation with a spec check, and the
loop that runs trials until the study holds N finished (complete + pruned) trials.

Samplers and pruners are not stored in the study, so every process builds the same ones
from the same study file; the spec itself is stored on the study (user attr `lsearch_spec`)
so that a second process with a different file is refused instead of mixing results.
"""

from __future__ import annotations

import platform
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from lsearch import interrupts
from lsearch.errors import UserError
from lsearch.spec import Pruner, StudySpec
from lsearch.train import NonFiniteLossError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SPEC_ATTR = "lsearch_spec"
FINGERPRINT_ATTR = "lsearch_spec_fingerprint"
PRODUCED_BY_ATTR = "lsearch_produced_by"


def sampler_seed(spec: StudySpec, trials_at_start: int, worker_index: int) -> int | None:
    """This process's sampler seed. A fresh single-process study draws exactly what the
    study file's seed says; a process that joins or resumes a study shifts the seed by the
    trials already there, and each worker by its index, so that no two processes repeat
    each other's draws (a fixed seed in every worker would)."""
    if spec.sampler.seed is None:
        return None
    return (spec.sampler.seed + trials_at_start + 1_000_003 * worker_index) % 2**32


def build_sampler(spec: StudySpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    sampler = spec.sampler.model_copy(update={"seed": seed}) if seed is not None else spec.sampler
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

    import torch

    return {
        "lsearch": version("lsearch"),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


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

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.limit


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the storage's callback, re-queue) trials whose worker died."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def optimize_one(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    callbacks: Sequence[TrialCallback],
    catch: tuple[type[Exception], ...],
) -> None:
    """Run one trial through Optuna's loop (heartbeats, retries of dead workers' trials
    first). A trial stopped by Ctrl-C, SIGTERM or --timeout, which Optuna marks FAIL, is
    handed back at once as a WAITING retry that resumes from its checkpoint."""
    try:
        study.optimize(
            objective, n_trials=1, callbacks=list(callbacks), catch=catch, gc_after_trial=False
        )
    except interrupts.Interrupted as exc:
        if exc.trial_number is not None:
            exc.handed_back_as = interrupts.hand_back(study, exc.trial_number)
        raise


def run_until(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    n_finished: int,
    timeout: float | None = None,
    callbacks: Sequence[TrialCallback] = (),
    heartbeats: bool = False,
    poll_seconds: float = 2.0,
    on_wait: Callable[[optuna.Study], None] | None = None,
) -> None:
    """Run trials, one at a time, until the study holds `n_finished` complete or pruned
    trials, the timeout passes (a trial running then is stopped and handed back), or
    MAX_CONSECUTIVE_FAILURES trials in a row fail. Ctrl-C and SIGTERM raise
    `interrupts.Interrupted` after handing the running trial back.

    Optuna's own loop with `n_trials` cannot do this: it runs a set number of this
    process's trials, while N here is a total over every worker, checked before each trial.

    Several processes may run this on one study. Before each trial a worker counts the
    finished and running trials of everyone: re-queued (WAITING) trials of dead workers are
    taken first, and no new trial starts once finished + running reaches N, so workers
    overshoot N only when two of them start a trial in the same few milliseconds. A worker
    with nothing to start waits while others finish the last trials, since with heartbeats
    on, a running trial whose worker dies comes back as a WAITING retry that still needs a
    worker. Without heartbeats (gRPC proxy, or heartbeat_interval = 0) a dead worker's trial
    stays RUNNING for ever, so such a worker leaves instead of waiting.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    interrupts.set_deadline(deadline)
    try:
        _run_trials(study, objective, n_finished, callbacks, heartbeats, poll_seconds, on_wait)
    finally:
        interrupts.set_deadline(None)  # the deadline is this call's, not the process's


def _run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    n_finished: int,
    callbacks: Sequence[TrialCallback],
    heartbeats: bool,
    poll_seconds: float,
    on_wait: Callable[[optuna.Study], None] | None,
) -> None:
    failures = StopOnRepeatedFailure()
    while True:
        if interrupts.requested() == "timeout":
            return
        interrupts.check()
        if heartbeats:
            fail_stale_trials(study)
        counts = Counter(t.state for t in study.get_trials(deepcopy=False))
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if finished >= n_finished:
            return
        if not counts[TrialState.WAITING] and finished + counts[TrialState.RUNNING] >= n_finished:
            if not heartbeats:
                return  # the last trials run elsewhere, and a dead worker's would never end
            if on_wait is not None:
                on_wait(study)
            time.sleep(poll_seconds)  # the last trials run elsewhere: see how they end
            continue
        optimize_one(study, objective, [*callbacks, failures], catch=(NonFiniteLossError,))
        if failures.tripped:
            raise UserError(
                f"{failures.limit} trials in a row failed (see their fail_reason user attr); "
                "fix the search space or training settings and run again"
            )
        sampler = study.sampler
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
            return
