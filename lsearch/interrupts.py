"""Stopping a worker cleanly: Ctrl-C, SIGTERM (`docker stop`, Kubernetes, SLURM preemption)
and `--timeout` all ask the running trial to stop at the next batch; the trial is then handed
back as a WAITING retry that carries its checkpoint, so the next `lsearch run` resumes it at
once, from its last finished epoch, with no grace period to wait out. A second Ctrl-C stops
at once (Python's KeyboardInterrupt).

The request is process state, set from a signal handler and read on the training hot path
(a flag and a clock read per batch), so this module keeps it in one place.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the training loop imports this module; `lsearch bench` runs without Optuna
    import optuna

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "timeout": 0}


class Interrupted(Exception):
    """A stop was requested; `reason` is SIGINT, SIGTERM or timeout."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"stopped by {reason}")
        self.reason = reason
        self.trial_number: int | None = None  # the trial it stopped, if any
        self.handed_back_as: int | None = None  # that trial's WAITING retry
        # Every trial it stopped and its retry (several where seed-runs trained together).
        self.handed_back: list[tuple[int, int]] = []

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.reason]


_requested: str | None = None
_deadline: float | None = None


def request(reason: str) -> None:
    global _requested
    _requested = _requested or reason


def set_deadline(deadline: float | None) -> None:
    """A `time.monotonic()` instant after which training stops as for an interrupt."""
    global _deadline
    _deadline = deadline


def requested() -> str | None:
    if _requested is None and _deadline is not None and time.monotonic() > _deadline:
        request("timeout")
    return _requested


def check() -> None:
    """Raise Interrupted if a stop was asked for: call between batches."""
    reason = requested()
    if reason is not None:
        raise Interrupted(reason)


def reset() -> None:
    global _requested, _deadline
    _requested, _deadline = None, None


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """While inside: the first SIGINT or SIGTERM requests a stop; a second SIGINT raises
    KeyboardInterrupt at once. The previous handlers come back on exit."""

    def on_signal(number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if _requested is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        request(name)

    reset()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        reset()  # a request belongs to this command, not to the next one in this process


def hand_back(study: optuna.Study, trial_id: int) -> int | None:
    """Fail an interrupted trial and re-queue it as a WAITING retry with its params, user
    attrs (the checkpoint pointer among them) and reported values, exactly as the heartbeat
    path re-queues a dead worker's trial; the retry's number, or None when there was nothing
    to hand back (the trial had finished, or another worker had failed it as stale).

    During an outage each write here waits at most STOP_WRITE_TIMEOUT_S (store.resilient),
    since a stop has been requested: a worker always stops."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from lsearch.store.catalog import RETRIED_FROM_SYSTEM_ATTR

    storage = study._storage
    try:
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return None
    frozen = storage.get_trial(trial_id)
    RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)(
        study, frozen
    )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if trial.system_attrs.get(RETRIED_FROM_SYSTEM_ATTR) == frozen.number:
            return trial.number
    return None
