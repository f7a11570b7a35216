"""A storage that waits out a lost database connection (a restart, a failover) instead of
failing the trial or the worker, and lists the user's studies only: ResilientStorage, which
lsearch.store.storage.open_storage puts around every database storage it opens."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, PendingRollbackError

from lsearch import interrupts
from lsearch.store.catalog import TOKEN_ATTR, WORKERS_STUDY

log = logging.getLogger("lsearch.store.resilient")

# How long a worker keeps retrying a storage that went away before giving up.
RECONNECT_TIMEOUT_S = 600.0


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection (worth waiting out), as opposed to a bad query."""
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, OperationalError | InterfaceError | PendingRollbackError):
        # (PendingRollbackError: a session whose transaction the lost connection broke; the
        # on_lost of open_storage, storage._ResetConnections, drops it)
        return True
    return isinstance(cause, DBAPIError) and cause.connection_invalidated


# What ResilientStorage notes on the error it gives up on, for the command's last line.
GAVE_UP = "storage unreachable for more than {limit:g} s (storage.reconnect_timeout)"


def driver_message(exc: BaseException) -> str:
    """What the database driver said, on one line, without SQLAlchemy's additions (and
    from under Optuna's StorageInternalError, which wraps it).

    >>> driver_message(OperationalError("SELECT 1", {}, Exception("server  closed")))
    'server closed'
    """
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    original = getattr(exc, "orig", None) or exc
    first = " ".join(str(original).split())
    return first.split(" (Background on this error")[0]


def outage_message(exc: BaseException) -> str | None:
    """The one line that ends a command whose storage stayed away longer than its reconnect
    window (what ResilientStorage noted on the error as it gave up); None when `exc` is not a
    lost connection.

    >>> lost = OperationalError("SELECT 1", {}, Exception("connection refused"))
    >>> lost.add_note(GAVE_UP.format(limit=2.0))
    >>> outage_message(lost).split(";")[0]
    'storage unreachable for more than 2 s (storage.reconnect_timeout): connection refused'
    """
    if not is_transient(exc):
        return None
    notes = [note for note in getattr(exc, "__notes__", ()) if note.startswith("storage")]
    what = notes[0] if notes else "storage unreachable"
    return (
        f"{what}: {driver_message(exc)}; run the command again once the database is back (a "
        "trial it left running is recovered after the grace period)"
    )


# The longest pause between attempts to reach a lost database. A worker opened for a study
# pauses at most its heartbeat interval, so that once the database is back its heartbeat
# resumes well within the grace period (see lsearch.search.liveness).
MAX_RETRY_DELAY_S = 10.0

STOP_WRITE_TIMEOUT_S = 10.0
"""How long a stopping worker (Ctrl-C, SIGTERM, --timeout) keeps retrying a write: during an
outage it still stops, and its trial comes back through the heartbeat path instead."""


def _fresh_template(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """The trial to create, carrying `token` so that a retried creation can find out whether
    the first attempt committed. With no template, what Optuna creates by default."""
    if template is None:
        return FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs={},
            system_attrs={TOKEN_ATTR: token}, intermediate_values={}, trial_id=-1,
        )  # fmt: skip
    made = copy.copy(template)
    made.system_attrs = {**template.system_attrs, TOKEN_ATTR: token}
    return made


