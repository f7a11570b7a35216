"""Storage URLs -> Optuna storages, with settings per database and secrets kept out of output.

SQLite (the default, `sqlite:///lsearch.db` in the working directory) runs in WAL mode and
waits on a locked database instead of failing. PostgreSQL gets pre-ping, so a connection
the server dropped is replaced rather than raised, and a connect timeout, so an unreachable
host fails in seconds. Once a storage has been opened, a lost connection (a database restart)
makes workers wait and reconnect instead of crashing: see ResilientRDBStorage.
`grpc://host:port` reaches an `lsearch proxy` (Optuna's gRPC storage proxy).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)

from lsearch.errors import UserError

log = logging.getLogger("lsearch.storage")

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
    if isinstance(cause, OperationalError | InterfaceError):
        return True
    return isinstance(cause, DBAPIError) and cause.connection_invalidated


T = TypeVar("T")


def _retrying(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() > deadline:
                    raise
                log.warning(
                    "storage unreachable (%s); retrying in %.1f s",
                    type(exc.__cause__ or exc).__name__,
                    delay,
                )
                self.engine.dispose()  # drop pooled connections to the old server
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    return wrapper


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls wait out a lost database connection (a restart, a
    failover) for up to `reconnect_timeout` seconds instead of failing the trial or the
    worker. The heartbeat thread goes through it too, so it survives the outage."""

    reconnect_timeout: float = RECONNECT_TIMEOUT_S


# Every storage call Optuna's study, trial and cache layers make on an RDB storage.
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "_create_new_trial",
    "_set_trial_param", "get_trial_id_from_study_id_trial_number", "_get_best_trial_id",
    "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial", "_get_trials", "record_heartbeat",
    "_get_stale_trial_ids", "get_all_trials", "get_n_trials", "get_best_trial",
)  # fmt: skip
for _name in _RETRIED:
    setattr(ResilientRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))


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


def _create_rdb_storage(
    url: str, kwargs: dict[str, Any], heartbeat: dict[str, Any]
) -> ResilientRDBStorage:
    """Workers started together on a fresh database race to create Optuna's tables; the
    losers find the tables there when they try again (after a random pause, so that they
    do not collide again in lockstep)."""
    attempts = 10
    for attempt in range(attempts):
        try:
            return ResilientRDBStorage(url, engine_kwargs=kwargs, **heartbeat)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if not any(sign in str(exc) for sign in _SCHEMA_RACE) or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(
    url: str,
    *,
    must_exist: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`; every failure becomes a one-line UserError.

    With `must_exist`, a SQLite file that is not there is an error instead of being created
    (commands that only read must not leave an empty database behind). With a
    `heartbeat_interval`, running trials beat; one that stops beating for `grace_period`
    seconds is failed and re-queued (up to `max_retry` times) with the same parameters and
    its intermediate values, for another worker to resume from its checkpoint.
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
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": stale_trial_callback
            or RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry, inherit_intermediate_values=True
            ),
        }
    try:
        storage = _create_rdb_storage(url, engine_kwargs(parsed), heartbeat)
        if path is not None:
            # WAL lets readers (the dashboard, status) work while workers write, and
            # makes concurrent writers wait on each other less. It persists in the file.
            with storage.engine.connect() as connection:
                connection.execute(text("PRAGMA journal_mode=WAL"))
        return storage
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
