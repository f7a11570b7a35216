"""Which running trials still have a live worker: heartbeats and the sweep of stale trials.

A running trial's worker writes a counter into the trial's system attr `lsearch_heartbeat`
every `heartbeat_interval` seconds, from a thread, through the ordinary storage interface:
so it works the same on SQLite, PostgreSQL and behind `lsearch proxy` (Optuna's own
heartbeat table is not reachable through the gRPC proxy).

A trial is stale when an observer (any worker, or the proxy) has seen its counter unchanged
for `grace_period` seconds of the observer's own clock. Comparing an observer's readings with
each other, rather than a timestamp written by one machine with the clock of another, needs
no synchronised clocks. It also makes database outages harmless: an observer whose storage
lost its connection forgets what it saw before (it cannot know whether the counters moved
meanwhile), and a worker that joins starts with nothing seen, so after an outage longer than
the grace period no live trial is failed: their workers beat again within a heartbeat
interval of the database's return.

A stale trial is failed with a write that only one observer can win (a finished trial cannot
be finished again), and only the winner re-queues it through the stale-trial callback (a
WAITING retry that resumes from the checkpoint, or the checkpoint's removal when the trial is
out of retries). A worker that was only slow, and finds its trial failed when it next writes,
stops working on that trial quietly (see search.run_one).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lsearch.store.catalog import HEARTBEAT_ATTR

log = logging.getLogger("lsearch.search.liveness")

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def _losses(storage: Any) -> int:
    """How many times the storage lost its connection so far (0 where it cannot tell)."""
    return int(getattr(storage, "losses", 0))


class StaleTrialSweeper:
    """Fails and re-queues the running trials of a study whose counters stood still for the
    grace period of this observer's clock. Call `sweep` as often as convenient; each call
    reads the study's running trials once."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        grace_period: float,
        on_stale: StaleCallback,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.grace_period = grace_period
        self.on_stale = on_stale
        self.clock = clock
        self.own: set[int] = set()  # trial ids this process beats: never stale to itself
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (counter, first seen)
        self._losses_seen = -1
        self._lock = threading.Lock()

    def sweep(self, study: optuna.Study) -> list[int]:
        """The numbers of the trials this call failed as stale (and re-queued)."""
        with self._lock:
            losses = _losses(self.storage)
            if losses != self._losses_seen:
                self._seen.clear()  # what was seen before a lost connection says nothing now
                self._losses_seen = losses
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if _losses(self.storage) != losses:
                self._seen.clear()  # the read itself waited out an outage
                self._losses_seen = _losses(self.storage)
                return []
            now = self.clock()
            live = {trial._trial_id for trial in running}
            for trial_id in list(self._seen):
                if trial_id not in live:
                    del self._seen[trial_id]
            failed = []
            for trial in running:
                if trial._trial_id in self.own:
                    continue
                beat = trial.system_attrs.get(HEARTBEAT_ATTR)
                seen = self._seen.get(trial._trial_id)
                if seen is None or seen[0] != beat:
                    self._seen[trial._trial_id] = (beat, now)
                elif now - seen[1] >= self.grace_period and self._fail(study, trial):
                    failed.append(trial.number)
            return failed

    def _fail(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        try:
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False  # it finished, or another observer failed it first
        del self._seen[trial._trial_id]
        log.warning("trial %d stopped beating; failed as stale and re-queued", trial.number)
        self.on_stale(study, self.storage.get_trial(trial._trial_id))
        return True


class Beats:
    """The trials one heartbeat thread beats for: a step of the trial loop starts with one
    and may add more (seed-runs trained together) and drop each as it finishes."""

    def __init__(self, heartbeat: Heartbeat, study: optuna.Study) -> None:
        self.heartbeat = heartbeat
        self.study = study
        self.trial_ids: list[int] = []
        self._lock = threading.Lock()

    def add(self, trial_id: int) -> None:
        """Beat for `trial_id` too, from now on (its first beat is written here)."""
        sweeper = self.heartbeat.sweeper
        if sweeper is not None:
            sweeper.own.add(trial_id)
        self.heartbeat._beat(self.study, trial_id, 0)
        with self._lock:
            self.trial_ids.append(trial_id)

    def discard(self, trial_id: int) -> None:
        """Stop beating for `trial_id` (it finished)."""
        with self._lock:
            if trial_id in self.trial_ids:
                self.trial_ids.remove(trial_id)
        sweeper = self.heartbeat.sweeper
        if sweeper is not None:
            sweeper.own.discard(trial_id)

    def current(self) -> list[int]:
        with self._lock:
            return list(self.trial_ids)


class Heartbeat:
    """Beats for the trials being run by this process, from one daemon thread (one storage
    connection however many trials train together), and sweeps the study for stale trials
    on every beat (so that a dead worker's trial is recovered while this one trains, not
    only between trials)."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        interval: float,
        sweeper: StaleTrialSweeper | None = None,
    ) -> None:
        self.storage = storage
        self.interval = interval
        self.sweeper = sweeper
        self.identity = {"host": socket.gethostname(), "pid": os.getpid()}

    @contextmanager
    def beating(self, study: optuna.Study, trial_id: int) -> Iterator[Beats]:
        """Beat for `trial_id`, and for those added to the Beats this yields, until the
        block ends."""
        beats = Beats(self, study)
        beats.add(trial_id)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(beats, stop), name="lsearch-heartbeat", daemon=True
        )
        thread.start()
        try:
            yield beats
        finally:
            stop.set()
            # The thread may be inside a storage retry (an outage): do not wait for it.
            thread.join(timeout=1.0)
            for own in beats.current():
                beats.discard(own)

    def _run(self, beats: Beats, stop: threading.Event) -> None:
        count = 0
        while not stop.wait(self.interval):
            count += 1
            for trial_id in beats.current():
                try:
                    self._beat(beats.study, trial_id, count)
                except UpdateFinishedTrialError:
                    beats.discard(trial_id)  # finished, or failed by another worker
                except Exception as exc:  # a storage outage past the reconnect window
                    log.warning("heartbeat of trial id %d not written: %s", trial_id, exc)
            if self.sweeper is not None:
                try:
                    self.sweeper.sweep(beats.study)
                except Exception as exc:
                    log.warning("stale-trial sweep not done: %s", exc)

    def _beat(self, study: optuna.Study, trial_id: int, count: int) -> None:
        self.storage.set_trial_system_attr(
            trial_id, HEARTBEAT_ATTR, {**self.identity, "beat": count}
        )
