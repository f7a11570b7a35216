"""End to end on the real PostgreSQL server (a fresh database per test)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from tests.conftest import TINY, run_lsearch


def with_password(url: str, password: str) -> str:
    # The test server trusts loopback connections, so any password is accepted: it is here
    # only to check that lsearch never prints it.
    return sqlalchemy.make_url(url).set(password=password).render_as_string(hide_password=False)


def test_run_status_best_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    url = with_password(postgres_url, "pg-s3cret")
    result = run_lsearch("run", "--trials", "3", *TINY, "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pg-s3cret" not in result.stdout + result.stderr
    assert "***@" in result.stderr
    assert not (tmp_path / "lsearch.db").exists(), "nothing went to the default SQLite file"

    study = optuna.load_study(study_name="digits", storage=postgres_url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 3
    assert all(len(t.user_attrs["val_acc_per_seed"]) == 3 for t in finished)

    resumed = run_lsearch("run", "--trials", "4", *TINY, "--storage", url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len(optuna.load_study(study_name="digits", storage=postgres_url).trials) == 4

    status = run_lsearch("status", cwd=tmp_path, env={"LSEARCH_STORAGE": url})
    assert status.returncode == 0, status.stderr
    assert "digits" in status.stdout and "pg-s3cret" not in status.stdout
    best = run_lsearch("best", "--json", "--storage", url, cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["best"]["number"] == study.best_trial.number


def test_a_missing_postgresql_database_is_a_user_error(tmp_path: Path, postgres_url: str) -> None:
    missing = sqlalchemy.make_url(postgres_url).set(database="lsearch_no_such_db", password="pw9")
    url = missing.render_as_string(hide_password=False)
    result = run_lsearch("run", *TINY, "--storage", url, cwd=tmp_path)
    assert result.returncode == 2
    assert 'database "lsearch_no_such_db" does not exist' in result.stderr
    assert "pw9" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def fake_postgres_rejecting_passwords() -> tuple[socket.socket, threading.Thread, list[bytes]]:
    """A server speaking just enough of PostgreSQL's wire protocol to ask for a password and
    refuse it as a real server with password auth would (the test server trusts loopback)."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def read_exactly(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def serve() -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                conn, _ = server.accept()
                with conn:
                    while True:  # SSL / GSS encryption requests: answer "no", then startup
                        length, code = struct.unpack("!ii", read_exactly(conn, 8))
                        if code in (80877103, 80877104):
                            conn.sendall(b"N")
                            continue
                        read_exactly(conn, length - 8)
                        break
                    conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
                    _kind, length = struct.unpack("!ci", read_exactly(conn, 5))
                    received.append(read_exactly(conn, length - 4))
                    fields = (
                        b'SFATAL\0C28P01\0Mpassword authentication failed for user "lsearch"\0\0'
                    )
                    conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread, received


def test_a_wrong_password_is_one_line_and_never_printed(tmp_path: Path) -> None:
    server, _, received = fake_postgres_rejecting_passwords()
    port = server.getsockname()[1]
    url = f"postgresql+psycopg://lsearch:Wr0ngPassw0rd@127.0.0.1:{port}/studies"
    try:
        for command in (["run", *TINY], ["status"], ["best"]):
            result = run_lsearch(*command, "--storage", url, cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            assert "password authentication failed" in result.stderr
            assert "Wr0ngPassw0rd" not in result.stdout + result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        server.close()
    assert any(b"Wr0ngPassw0rd" in message for message in received), "the client sent it"
