"""One step of the trial loop: the trials it runs (one, or several seed-runs trained
together), their heartbeat, and how each ends: told COMPLETE, PRUNED or FAIL with its
reason, handed back on an interrupt, or dropped when another worker failed it as stale.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lsearch import interrupts
from lsearch.errors import UserError, one_line, shorten
from lsearch.store.catalog import FAIL_REASON_ATTR, OUT_OF_MEMORY_ATTR
from lsearch.store.resilient import is_transient

if TYPE_CHECKING:
    from lsearch.search.liveness import Beats, Heartbeat
    from lsearch.search.loop import Liveness

log = logging.getLogger("lsearch.search.loop")

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]
Outcome = float | Sequence[float] | BaseException
"""How a trial's objective ended: its value(s), or what it raised."""

MAX_REASON_CHARS = 300
_ASKED_FOR = re.compile(r"Tried to allocate ([0-9.]+ ?(?:[KMGTP]i?B|bytes|B))", re.IGNORECASE)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _device_memory(device: object) -> str:
    """What the device had, as far as can be told: total and free for a CUDA device."""
    try:
        dev = torch.device(device) if device is not None else None  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None:
        return "the device and its memory are unknown"
    if dev.type == "cuda":
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                free, total = torch.cuda.mem_get_info(dev)
                return f"{dev} has {_gib(total)}, {_gib(free)} of it free after the failure"
        except Exception:  # (a broken driver must not hide the trial's own failure)
            pass
    return f"the memory of {dev} is unknown"


def failure_reason(exc: BaseException, device: object = None) -> str:
    """The `fail_reason` of a trial that raised `exc`: one line, at most MAX_REASON_CHARS.
    Out of memory names the memory the trial asked for and what the device had.

    >>> failure_reason(ValueError("bad\\nvalue"))
    'ValueError: bad value'
    """
    name = type(exc).__name__
    if isinstance(exc, torch.OutOfMemoryError):
        asked = _ASKED_FOR.search(str(exc))
        amount = f"asked for {asked.group(1)}" if asked else "asked for an unknown amount"
        reason = f"{name}: out of memory: the trial {amount}; {_device_memory(device)}"
        return shorten(reason, MAX_REASON_CHARS)
    return one_line(exc, MAX_REASON_CHARS)


def release_memory() -> None:
    """Free what a failed trial left on its device, before the next trial starts."""
    gc.collect()
    with contextlib.suppress(Exception):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def stops_the_worker(exc: BaseException) -> bool:
    """An exception a trial raises that ends the worker rather than fail the trial: a user
    error (exit 2), or a storage outage longer than the storage's reconnect window (the
    failure could not be recorded anyway). Interrupts are handed back before this."""
    return isinstance(exc, UserError) or is_transient(exc)


def new_trial(study: optuna.Study) -> optuna.Trial:
    """A new trial, never a WAITING retry: what `Study.ask` does when no retry waits. A
    group's further seed-runs start fresh beside its first; a retry resumes its own
    checkpoint at its own epoch, so it cannot join them (it goes first in a later step)."""
    study._thread_local.cached_all_trials = None  # as Study.ask: read the trials anew
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id))