class ResilientStorage(BaseStorage):
    """Any Optuna storage whose calls wait out a lost database connection (a restart, a
    failover) for up to `reconnect_timeout` seconds instead of failing the trial or the worker.

    One mechanism in one place: every public method of Optuna's `BaseStorage` interface is
    delegated through `_call` (the list is read from `BaseStorage` itself, so a method Optuna
    adds is covered too), and the inner storage (Optuna's cached RDB storage) is used only
    through that interface. A write that is repeated after a lost connection may have
    committed the first time, so the writes whose repetition is not harmless are checked
    first: a trial creation carries a token (`lsearch_create_token`) and is looked up by it,
    a state change or a parameter is read back, a study is looked up by name.

    It lists the user's studies only: the registry of workers that lsearch 0.1.0 added to
    every storage (`lsearch:workers`) stays in an old storage but is never listed, so
    `optuna.load_study(study_name=None, storage=...)`, optuna-dashboard served by `lsearch
    dashboard` and every lsearch command see what the user made. It pickles when its inner
    storage and `on_lost` do (those of open_storage do), so a study on it can go to another
    process (joblib, Dask, a multiprocessing pool).
    """

    def __init__(
        self,
        inner: BaseStorage,
        reconnect_timeout: float = RECONNECT_TIMEOUT_S,
        on_lost: Callable[[], None] | None = None,
        max_delay: float = MAX_RETRY_DELAY_S,
    ) -> None:
        self.inner = inner
        self.reconnect_timeout = reconnect_timeout
        self.max_delay = max_delay
        self._on_lost = on_lost  # drop pooled connections to the old server
        # Connection losses seen so far: observations older than a loss are void (liveness).
        self.losses = 0
        # The user attrs being gathered for one transaction: (thread, trial_id, attrs).
        self._batch: tuple[int, int, dict[str, Any]] | None = None

    def _call(
        self,
        name: str | Callable[..., Any],
        *args: Any,
        already_done: Callable[[], tuple[bool, Any]] | None = None,
        **kwargs: Any,
    ) -> Any:
        started = time.monotonic()
        delay = min(0.5, self.max_delay)
        lost = False
        while True:
            try:
                if lost and already_done is not None:
                    done, result = already_done()
                    if done:
                        return result
                target = name if callable(name) else getattr(self.inner, name)
                return target(*args, **kwargs)
            except Exception as exc:
                # A stopping worker gives up sooner: it must stop even if the database is gone.
                limit = self.reconnect_timeout
                if interrupts.requested() is not None:
                    limit = min(limit, STOP_WRITE_TIMEOUT_S)
                if not is_transient(exc):
                    raise
                if time.monotonic() - started > limit:
                    exc.add_note(GAVE_UP.format(limit=limit))
                    raise
                if not lost:
                    self.losses += 1
                lost = True
                log.warning(
                    "storage unreachable (%s); retrying in %.1f s",
                    type(exc.__cause__ or exc).__name__,
                    delay,
                )
                if self._on_lost is not None:
                    self._on_lost()
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay)

    def get_all_studies(self) -> list[Any]:
        studies = self._call("get_all_studies")
        return [study for study in studies if study.study_name != WORKERS_STUDY]

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        batch = self._batch
        if batch is not None and batch[:2] == (threading.get_ident(), trial_id):
            batch[2][key] = value
            return
        self._call("set_trial_user_attr", trial_id, key, value)

    @contextlib.contextmanager
    def batched_user_attrs(self, trial_id: int) -> Iterator[None]:
        """Gather the user attrs this thread sets on `trial_id` and write them in one
        transaction when the block ends (Optuna writes each in its own: about 25 a trial).
        Other threads' writes (a checkpoint's pointer, which must land before its file is
        written) go straight through. Writing an attr again is harmless, so a write cut off
        by a lost connection is simply repeated."""
        if self._batch is not None:  # nested: the outer block writes
            yield
            return
        attrs: dict[str, Any] = {}
        self._batch = (threading.get_ident(), trial_id, attrs)
        try:
            yield
        finally:
            self._batch = None
            if attrs:
                self._call(functools.partial(write_user_attrs, self.inner, trial_id, attrs))

    # The writes whose repetition is not harmless.

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        def already_done() -> tuple[bool, Any]:
            if study_name is None:
                return False, None
            try:
                return True, self.inner.get_study_id_from_name(study_name)
            except KeyError:
                return False, None

        return self._call("create_new_study", directions, study_name, already_done=already_done)

    def delete_study(self, study_id: int) -> None:
        def already_done() -> tuple[bool, Any]:
            try:
                self.inner.get_study_name_from_id(study_id)
            except KeyError:
                return True, None
            return False, None

        self._call("delete_study", study_id, already_done=already_done)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        token = uuid.uuid4().hex
        template = _fresh_template(template_trial, token)

        def already_done() -> tuple[bool, Any]:
            for trial in self.inner.get_all_trials(study_id, deepcopy=False):
                if trial.system_attrs.get(TOKEN_ATTR) == token:
                    return True, trial._trial_id
            return False, None

        return self._call("create_new_trial", study_id, template, already_done=already_done)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
    ) -> None:
        def already_done() -> tuple[bool, Any]:
            return param_name in self.inner.get_trial(trial_id).params, None

        self._call(
            "set_trial_param", trial_id, param_name, param_value_internal, distribution,
            already_done=already_done,
        )  # fmt: skip

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        def already_done() -> tuple[bool, Any]:
            # A finishing write that committed left exactly this state and these values; a
            # claim (WAITING -> RUNNING) cannot be told from another worker's claim, so it
            # counts as lost: that trial gets no heartbeat and is recovered as stale.
            trial = self.inner.get_trial(trial_id)
            if state.is_finished() and trial.state == state:
                same = values is None or list(trial.values or []) == list(values)
                return same, same
            return False, None

        return self._call(
            "set_trial_state_values", trial_id, state, values, already_done=already_done
        )


def batched_user_attrs(trial: optuna.Trial) -> contextlib.AbstractContextManager[None]:
    """A block whose user attrs of `trial` go to its storage in one transaction (see
    ResilientStorage.batched_user_attrs); a plain block on any other storage."""
    if isinstance(trial.storage, ResilientStorage):
        return trial.storage.batched_user_attrs(trial._trial_id)
    return contextlib.nullcontext()


def write_user_attrs(storage: BaseStorage, trial_id: int, attrs: dict[str, Any]) -> None:
    """Several user attrs of a trial in one transaction where `storage` is (Optuna's cache
    over) a database; one call each otherwise. The one transaction uses Optuna's own upsert
    (RDBStorage._set_trial_attr_without_commit), so the rows are those Optuna writes; the
    test that counts transactions fails if a later Optuna moves these internals."""
    backend = getattr(storage, "_backend", storage)
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    if not isinstance(backend, RDBStorage) or write is None:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        return
    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            write(session, models.TrialUserAttributeModel, trial_id, key, value)


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = getattr(BaseStorage, name).__doc__
    return method


for _name, _member in vars(BaseStorage).items():
    if callable(_member) and not _name.startswith("_") and _name not in vars(ResilientStorage):
        setattr(ResilientStorage, _name, _delegate(_name))
ResilientStorage.__abstractmethods__ = frozenset()
