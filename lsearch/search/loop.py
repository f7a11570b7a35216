"""The one trial loop, for searches and comparisons: ask the study for a trial, run it, tell
the result, until its schedule says stop (a search: N finished trials; a comparison: no
seed-run left to train); a fault inside one trial fails that trial only.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from lsearch import interrupts
from lsearch.errors import UserError
from lsearch.search.liveness import Heartbeat, StaleCallback, StaleTrialSweeper
from lsearch.search.study import DuplicateConfiguration
from lsearch.search.trial_group import TrialCallback, run_one
from lsearch.store.catalog import DUPLICATE_ATTR, FAIL_REASON_ATTR, FINISHED
from lsearch.training.seed_run import NonFiniteLossError

log = logging.getLogger("lsearch.search.loop")

MAX_CONSECUTIVE_FAILURES = 10


class StopOnRepeatedFailure:
    """Stop this process's search after `limit` failed trials in a row: a study whose every
    trial fails (say, a learning rate that always diverges, or a poison configuration that
    raises) must end, not loop forever. `last` names the last failure and its reason."""

    def __init__(self, limit: int = MAX_CONSECUTIVE_FAILURES) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.last = ""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        reason = trial.user_attrs.get(FAIL_REASON_ATTR) or "no reason recorded"
        self.last = f"trial {trial.number}: {reason}"

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.limit

    def error(self) -> UserError:
        return UserError(
            f"{self.in_a_row} trials in a row failed; the last: {self.last}; "
            "fix the search space or training settings and run again"
        )


@dataclass
class Liveness:
    """This process's heartbeat and its sweep for other workers' stale trials."""

    heartbeat: Heartbeat
    sweeper: StaleTrialSweeper


def liveness_for(
    storage: optuna.storages.BaseStorage,
    heartbeat_interval: float,
    grace_period: float,
    on_stale: StaleCallback,
) -> Liveness | None:
    """The heartbeat and stale-trial sweep of this process; None with heartbeats off."""
    if not heartbeat_interval:
        return None
    sweeper = StaleTrialSweeper(storage, grace_period, on_stale)
    return Liveness(Heartbeat(storage, heartbeat_interval, sweeper), sweeper)


class Step(Enum):
    """What the loop does next, as a schedule decides from the study's trials."""

    TRIAL = "trial"  # start a trial (a WAITING retry of a dead worker's first)
    WAIT = "wait"  # what is left runs elsewhere: wait to see how it ends (leave without liveness)
    STOP = "stop"  # nothing is left to do