class TrialGroup:
    """The trials one step of the loop runs, and how each ended. The loop starts it with
    one asked trial; an objective that trains seed-runs together adds fresh trials (`add`)
    and calls `finish` on each as its seed-run ends, so a seed-run that stops early is told
    at once while the others train on. Whatever the objective leaves unfinished, the loop
    finishes with what it raised."""

    def __init__(
        self,
        study: optuna.Study,
        callbacks: Sequence[TrialCallback],
        catch: tuple[type[Exception], ...],
        device: object = None,
    ) -> None:
        self.study = study
        self.callbacks = callbacks
        self.catch = catch
        self.device = device
        self.trials: list[optuna.Trial] = []
        self.finished: dict[int, FrozenTrial | None] = {}  # number -> told (None: taken over)
        self.out_of_memory = False
        self.callback_error: Exception | None = None  # what a callback raised, raised last
        self._beats: Beats | None = None

    @property
    def unfinished(self) -> list[optuna.Trial]:
        return [trial for trial in self.trials if trial.number not in self.finished]

    @contextmanager
    def beating(self, heartbeat: Heartbeat | None) -> Iterator[None]:
        """Beat for every trial of the group (one thread) until each finishes."""
        if heartbeat is None:
            yield
            return
        with heartbeat.beating(self.study, self.trials[0]._trial_id) as beats:
            self._beats = beats
            try:
                yield
            finally:
                self._beats = None

    def add(self) -> optuna.Trial:
        """A fresh trial joining the group (see new_trial), beating from now on."""
        trial = new_trial(self.study)
        self.trials.append(trial)
        if self._beats is not None:
            self._beats.add(trial._trial_id)
        return trial

    def finish(self, trial: optuna.Trial, outcome: Outcome) -> FrozenTrial | None:
        """Tell how `trial` ended: its values (COMPLETE), optuna.TrialPruned (PRUNED), an
        exception in `catch` (FAIL), any other exception (FAIL with its `fail_reason`, and
        `out_of_memory` for out of device memory). None when another worker had failed it
        as stale meanwhile (its retry resumes it)."""
        if isinstance(outcome, UpdateFinishedTrialError):
            return self._taken_over(trial)
        state, values, error = _state_of(outcome)
        try:
            if isinstance(error, Exception) and not isinstance(error, self.catch):
                self.out_of_memory |= isinstance(error, torch.OutOfMemoryError)
                error = _record_failure(trial, error, self.device)
            frozen = self.study.tell(trial, values, state, skip_if_finished=True)
        except UpdateFinishedTrialError:
            frozen = None
        except Exception as exc:
            if is_transient(exc):  # left RUNNING: it comes back as a stale trial's retry
                self.finished[trial.number] = None
            raise
        if frozen is None or frozen.state != state:  # failed as stale first
            return self._taken_over(trial)
        self._stop_beating(trial)
        self.finished[trial.number] = frozen
        if error is not None:
            log.warning("trial %d failed: %s", trial.number, error)
        for callback in self.callbacks:
            try:
                callback(self.study, frozen)
            except Exception as exc:  # raised once every trial of the step is told
                self.callback_error = self.callback_error or exc
        return frozen

    def _stop_beating(self, trial: optuna.Trial) -> None:
        if self._beats is not None:
            self._beats.discard(trial._trial_id)

    def _taken_over(self, trial: optuna.Trial) -> None:
        self._stop_beating(trial)
        self.finished[trial.number] = None
        log.warning(
            "trial %d was failed as stale by another worker while this one ran it; "
            "its retry resumes it from its checkpoint",
            trial.number,
        )

    def hand_back(self, exc: BaseException) -> None:
        """Hand every unfinished trial back as a WAITING retry (interrupts.hand_back); an
        Interrupted names the first and its retry."""
        for trial in self.unfinished:
            handed_back = _hand_back(self.study, trial)
            self.finished[trial.number] = None
            if not isinstance(exc, interrupts.Interrupted):
                continue
            if exc.trial_number is None or exc.handed_back_as is None:
                exc.trial_number, exc.handed_back_as = trial.number, handed_back
            if handed_back is not None:
                exc.handed_back.append((trial.number, handed_back))

    def fail_quietly(self) -> None:
        """Tell every unfinished trial FAIL as far as the storage lets: the worker stops."""
        for trial in self.unfinished:
            with contextlib.suppress(Exception):
                self.study.tell(trial, state=TrialState.FAIL)
            self.finished[trial.number] = None

    def told(self) -> list[FrozenTrial]:
        """The trials told so far, in the order they were added."""
        told = [self.finished.get(trial.number) for trial in self.trials]
        return [frozen for frozen in told if frozen is not None]


