"""Storage URLs -> Optuna storages, with settings per database and secrets kept out of output.

SQLite (the default, `sqlite:///lsearch.db` in the working directory) runs in WAL mode with
`synchronous=NORMAL` and waits on a locked database instead of failing. PostgreSQL gets
pre-ping, so a connection the server dropped is replaced rather than raised, and a connect
timeout, so an unreachable host fails in seconds. Once a storage has been opened, a lost
connection (a database restart) makes workers wait and reconnect instead of crashing: see
ResilientStorage.
`grpc://host:port` reaches an `lsearch proxy` (Optuna's gRPC storage proxy).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    PendingRollbackError,
    ProgrammingError,
    SQLAlchemyError,
)

from lsearch import interrupts
from lsearch.errors import UserError
from lsearch.store.catalog import TOKEN_ATTR, WORKERS_STUDY

log = logging.getLogger("lsearch.store.storage")

DEFAULT_STORAGE = "sqlite:///lsearch.db"
STORAGE_ENV = "LSEARCH_STORAGE"
SQLITE_BUSY_TIMEOUT_S = 120
CONNECT_TIMEOUT_S = 10
# How long a worker keeps retrying a storage that went away before giving up.
RECONNECT_TIMEOUT_S = 600.0


def resolve_url(url: str | None) -> str:
    """The URL given, else $LSEARCH_STORAGE, else the default SQLite file."""
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(
            f"storage URL {mask_url(url)!r} is malformed; write it like sqlite:///lsearch.db "
            "or postgresql+psycopg://user:password@host:5432/dbname"
        ) from None


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not parseable: hide anything between "//user:" and "@" all the same.
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def scrub(text: str, url: str) -> str:
    """Remove the URL's password from a message (drivers sometimes echo the DSN)."""
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    text = text.replace(url, mask_url(url))
    if password:
        text = text.replace(str(password), "***")
    return text


def _reason(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None) or exc
    first = " ".join(str(original).split())
    return first.split(" (Background on this error")[0]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # In WAL mode, NORMAL syncs the log at checkpoints rather than at every commit: a search
    # makes dozens of small commits per trial, and FULL spent about 2 ms of fsync on each.
    # A killed process still loses no committed transaction; only a power cut or an OS crash
    # can roll back the last commits, which leaves their trials RUNNING for the stale-trial
    # sweep to re-queue.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def engine_kwargs(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection (worth waiting out), as opposed to a bad query."""
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, OperationalError | InterfaceError | PendingRollbackError):
        return True  # (a session whose transaction the lost connection broke: see _reset)
    return isinstance(cause, DBAPIError) and cause.connection_invalidated


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

    def _call(
        self,
        name: str,
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
                return getattr(self.inner, name)(*args, **kwargs)
            except Exception as exc:
                # A stopping worker gives up sooner: it must stop even if the database is gone.
                limit = self.reconnect_timeout
                if interrupts.requested() is not None:
                    limit = min(limit, STOP_WRITE_TIMEOUT_S)
                if not is_transient(exc) or time.monotonic() - started > limit:
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


def sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _grpc_proxy(url: str) -> optuna.storages.BaseStorage:
    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"storage {url!r}: write a proxy address as grpc://host:port")
    try:
        from optuna.storages import GrpcStorageProxy

        proxy = GrpcStorageProxy(host=host, port=int(port))
        proxy.wait_server_ready(timeout=CONNECT_TIMEOUT_S)
    except ImportError:
        raise UserError(
            "grpc:// storages need grpcio and protobuf: pip install 'lsearch[grpc]'"
        ) from None
    except Exception as exc:
        raise UserError(
            f"cannot reach the storage proxy at {host}:{port} ({type(exc).__name__}); "
            "start it with `lsearch proxy --storage URL` or check the address"
        ) from None
    return proxy


