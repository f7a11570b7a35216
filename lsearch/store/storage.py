"""Storage URLs -> Optuna storages, with settings per database and secrets kept out of output.

SQLite (the default, `sqlite:///lsearch.db` in the working directory) runs in WAL mode with
`synchronous=NORMAL` and waits on a locked database instead of failing. PostgreSQL gets
pre-ping, so a connection the server dropped is replaced rather than raised, and a connect
timeout, so an unreachable host fails in seconds. Once a storage has been opened, a lost
connection (a database restart) makes workers wait and reconnect instead of crashing: see
lsearch.store.resilient. What open_storage returns pickles, as Optuna's storages do.
`grpc://host:port` reaches an `lsearch proxy` (Optuna's gRPC storage proxy).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)

from lsearch.errors import StorageUnavailable, UserError
from lsearch.store.resilient import (
    MAX_RETRY_DELAY_S,
    RECONNECT_TIMEOUT_S,
    ResilientStorage,
    driver_message,
)

log = logging.getLogger("lsearch.store.storage")

DEFAULT_STORAGE = "sqlite:///lsearch.db"
STORAGE_ENV = "LSEARCH_STORAGE"
SQLITE_BUSY_TIMEOUT_S = 120
CONNECT_TIMEOUT_S = 10
WORKER_CONNECTIONS = 2  # PostgreSQL connections one process holds at most (engine_kwargs)
POOL_TIMEOUT_S = 120  # how long a thread waits for one of them before it counts as an outage


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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # In WAL mode, NORMAL syncs the log at checkpoints rather than at every commit: a search
    # makes dozens of small commits per trial, and FULL spent about 2 ms of fsync on each.
    # A killed process still loses no committed transaction; only a power cut or an OS crash
    # can roll back the last commits, which leaves their trials RUNNING for the stale-trial
    # sweep to re-queue.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def application_name() -> str:
    """What this process's PostgreSQL connections call themselves (pg_stat_activity's
    `application_name`, at most 63 bytes): lsearch, the host and the process id, so that a
    worker's connections can be counted.

    >>> application_name().startswith("lsearch:")
    True
    """
    return f"lsearch:{socket.gethostname()[:40]}:{os.getpid()}"


def engine_kwargs(url: URL, connections: int = WORKER_CONNECTIONS) -> dict[str, Any]:
    """SQLAlchemy engine settings for `url`. On PostgreSQL the pool holds at most
    `connections`, never more (a thread that finds them all in use waits for one): a worker's
    main loop, heartbeat thread and checkpoint writer make short transactions, so 2 serve
    them all, and a server of N connections holds N / 2 workers. With psycopg 3 no statement
    is prepared on the server, so that a pooler in transaction mode (PgBouncer) can stand
    between.

    >>> engine_kwargs(make_url("postgresql+psycopg://db/x"))["connect_args"]["prepare_threshold"]
    >>> "prepare_threshold" in engine_kwargs(make_url("postgresql+psycopg2://db/x"))["connect_args"]
    False
    """
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": application_name(),
        }
        if url.get_driver_name() == "psycopg":
            # psycopg 3 prepares a statement on the server after its fifth run; behind a
            # pooler in transaction mode (PgBouncer before 1.21) the next transaction may get
            # another server connection, without it or with another's ("prepared statement
            # _pg3_0 does not exist / already exists"). Off for every PostgreSQL storage, so
            # that nobody has to know: measured, about a tenth more storage time, under 2 % of
            # a digits trial (docs/operations.md#through-a-pooler-pgbouncer).
            kwargs["connect_args"]["prepare_threshold"] = None
        kwargs.update(pool_size=connections, max_overflow=0, pool_timeout=POOL_TIMEOUT_S)
    return kwargs


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


# What a server with no connection slot left says as it refuses one: PostgreSQL's
# too_many_connections (SQLSTATE 53300, which psycopg does not attach to a refused connection,
# hence the words) and PgBouncer past its max_client_conn.
_SERVER_FULL = (
    "too many clients",
    "remaining connection slots are reserved",
    "too many connections for",
    "no more connections allowed",
)


def server_full(exc: BaseException) -> bool:
    """Whether `exc` (or the error Optuna wrapped in it) is a server refusing a connection
    because it has none left: a moment's state, waited for like an outage.

    >>> refused = Exception("FATAL:  sorry, too many clients already")
    >>> server_full(OperationalError("connect", {}, refused))
    True
    >>> server_full(OperationalError("connect", {}, Exception('database "x" does not exist')))
    False
    """
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        exc = exc.__cause__ or exc
    return isinstance(exc, OperationalError) and any(sign in str(exc) for sign in _SERVER_FULL)


def _open_rdb(
    url: str, kwargs: dict[str, Any], reconnect_timeout: float, max_delay: float
) -> RDBStorage:
    """Open the storage; while the server has no free connection (a worker started as the
    server is momentarily full), wait with back-off, as ResilientStorage waits out an outage,
    up to `reconnect_timeout` seconds. Any other error is raised at once: a wrong URL or a
    missing database does not get better by waiting."""
    started = time.monotonic()
    delay = min(0.5, max_delay)
    while True:
        try:
            return _create_rdb_storage(url, kwargs)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if not server_full(exc) or time.monotonic() - started + delay > reconnect_timeout:
                raise
            log.warning("storage has no free connection; retrying in %.1f s", delay)
        time.sleep(delay)
        delay = min(delay * 2, max_delay)


def _cannot_open(
    exc: BaseException, url: str, reconnect_timeout: float
) -> UserError | StorageUnavailable:
    said = f"cannot open storage {mask_url(url)}: {scrub(driver_message(exc), url)}"
    if server_full(exc):
        return StorageUnavailable(
            f"{said}; the server had no free connection for {reconnect_timeout:g} s "
            "(storage.reconnect_timeout): run fewer workers, raise its max_connections or put "
            "a pooler in front (docs/operations.md#through-a-pooler-pgbouncer)"
        )
    return UserError(
        f"{said}; check the URL, that the server is running and that the database exists"
    )


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
    connections: int = WORKER_CONNECTIONS,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`; every failure becomes a one-line UserError, but for a
    server that stayed full (StorageUnavailable).

    With `must_exist`, a SQLite file that is not there is an error instead of being created
    (commands that only read must not leave an empty database behind). Once open, a lost
    connection is waited out for `reconnect_timeout` seconds (see ResilientStorage); a server
    with no free connection ("too many clients") is waited for as long, at open too. A
    PostgreSQL storage holds at most `connections` connections (see engine_kwargs).
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
        rdb = _open_rdb(url, engine_kwargs(parsed, connections), reconnect_timeout, max_delay)
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
    except optuna.exceptions.StorageInternalError as exc:
        if not isinstance(exc.__cause__, SQLAlchemyError):
            raise
        raise _cannot_open(exc, url, reconnect_timeout) from None
    except SQLAlchemyError as exc:
        raise _cannot_open(exc, url, reconnect_timeout) from None
    # Optuna's cache of finished trials, as optuna.create_study(storage=url) would use.
    cached = optuna.storages.get_storage(rdb)
    return ResilientStorage(cached, reconnect_timeout, _ResetConnections(rdb), max_delay)