def _state_of(outcome: Outcome) -> tuple[TrialState, list[float] | None, BaseException | None]:
    """The state a trial is told, its values, and the exception that failed it."""
    if isinstance(outcome, optuna.TrialPruned):
        return TrialState.PRUNED, None, None
    if isinstance(outcome, BaseException):
        return TrialState.FAIL, None, outcome
    values = list(outcome) if isinstance(outcome, Sequence) else [outcome]
    return TrialState.COMPLETE, [float(v) for v in values], None


def run_one(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    callbacks: Sequence[TrialCallback],
    catch: tuple[type[Exception], ...],
    liveness: Liveness | None = None,
) -> list[FrozenTrial]:
    """Ask for a trial (a WAITING retry first), run it with a heartbeat, tell its end and
    call the callbacks: Optuna's `optimize` step, with what lsearch needs in place of its
    defaults. An objective with a `train_group(group)` method may add trials to the group
    (seed-runs trained together, under the same heartbeat thread). The trials told, in
    order; empty when the trial was taken over.

    - A trial stopped by Ctrl-C, SIGTERM or --timeout (`interrupts.Interrupted`), or by a
      second Ctrl-C (KeyboardInterrupt), is handed back as a WAITING retry that resumes from
      its checkpoint at once (Optuna would mark it FAIL, never to be resumed), then the
      exception goes on.
    - A trial another worker failed as stale while this one was slow (a pause, an outage)
      is dropped quietly: its retry resumes it.
    - An exception in `catch` fails the trial and the loop goes on.
    - A user error, or a storage outage past the storage's reconnect window, fails the
      trial (as far as it can be told) and is raised: the worker stops.
    - Any other exception (a poison trial: out of device memory, a bug that one
      configuration hits) fails the trial with its `fail_reason` (unless the objective
      recorded one), and the loop goes on. Out of memory also marks the trial
      `out_of_memory` and frees the device's cached memory. Such a trial is told FAIL, not
      left stale, so the heartbeat's retry does not re-queue it.
    """
    group = TrialGroup(study, callbacks, catch, getattr(objective, "device", None))
    group.trials.append(study.ask())
    train_group = getattr(objective, "train_group", None)
    try:
        with group.beating(liveness.heartbeat if liveness is not None else None):
            try:
                if train_group is not None:
                    train_group(group)
                else:
                    group.finish(group.trials[0], objective(group.trials[0]))
            except (interrupts.Interrupted, KeyboardInterrupt) as exc:
                group.hand_back(exc)
                raise
            except Exception as exc:
                if stops_the_worker(exc):
                    group.fail_quietly()
                    raise
                # Only the reason is kept: the exception's traceback holds the trial's tensors.
                for trial in group.unfinished:
                    group.finish(trial, exc)
    except UpdateFinishedTrialError:  # the first beat found the trial failed as stale
        for trial in group.unfinished:
            group._taken_over(trial)
    if group.out_of_memory:
        release_memory()
    if group.callback_error is not None:
        raise group.callback_error
    return group.told()


def _record_failure(trial: optuna.Trial, exc: Exception, device: object) -> str:
    """Record why `trial` failed (keeping a reason the objective recorded); the reason."""
    recorded = trial.user_attrs.get(FAIL_REASON_ATTR)
    if isinstance(exc, torch.OutOfMemoryError):
        trial.set_user_attr(OUT_OF_MEMORY_ATTR, True)
    if recorded:
        return str(recorded)
    reason = failure_reason(exc, device)
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    return reason


def _hand_back(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """Hand an interrupted trial back; None when it had finished, or when the storage was
    unreachable for the short deadline a stopping worker has (the heartbeat path recovers it
    then, after the grace period)."""
    try:
        return interrupts.hand_back(study, trial._trial_id)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning(
            "trial %d could not be handed back (storage unreachable); it is recovered as "
            "stale after the grace period",
            trial.number,
        )
        return None