# What losing the race to create Optuna's tables looks like: another process created a
# table (SQLite: OperationalError, PostgreSQL: ProgrammingError) or stamped the schema
# version first (IntegrityError on alembic_version / version_info).
_SCHEMA_RACE = ("already exists", "UNIQUE constraint failed", "duplicate key value")


class _RDBStorage(RDBStorage):
    """Optuna's RDB storage with lsearch's SQLite settings on every connection, also once
    unpickled (RDBStorage.__setstate__ makes a fresh engine, without the listener)."""

    def __init__(self, url: str, engine_kwargs: dict[str, Any]) -> None:
        super().__init__(url, engine_kwargs=engine_kwargs)
        self._tune()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._tune()

    def _tune(self) -> None:
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self.engine.dispose()  # pooled connections made before the listener


class _ResetConnections:
    """What a ResilientStorage on `rdb` does when the connection is lost: this thread's
    session holds the transaction the lost connection broke, and the pool holds connections
    to the old server; drop both, so the next attempt starts afresh. (A class, not a
    closure, so that the storage pickles.)"""

    def __init__(self, rdb: RDBStorage) -> None:
        self.rdb = rdb

    def __call__(self) -> None:
        self.rdb.remove_session()
        self.rdb.engine.dispose()


def _create_rdb_storage(url: str, kwargs: dict[str, Any]) -> RDBStorage:
    """Workers started together on a fresh database race to create Optuna's tables; the
    losers find the tables there when they try again (after a random pause, so that they
    do not collide again in lockstep)."""
    attempts = 10
    for attempt in range(attempts):
        try:
            return _RDBStorage(url, kwargs)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if not any(sign in str(exc) for sign in _SCHEMA_RACE) or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(
    url: str,
    *,
    must_exist: bool = False,
    reconnect_timeout: float = RECONNECT_TIMEOUT_S,
    max_delay: float = MAX_RETRY_DELAY_S,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`; every failure becomes a one-line UserError.

    With `must_exist`, a SQLite file that is not there is an error instead of being created
    (commands that only read must not leave an empty database behind). Once open, a lost
    connection is waited out for `reconnect_timeout` seconds (see ResilientStorage).
    Liveness (heartbeats, stale trials) is lsearch's own, through ordinary trial attrs: see
    lsearch.search.liveness.
    """
    if url.startswith("grpc://"):
        return _grpc_proxy(url)
    parsed = _parse(url)
    shown = mask_url(url)
    path = sqlite_path(parsed)
    if path is not None and must_exist and not path.is_file():
        raise UserError(
            f"no study database at {path}: run `lsearch run` first, or point --storage "
            f"(or ${STORAGE_ENV}) at an existing storage"
        )
    if path is not None and not path.parent.is_dir():
        raise UserError(f"storage {shown}: folder {path.parent} does not exist; create it first")
    try:
        rdb = _create_rdb_storage(url, engine_kwargs(parsed))
        if path is not None:
            # WAL lets readers (the dashboard, status) work while workers write, and
            # makes concurrent writers wait on each other less. It persists in the file.
            with rdb.engine.connect() as connection:
                connection.execute(text("PRAGMA journal_mode=WAL"))
    except NoSuchModuleError:
        raise UserError(
            f"storage {shown}: unknown database driver {parsed.drivername!r}; use sqlite:/// "
            "or postgresql+psycopg://"
        ) from None
    except ModuleNotFoundError as exc:
        raise UserError(
            f"storage {shown}: driver not installed ({exc.name}); pip install it"
        ) from None
    except SQLAlchemyError as exc:
        raise UserError(
            f"cannot open storage {shown}: {scrub(_reason(exc), url)}; check the URL, that the "
            "server is running and that the database exists"
        ) from None
    # Optuna's cache of finished trials, as optuna.create_study(storage=url) would use.
    cached = optuna.storages.get_storage(rdb)
    return ResilientStorage(cached, reconnect_timeout, _ResetConnections(rdb), max_delay)
