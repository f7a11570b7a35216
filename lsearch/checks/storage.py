"""The storage: reachable and writable, without creating anything (a probe table in a
transaction that is rolled back; a SQLite file that is not there is only looked for)."""

from __future__ import annotations

import os
import socket
import sqlite3
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lsearch.checks.check import Check, first_line

CONNECT_TIMEOUT_S = 5
PROBE_PREFIX = "lsearch_doctor_probe_"


def _secrets(url: str) -> tuple[str, ...]:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return ()
    if not password:
        return ()
    password = str(password)
    return (password, quote(password, safe=""))


def _check_sqlite(path: Path, shown: str) -> Check:
    figures: dict[str, Any] = {"url": shown, "backend": "sqlite", "path": str(path)}
    if not path.exists():
        folder = path.parent
        figures.update(exists=False)
        if not folder.is_dir():
            detail = f"{shown}: folder {folder} does not exist; create it first"
            return Check("storage", "fail", detail, figures | {"writable": False})
        writable = os.access(folder, os.W_OK | os.X_OK)
        figures.update(writable=writable)
        if not writable:
            detail = f"{shown}: not created yet, and folder {folder} is not writable"
            return Check("storage", "fail", detail, figures)
        detail = f"{shown}: not created yet: lsearch run will create it (folder writable)"
        return Check("storage", "ok", detail, figures)
    figures.update(exists=True)
    if not path.is_file():
        return Check("storage", "fail", f"{shown}: {path} is not a file", figures)
    probe = PROBE_PREFIX + uuid.uuid4().hex[:8]
    # mode=rw opens an existing file and never creates one; the probe table is rolled back.
    uri = f"file:{quote(str(path.resolve()))}?mode=rw"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        return Check("storage", "fail", f"{shown}: cannot open ({first_line(exc)})", figures)
    try:
        has_optuna = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'studies'"
        ).fetchone()[0]
        studies = (
            connection.execute("SELECT count(*) FROM studies").fetchone()[0] if has_optuna else 0
        )
        connection.execute("BEGIN")
        try:
            connection.execute(f'CREATE TABLE "{probe}" (x INTEGER)')
        finally:
            connection.execute("ROLLBACK")
    except sqlite3.Error as exc:
        figures.update(writable=False)
        return Check("storage", "fail", f"{shown}: not writable ({first_line(exc)})", figures)
    finally:
        connection.close()
    figures.update(writable=True, studies=studies)
    held = f"holds {studies} studies" if has_optuna else "no Optuna tables yet"
    return Check("storage", "ok", f"{shown}: exists and writable ({held})", figures)


def _check_database(url: str, shown: str, backend: str) -> Check:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    figures: dict[str, Any] = {"url": shown, "backend": backend}
    secrets = _secrets(url)
    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    probe = PROBE_PREFIX + uuid.uuid4().hex[:8]
    engine = None
    stage = "cannot connect"
    try:
        engine = sqlalchemy.create_engine(url, **kwargs)
        with engine.connect() as connection:
            stage = "reachable but not writable"
            figures.update(exists=True)
            has_optuna = sqlalchemy.inspect(connection).has_table("studies")
            connection.rollback()  # end the inspection's implicit transaction
            transaction = connection.begin()
            try:
                connection.execute(sqlalchemy.text(f'CREATE TABLE "{probe}" (x integer)'))
            finally:
                transaction.rollback()
    except ModuleNotFoundError as exc:
        detail = f"{shown}: driver not installed ({exc.name}); pip install it"
        return Check("storage", "fail", detail, figures)
    except Exception as exc:
        original = getattr(exc, "orig", None) or exc
        figures.update(writable=False)
        detail = f"{shown}: {stage} ({first_line(original, secrets)})"
        return Check("storage", "fail", detail, figures)
    finally:
        if engine is not None:
            engine.dispose()
    figures.update(writable=True)
    held = (
        "holds Optuna's tables" if has_optuna else "empty: lsearch run will create Optuna's tables"
    )
    return Check("storage", "ok", f"{shown}: reachable and writable ({held})", figures)


def _check_grpc(url: str, shown: str) -> Check:
    figures: dict[str, Any] = {"url": shown, "backend": "grpc"}
    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return Check("storage", "fail", f"{shown}: write a proxy address as grpc://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        detail = f"{shown}: proxy not reachable ({first_line(exc)}); start `lsearch proxy`"
        return Check("storage", "fail", detail, figures)
    detail = f"{shown}: proxy port reachable; writes not checked (the proxy's database)"
    return Check("storage", "ok", detail, figures)


def check_storage(url: str) -> Check:
    """Whether the storage is reachable and writable, without creating anything: a SQLite
    file that is not there is fine if its folder is writable; an existing one, or a
    PostgreSQL database, gets a probe table in a transaction that is rolled back; a
    grpc:// proxy gets a TCP connection. The URL is shown with its password masked.

    >>> check_storage("sqlite:////no-such-folder/x.db").detail
    'sqlite:////no-such-folder/x.db: folder /no-such-folder does not exist; create it first'
    """
    from sqlalchemy.engine import make_url

    from lsearch.store.storage import mask_url, sqlite_path

    shown = mask_url(url)
    if url.startswith("grpc://"):
        return _check_grpc(url, shown)
    try:
        parsed = make_url(url)
    except Exception:
        return Check("storage", "fail", f"{shown}: not a storage URL", {"url": shown})
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(parsed)
        if path is None:
            return Check(
                "storage", "warn", f"{shown}: in memory, nothing is kept",
                {"url": shown, "backend": backend},
            )  # fmt: skip
        return _check_sqlite(path, shown)
    return _check_database(url, shown, backend)
