"""Workers through PgBouncer in transaction pooling mode, against a cluster too small to hold
them directly (`max_connections = 10`, of which 3 are kept for superusers: 7 for the workers'
role), and what a worker does when the server has no free connection: it waits, like an
outage, up to `storage.reconnect_timeout`, then ends with one line."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.trial import TrialState

from lsearch import StorageUnavailable  # as the Python API docs name it
from lsearch.store.storage import open_storage
from tests.conftest import TINY, OwnPostgres
from tests.test_workers import finish, start_worker

MAX_CONNECTIONS = 10
RESERVED = 3  # PostgreSQL's superuser_reserved_connections: the role below gets 7
PASSWORD = "pool-s3cret"  # in every URL, so that a printed one would be caught
FULL = ("too many clients", "remaining connection slots are reserved")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """Debian's pgbouncer in transaction pooling mode in front of `cluster`, on a free port,
    run as the `postgres` user (it refuses root); its absence fails the test."""

    def __init__(self, cluster: OwnPostgres, pool_size: int) -> None:
        program = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(program).is_file():
            pytest.fail("pgbouncer is not installed (apt-get install pgbouncer)", pytrace=False)
        self.folder = Path(tempfile.mkdtemp(prefix="lsearch-pgbouncer-"))
        self.port = _free_port()
        config = self.folder / "pgbouncer.ini"
        (self.folder / "users.txt").write_text('"lsearch" ""\n')
        config.write_text(
            f"[databases]\n* = host=127.0.0.1 port={cluster.port}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {self.folder}\nauth_type = trust\n"
            f"auth_file = {self.folder / 'users.txt'}\npool_mode = transaction\n"
            f"max_client_conn = 100\ndefault_pool_size = {pool_size}\n"
            f"logfile = {self.folder / 'pgbouncer.log'}\n"
        )
        for path in (self.folder, *self.folder.iterdir()):
            shutil.chown(path, "postgres", "postgres")
        self.process = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", program, str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"pgbouncer did not start: {self.log()}")

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text() if path.is_file() else ""

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[OwnPostgres]:
    """A cluster of the module's own with max_connections = 10 and a role `lsearch` (not a
    superuser, so it gets 10 - 3 connections, as a deployment's workers would)."""
    cluster = OwnPostgres({"max_connections": MAX_CONNECTIONS})
    try:
        _admin(cluster, f"CREATE ROLE lsearch LOGIN PASSWORD '{PASSWORD}'")
        yield cluster
    finally:
        cluster.remove()


def _admin(cluster: OwnPostgres, statement: str) -> None:
    engine = sqlalchemy.create_engine(
        cluster.url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool
    )
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(statement))
    engine.dispose()


def _fresh_database(cluster: OwnPostgres, port: int | None = None) -> str:
    """A new database owned by `lsearch`; its URL with the password, on `port` (the
    cluster's, or a pooler's in front of it)."""
    name = f"lsearch_{int(time.time() * 1000) % 10**9}"
    _admin(cluster, f'CREATE DATABASE "{name}" OWNER lsearch')
    return f"postgresql+psycopg://lsearch:{PASSWORD}@127.0.0.1:{port or cluster.port}/{name}"


def _hold_connections(url: str, left_free: int) -> list[psycopg.Connection]:
    """Connections as `lsearch` until the server refuses one, less `left_free` of them:
    the role's slots all taken but `left_free`."""
    conninfo = sqlalchemy.make_url(url).set(drivername="postgresql")
    dsn = conninfo.render_as_string(hide_password=False)
    held: list[psycopg.Connection] = []
    while len(held) <= MAX_CONNECTIONS:
        try:
            held.append(psycopg.connect(dsn))
        except psycopg.OperationalError as exc:
            assert any(sign in str(exc) for sign in FULL), exc
            assert len(held) > left_free
            for conn in held[len(held) - left_free :]:
                conn.close()
            return held[: len(held) - left_free]
    raise AssertionError("the server took more connections than max_connections")


# Opening takes two connections at once (Optuna's schema check runs inside a session): with
# none free the first is refused (an OperationalError), with one free the second, inside
# Optuna, which wraps it in a StorageInternalError.
@pytest.mark.parametrize("left_free", [0, 1])
def test_a_worker_opening_a_full_server_waits_for_a_free_connection(
    small_cluster: OwnPostgres, left_free: int
) -> None:
    """Reproduced: open_storage turned "too many clients" into an error at once (a worker
    started while the server was momentarily full died), or let Optuna's
    StorageInternalError out with a traceback when the refusal came in its schema check."""
    url = _fresh_database(small_cluster)
    held = _hold_connections(url, left_free)
    release = threading.Timer(2.0, lambda: [conn.close() for conn in held])
    release.start()
    try:
        storage = open_storage(url, reconnect_timeout=60, max_delay=0.5)
    finally:
        release.join()
    study = optuna.create_study(storage=storage, study_name="waited")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    storage._on_lost()  # its pooled connections, for the next test's slots


