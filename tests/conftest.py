"""Shared fixtures: the real `lsearch` command in a subprocess, and a fresh PostgreSQL database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

LSEARCH = str(Path(sys.executable).with_name("lsearch"))

# A suite started in the background of a non-interactive shell (`bash .ci/run &`) inherits
# SIGINT ignored, and so would every lsearch it starts: Ctrl-C's tests, and the proxy and
# dashboard processes the tests stop with SIGINT, need Python's own handler back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
POSTGRES_ENV = "LSEARCH_TEST_POSTGRES"
POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# Small enough that a digits trial takes a fraction of a second on one core. The tests that use
# it were written for the from-scratch digits study, which the default was until issue 18, and
# name it (tests/test_transfer.py covers the transfer default).
TINY_SETS = ["data.train_per_class=20", "data.val_per_class=20", "space.epochs=3",
             "train.batch_size=64"]  # fmt: skip
TINY = ["--study", "digits", *(arg for text in TINY_SETS for arg in ("--set", text))]


def run_lsearch(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the installed `lsearch` command as a user would, without a terminal."""
    full_env = {k: v for k, v in os.environ.items() if k != "LSEARCH_STORAGE"}
    full_env.update(env or {})
    return subprocess.run(
        [LSEARCH, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_on_terminal(*args: str, cwd: Path, timeout: float = 300) -> str:
    """Run `lsearch` with its stderr on a pseudo-terminal, as in an interactive shell; what
    the terminal showed. The command must succeed."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [LSEARCH, *args],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
        env={k: v for k, v in os.environ.items() if k != "LSEARCH_STORAGE"} | {"TERM": "xterm"},
    )  # fmt: skip
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    assert process.wait(timeout=timeout) == 0
    os.close(leader)
    return screen.decode(errors="replace")


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The PostgreSQL server tests use; its absence fails the tests, it never skips them."""
    import sqlalchemy

    url = os.environ.get(POSTGRES_ENV, POSTGRES_DEFAULT)
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {url} ({exc.orig}); start it "
            "(pg_ctlcluster ... start) or point ${POSTGRES_ENV} at a server",
            pytrace=False,
        )
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    import sqlalchemy

    name = f"lsearch_test_{uuid.uuid4().hex[:12]}"
    # No pooled connections: a test may restart the server under this engine.
    admin = sqlalchemy.create_engine(
        postgres_server_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool
    )
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = sqlalchemy.make_url(postgres_server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb on a free port in a temporary folder,
    run as the `postgres` user), so that a test may stop and start it without touching the
    machine's server or the one $LSEARCH_TEST_POSTGRES names. `settings` are server settings
    for its command line (`{"max_connections": 10}` is `-c max_connections=10`)."""

    def __init__(self, settings: dict[str, str | int] | None = None) -> None:
        import shutil
        import socket
        import tempfile

        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.pg_ctl = str(Path(bindir) / "pg_ctl")
        self.folder = Path(tempfile.mkdtemp(prefix="lsearch-pg-"))
        shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.settings = dict(settings or {})
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._as_postgres(
            str(Path(bindir) / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        options += "".join(f" -c {key}={value}" for key, value in self.settings.items())
        log = str(self.folder / "server.log")
        self._as_postgres(
            self.pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start"
        )

    def stop(self) -> None:
        self._as_postgres(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        import shutil

        subprocess.run(
            ["runuser", "-u", "postgres", "--", self.pg_ctl, "-D", str(self.data), "-m",
             "immediate", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A fresh PostgreSQL cluster that this test alone may stop and start; without
    PostgreSQL's binaries the test fails (it never skips)."""
    cluster = OwnPostgres()
    try:
        yield cluster
    finally:
        cluster.remove()
