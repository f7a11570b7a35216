"""What turning psycopg's server-side prepared statements off costs on a direct connection.

lsearch opens every psycopg storage with `prepare_threshold=None`, so that workers can run
through a pooler in transaction mode (docs/operations.md). This runs search-like trials (ask,
four parameters, eight user attrs in one transaction, three intermediate values, tell) through
lsearch's own storage on two fresh databases of the server given, side by side: one with
statements prepared as psycopg does by default (after their fifth run), one with none. The
two take turns in blocks of a few trials (ABBA), so that a machine that gets busier or quieter
slows both alike, and each pair of blocks gives a ratio. Parameters are drawn at random, so
that the time is the storage's. `--no-sync` sets `synchronous_commit = off` on both, which
takes the disk's flush at each commit out and leaves the work preparing saves a larger share.

    python scripts/measure_prepared.py [--server URL] [--blocks 40] [--trials 10] [--no-sync]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import URL

from lsearch.store import storage as storage_module
from lsearch.store.resilient import batched_user_attrs

PSYCOPG_DEFAULT_THRESHOLD = 5


def one_trial(study: optuna.Study) -> None:
    trial = study.ask()
    trial.suggest_float("label_smoothing", 0.0, 0.3)
    trial.suggest_int("epochs", 3, 30)
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_int("trainable_layers", 1, 4)
    with batched_user_attrs(trial):
        for key in ("seeds", "device", "threads", "val_acc", "val_ece", "curve", "a", "b"):
            trial.set_user_attr(key, [0.5, 0.25])
    for step in range(3):
        trial.report(0.1 * step, step)
    study.tell(trial, 0.5)


@contextmanager
def fresh_study(server: str, threshold: int | None, sync: bool) -> Iterator[optuna.Study]:
    """A study on a fresh database through lsearch's storage, statements prepared after
    `threshold` runs (None: never); the database is dropped afterwards."""
    name = f"lsearch_prepared_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(
        server, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool
    )
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    real = storage_module.engine_kwargs

    def engine_kwargs(url: URL, connections: int = 2) -> dict[str, Any]:
        kwargs = real(url, connections)
        kwargs["connect_args"]["prepare_threshold"] = threshold
        if not sync:
            kwargs["connect_args"]["options"] = "-c synchronous_commit=off"
        return kwargs

    storage_module.engine_kwargs = engine_kwargs  # type: ignore[assignment]
    try:
        url = sqlalchemy.make_url(server).set(database=name).render_as_string(False)
        storage = storage_module.open_storage(url)
        sampler = optuna.samplers.RandomSampler(seed=0)
        yield optuna.create_study(storage=storage, study_name="m", sampler=sampler)
        storage.inner._backend.engine.dispose()
    finally:
        storage_module.engine_kwargs = real  # type: ignore[assignment]
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def ms_per_trial(study: optuna.Study, trials: int) -> float:
    started = time.perf_counter()
    for _ in range(trials):
        one_trial(study)
    return (time.perf_counter() - started) * 1000 / trials


def prepared_count(study: optuna.Study) -> int:
    """Statements prepared in one of the storage's connections (psycopg's _pg3_N)."""
    with study._storage.inner._backend.engine.connect() as conn:
        query = "SELECT count(*) FROM pg_prepared_statements"
        return int(conn.execute(sqlalchemy.text(query)).scalar_one())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--blocks", type=int, default=40, help="pairs of blocks")
    parser.add_argument("--trials", type=int, default=10, help="trials per block")
    parser.add_argument("--no-sync", action="store_true", help="synchronous_commit = off")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sync = not args.no_sync
    with (
        fresh_study(args.server, PSYCOPG_DEFAULT_THRESHOLD, sync) as prepared,
        fresh_study(args.server, None, sync) as off,
    ):
        for study in (prepared, off):  # warm up: caches filled, statements past the threshold
            ms_per_trial(study, 20)
        times: dict[str, list[float]] = {"prepared": [], "off": []}
        for block in range(args.blocks):
            order = [("prepared", prepared), ("off", off)]
            for label, study in order if block % 2 == 0 else order[::-1]:
                times[label].append(ms_per_trial(study, args.trials))
        counts = prepared_count(prepared), prepared_count(off)
    ratios = sorted(o / p - 1 for p, o in zip(times["prepared"], times["off"], strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"statements prepared in a connection: {counts[0]} (default), {counts[1]} (off)")
    for label, values in times.items():
        print(f"{label:>8}: median {statistics.median(values):.2f} ms per trial")
    print(
        f"off against prepared, per pair of blocks: median {statistics.median(ratios):+.1%}, "
        f"quartiles {quartiles[0]:+.1%} .. {quartiles[2]:+.1%} ({len(ratios)} pairs)"
    )


if __name__ == "__main__":
    main()
