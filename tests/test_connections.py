"""The connection budget on PostgreSQL: a worker's connections name it in pg_stat_activity
(`application_name`), and however many of its threads use the storage at once (main loop,
heartbeat and stale-trial sweep, checkpoint writer), it holds at most WORKER_CONNECTIONS."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from lsearch.store.storage import WORKER_CONNECTIONS, application_name, open_storage
from tests.conftest import LSEARCH, TINY


def _connections(admin: sqlalchemy.Engine, name: str) -> int:
    with admin.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
        return int(conn.execute(sqlalchemy.text(query), {"name": name}).scalar_one())


def _admin(url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


def test_eight_threads_at_once_share_at_most_two_connections(postgres_url: str) -> None:
    """Without the cap, SQLAlchemy's default pool would open a connection for each thread."""
    storage = open_storage(postgres_url)
    study = optuna.create_study(storage=storage, study_name="budget")
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait()
            for _ in range(20):
                study.ask()
                study.get_trials(deepcopy=False)
        except BaseException as exc:  # (reported below, not lost in the thread)
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    admin, most = _admin(postgres_url), 0
    while any(thread.is_alive() for thread in threads):
        most = max(most, _connections(admin, application_name()))
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(study.trials) == 160
    assert 1 <= most <= WORKER_CONNECTIONS == 2


def test_a_running_worker_holds_at_most_two_connections_named_after_it(
    tmp_path: Path, postgres_url: str
) -> None:
    """A worker with a heartbeat every second and a checkpoint every epoch, counted in
    pg_stat_activity every few milliseconds while it trains."""
    env = {k: v for k, v in os.environ.items() if k != "LSEARCH_STORAGE"}
    args = ["run", "--trials", "4", *TINY, "--set", "space.epochs=6",
            "--set", "train.patience=100", "--set", "storage.heartbeat_interval=1",
            "--storage", postgres_url]  # fmt: skip
    worker = subprocess.Popen(
        [LSEARCH, *args], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    admin = _admin(postgres_url)
    seen: list[int] = []
    while worker.poll() is None:
        with admin.connect() as conn:
            names = conn.execute(
                sqlalchemy.text("SELECT application_name FROM pg_stat_activity")
            ).scalars()
            mine = [name for name in names if name.endswith(f":{worker.pid}")]
        seen.append(len(mine))
        assert all(name.startswith("lsearch:") for name in mine), mine
        time.sleep(0.005)
    assert worker.wait() == 0, worker.stderr.read() if worker.stderr else ""
    study = optuna.load_study(study_name="digits", storage=postgres_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4
    assert max(seen) >= 1 and max(seen) <= WORKER_CONNECTIONS, max(seen)


def test_the_proxy_holds_one_connection_per_answering_thread_and_one_for_its_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import optuna.storages

    import lsearch.store.storage as storage_module
    from lsearch.api import serve_proxy

    opened: dict[str, int] = {}
    real_open = storage_module.open_storage

    def open_storage(url: str, **kwargs: Any) -> Any:
        opened["connections"] = kwargs["connections"]
        return real_open(url, **kwargs)

    def serve(storage: Any, *, host: str, port: int, thread_pool: Any) -> None:
        opened["threads"] = thread_pool._max_workers

    monkeypatch.setattr(storage_module, "open_storage", open_storage)
    monkeypatch.setattr(optuna.storages, "run_grpc_proxy_server", serve)
    serve_proxy("sqlite:///:memory:", "127.0.0.1", 0)
    assert opened == {"connections": 11, "threads": 10}
