"""Storage URLs -> Optuna storages, with settings per database and secrets kept out of output.

SQLite (the default, `sqlite:///lsearch.db` in the working directory) waits on a locked
database instead of failing; PostgreSQL gets pre-ping so a dropped connection is replaced
rather than raised, and a connect timeout so an unreachable host fails in seconds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from lsearch.errors import UserError

DEFAULT_STORAGE = "sqlite:///lsearch.db"
STORAGE_ENV = "LSEARCH_STORAGE"
SQLITE_BUSY_TIMEOUT_S = 120
CONNECT_TIMEOUT_S = 10


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


def sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def open_storage(url: str, *, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for `url`; every failure becomes a one-line UserError.

    With `must_exist`, a SQLite file that is not there is an error instead of being created
    (commands that only read must not leave an empty database behind).
    """
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
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(parsed))
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