@pytest.mark.parametrize("left_free", [0, 1])
def test_a_server_full_for_longer_than_the_window_is_one_line(
    small_cluster: OwnPostgres, left_free: int
) -> None:
    url = _fresh_database(small_cluster)
    held = _hold_connections(url, left_free)
    try:
        with pytest.raises(StorageUnavailable) as raised:  # the CLI's exit 1, not 2
            open_storage(url, reconnect_timeout=1, max_delay=0.5)
    finally:
        for conn in held:
            conn.close()
    message = str(raised.value)
    assert any(sign in message for sign in FULL), message
    assert "no free connection" in message and "pooler" in message
    assert PASSWORD not in message and "\n" not in message


def test_a_worker_whose_storage_stays_away_past_the_window_ends_with_one_line(
    tmp_path: Path, own_postgres: OwnPostgres
) -> None:
    """Reproduced: a running worker whose database went away for longer than
    storage.reconnect_timeout died with Python's traceback (exit 1)."""
    url = own_postgres.url.replace("postgres@", f"postgres:{PASSWORD}@")
    args = ("--trials", "50", *TINY, "--set", "space.epochs=30", "--set", "train.patience=100",
            "--set", 'pruner.type="none"', "--set", "storage.reconnect_timeout=2")  # fmt: skip
    worker = start_worker(*args, cwd=tmp_path, env={"LSEARCH_STORAGE": url})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            study = optuna.load_study(study_name="digits", storage=url)
            if study.get_trials(states=(TrialState.RUNNING,)):
                break
        except KeyError:
            pass
        time.sleep(0.2)
    own_postgres.stop()
    code, stderr = finish(worker, timeout=120)
    assert code == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: storage unreachable for more than 2 s"), stderr
    assert "Traceback" not in stderr and PASSWORD not in stderr


WORKERS = 8
TRIALS = 16
# The same short window for both runs: through the pooler nothing is refused, so it never
# matters; straight to the server a worker that finds no free connection for 2 s gives up.
SHORT_WINDOW = "storage.reconnect_timeout=2"


def _start_eight(url: str, cwd: Path) -> list[subprocess.Popen[str]]:
    args = ("--trials", str(TRIALS), *TINY, "--set", SHORT_WINDOW)
    return [start_worker(*args, cwd=cwd, env={"LSEARCH_STORAGE": url}) for _ in range(WORKERS)]


def _as_superuser(cluster: OwnPostgres, url: str) -> str:
    """The database of `url` as the superuser, straight to the cluster (a reserved slot)."""
    name = sqlalchemy.make_url(url).database
    return sqlalchemy.make_url(cluster.url).set(database=name).render_as_string(False)


def test_eight_workers_through_pgbouncer_finish_a_study_on_a_server_of_seven_connections(
    small_cluster: OwnPostgres, tmp_path: Path
) -> None:
    """PgBouncer in transaction pooling mode with 6 server connections: the 8 workers' 16
    client connections take turns on them, and every worker finishes. With psycopg's prepared
    statements on (its default), workers failed here ("prepared statement "_pg3_0" already
    exists", or "does not exist")."""
    bouncer = PgBouncer(small_cluster, pool_size=MAX_CONNECTIONS - RESERVED - 1)
    try:
        url = _fresh_database(small_cluster, port=bouncer.port)
        workers = _start_eight(url, tmp_path)
        watcher = sqlalchemy.create_engine(_as_superuser(small_cluster, url))
        most = 0
        with watcher.connect() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'lsearch'"
            while any(worker.poll() is None for worker in workers):
                most = max(most, int(conn.execute(sqlalchemy.text(query)).scalar_one()))
                conn.rollback()
                time.sleep(0.1)
        watcher.dispose()
        results = [finish(worker) for worker in workers]
    finally:
        bouncer.stop()
    for code, stderr in results:
        assert code == 0, stderr
        assert "Traceback" not in stderr and PASSWORD not in stderr
    assert 1 <= most <= MAX_CONNECTIONS - RESERVED - 1, most
    study = optuna.load_study(study_name="digits", storage=_as_superuser(small_cluster, url))
    states = [trial.state for trial in study.trials]
    assert TrialState.FAIL not in states, states
    assert sum(state in (TrialState.COMPLETE, TrialState.PRUNED) for state in states) >= TRIALS
    assert len(states) <= TRIALS + WORKERS - 1, states


def test_the_same_eight_workers_straight_to_the_server_do_not_all_finish(
    small_cluster: OwnPostgres, tmp_path: Path
) -> None:
    """What proves that the pooler holds them: straight to the cluster, the workers that find
    no free connection ("too many clients") wait the 2 s window and give up, each with one
    line and exit 1, whether it could not open the storage or lost it while running (no user
    error: a Kubernetes Job replaces such a worker instead of failing)."""
    url = _fresh_database(small_cluster)
    results = [finish(worker) for worker in _start_eight(url, tmp_path)]
    failed = [(code, stderr) for code, stderr in results if code != 0]
    assert failed, "8 workers ran straight on 7 connections: this test proves nothing"
    for code, stderr in failed:
        last = stderr.strip().splitlines()[-1]
        assert code == 1 and last.startswith("error: "), stderr
        assert any(sign in last for sign in FULL), stderr
    for _, stderr in results:
        assert "Traceback" not in stderr and PASSWORD not in stderr