class Schedule(Protocol):
    """What differs between the loops of a search and of a comparison: when to stop, and
    which exceptions fail only their trial. (What a trial trains is the objective's choice:
    a search's suggests a configuration, a comparison's claims a pending seed-run.)"""

    catch: tuple[type[Exception], ...]

    def next_step(self, trials: Sequence[FrozenTrial]) -> Step:
        """The next step, given every trial of the study (read once per step)."""
        ...

    def done_after(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Called after each trial this worker finished; True stops the loop. May raise a
        UserError to stop the worker (say, too many failures in a row)."""
        ...


MAX_DUPLICATES_IN_A_ROW = 10


class FinishedTrials:
    """A search's schedule: trials until the study holds `n_finished` complete or pruned
    trials (counted over every worker, running ones included: see run_until), stopping
    with a UserError after MAX_CONSECUTIVE_FAILURES failures or MAX_DUPLICATES_IN_A_ROW
    duplicate configurations in a row, and when a grid sampler has no configuration left."""

    catch: tuple[type[Exception], ...] = (NonFiniteLossError, DuplicateConfiguration)

    def __init__(self, n_finished: int) -> None:
        self.n_finished = n_finished
        self.failures = StopOnRepeatedFailure()
        self.duplicates = 0

    def next_step(self, trials: Sequence[FrozenTrial]) -> Step:
        """STOP at N finished; WAIT when finished + running reach N and no retry waits."""
        counts = Counter(t.state for t in trials)
        finished = sum(counts[state] for state in FINISHED)
        if finished >= self.n_finished:
            return Step.STOP
        if not counts[TrialState.WAITING] and finished + counts[TrialState.RUNNING] >= (
            self.n_finished
        ):
            return Step.WAIT
        return Step.TRIAL

    def done_after(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Count duplicates and failures in a row; True once a grid sampler is exhausted."""
        if DUPLICATE_ATTR in trial.user_attrs:
            self.duplicates += 1
            if self.duplicates >= MAX_DUPLICATES_IN_A_ROW:
                raise UserError(
                    f"the sampler drew {self.duplicates} configurations in a row that the study "
                    "already holds: the search space looks exhausted; widen it, or ask for "
                    "fewer --trials"
                )
            return False
        self.duplicates = 0
        self.failures(study, trial)
        if self.failures.tripped:
            raise self.failures.error()
        sampler = study.sampler
        return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    schedule: Schedule,
    callbacks: Sequence[TrialCallback] = (),
    liveness: Liveness | None = None,
    poll_seconds: float = 2.0,
    on_wait: Callable[[optuna.Study], None] | None = None,
) -> None:
    """The one trial loop, for searches and comparisons: sweep other workers' stale trials,
    ask the schedule, then run one trial (`run_one`), wait, or stop; until the schedule
    stops it, a --timeout passes (the running trial is handed back) or an interrupt
    (`interrupts.Interrupted`, after the hand-back).

    A worker with nothing to start waits (calling `on_wait`) while others run what is
    left, since with heartbeats on, a running trial whose worker dies comes back as a
    WAITING retry that still needs a worker. Without heartbeats (no `liveness`, as behind
    the gRPC proxy) a dead worker's trial stays RUNNING for ever, so such a worker leaves.
    """
    while True:
        if interrupts.requested() == "timeout":
            return
        interrupts.check()
        if liveness is not None:
            liveness.sweeper.sweep(study)
        step = schedule.next_step(study.get_trials(deepcopy=False))
        if step is Step.STOP or (step is Step.WAIT and liveness is None):
            return
        if step is Step.WAIT:
            if on_wait is not None:
                on_wait(study)
            time.sleep(poll_seconds)  # the last trials run elsewhere: see how they end
            continue
        told = run_one(study, objective, callbacks, schedule.catch, liveness)
        if any([schedule.done_after(study, frozen) for frozen in told]):
            return


def run_until(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    n_finished: int,
    timeout: float | None = None,
    callbacks: Sequence[TrialCallback] = (),
    liveness: Liveness | None = None,
    poll_seconds: float = 2.0,
    on_wait: Callable[[optuna.Study], None] | None = None,
) -> None:
    """Run search trials, one at a time, until the study holds `n_finished` complete or
    pruned trials, the timeout passes (a trial running then is stopped and handed back), or
    MAX_CONSECUTIVE_FAILURES trials in a row fail, or the sampler keeps drawing
    configurations the study holds. Ctrl-C and SIGTERM raise `interrupts.Interrupted` after
    handing the running trial back.

    Optuna's own `optimize` does not fit: its `n_trials` counts this process's trials while
    N here is a total over every worker, checked before each trial (a `MaxTrialsCallback`
    would stop only after a trial), and it marks an interrupted trial FAIL and crashes on a
    trial another worker failed as stale. So the loop is lsearch's (`run_trials`), with one
    count: the study's states, read once per trial.

    Several processes may run this on one study. Before each trial a worker counts the
    finished and running trials of everyone: re-queued (WAITING) trials of dead workers are
    taken first, and no new trial starts once finished + running reaches N, so workers
    overshoot N only when two of them start a trial in the same few milliseconds. A worker
    with nothing to start waits while others finish the last trials (see `run_trials`).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    interrupts.set_deadline(deadline)
    try:
        schedule = FinishedTrials(n_finished)
        run_trials(study, objective, schedule, callbacks, liveness, poll_seconds, on_wait)
    finally:
        interrupts.set_deadline(None)  # the deadline is this call's, not the process's
