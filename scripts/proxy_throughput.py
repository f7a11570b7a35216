"""Storage throughput of 8 workers on one PostgreSQL database: direct, and through one
`lsearch proxy` (issue 21). Trials do no training, so that the storage is what is measured.

    python scripts/proxy_throughput.py [--storage URL] [--workers 8] [--trials 200] [--pairs 3]

Without --storage it creates a fresh database (lsearch_bench_<random>) on --server (default
postgresql+psycopg://postgres@127.0.0.1:5432/, a local server with trust authentication) and
drops it at the end; with --storage it uses that database and deletes its own studies.

Each run starts `--workers` processes on a fresh study. In `direct` runs they use the
PostgreSQL URL; in `proxy` runs one `lsearch proxy --storage URL` process serves it and they
use grpc://127.0.0.1:PORT. Runs alternate (direct, proxy, direct, proxy, ...) so that the noise
of a shared machine falls on both alike; the summary gives each mode's median and range.

What a worker runs is lsearch's own search, with the training stubbed out, not a replay of
counted calls: lsearch's open_storage (its ResilientStorage and connection settings, or the
gRPC client), open_study (the study file's TPE sampler and median pruner), run_until (the
trial loop, its heartbeat thread and stale-trial sweep) and SearchObjective (suggest, the
duplicate check, TrialTraining's batched user attrs, one report and should_prune per epoch,
patience, the attrs recorded at the end, told by the loop). Only `SearchObjective.start` is
replaced: its seed-runs train nothing and return made-up metrics (a smooth function of the
configuration, so that the sampler and the pruner work as in a search). So the calls per
trial are what lsearch makes, by construction. A trial of milliseconds writes its first
heartbeat but no periodic one and no checkpoint; a real digits trial of seconds adds a beat
every 10 s and, past 10 s, a checkpoint's user attrs (scripts/storage_calls.py counted 30.2
transactions a trial on PostgreSQL, 2026-12-04, against 23 to 34 here with 8 workers).

Calls are counted in the workers: in direct runs every RDBStorage transaction (the counting
of scripts/storage_calls.py), in proxy runs every gRPC request the client sends. The two are
not the same work per trial (behind the proxy the storage is Optuna's gRPC client, not
ResilientStorage, so lsearch's batched user attrs go one request each), so the like-for-like
figure is trials per second; the database's own count of transactions (pg_stat_database) is
given for both (it includes the pre-ping `SELECT 1` of each connection checkout, which
SQLAlchemy runs in autocommit). CPU seconds of the workers, the proxy and the PostgreSQL
backends over each run, as shares of the machine (`cpu_share`; `others` is the rest of a
shared machine), say what a run was bound by; `workers_outside_storage_calls` is the workers'
CPU time outside storage calls (sampling, pruning, the stub), which the stub keeps small.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty
from types import SimpleNamespace
from typing import Any

import sqlalchemy
from sqlalchemy.engine import URL, make_url

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/"
TICKS = os.sysconf("SC_CLK_TCK")
# A stub seed-run's validation logits: few rows, so that the temperature fit lsearch runs on
# them at a trial's end costs the client little (a digits study has 440).
VAL_ROWS, CLASSES = 50, 10


# --- CPU time, from /proc (the PostgreSQL backends are not our children) ---


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far; 0 when it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, whoever used them."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --- the database server ---


def admin_engine(url: URL) -> sqlalchemy.Engine:
    """A connection to the server's `postgres` database, outside any transaction (CREATE and
    DROP DATABASE need that, and the counters read here stay out of the bench database's)."""
    return sqlalchemy.create_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool
    )


def backend_pids(admin: sqlalchemy.Engine, database: str) -> list[int]:
    query = sqlalchemy.text("SELECT pid FROM pg_stat_activity WHERE datname = :db")
    with admin.connect() as connection:
        return [row[0] for row in connection.execute(query, {"db": database})]


def transactions(admin: sqlalchemy.Engine, database: str) -> int:
    """Transactions committed and rolled back in `database` so far. Backends report them at
    most once a second and when they exit: read after a settle (see settled_transactions)."""
    query = sqlalchemy.text(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :db"
    )
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_stat_clear_snapshot()"))
        return int(connection.execute(query, {"db": database}).scalar_one())


def settled_transactions(admin: sqlalchemy.Engine, database: str) -> int:
    time.sleep(1.5)  # PostgreSQL 15 flushes a backend's counters at most every second
    return transactions(admin, database)


@contextlib.contextmanager
def bench_database(storage: str | None, server: str) -> Iterator[URL]:
    """The database to measure: `storage` as given, or a fresh one on `server`, dropped after."""
    if storage is not None:
        yield make_url(storage)
        return
    url = make_url(server).set(database=f"lsearch_bench_{secrets.token_hex(4)}")
    admin = admin_engine(url)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{url.database}"'))
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{url.database}" WITH (FORCE)'))
        admin.dispose()


# --- the proxy ---


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_proxy(url: str, port: int, timeout_s: float = 120.0) -> subprocess.Popen[bytes]:
    """`lsearch proxy` on 127.0.0.1:`port`, once it accepts connections. The URL goes in the
    environment ($LSEARCH_STORAGE), as lsearch passes it to its own workers."""
    env = {**os.environ, "LSEARCH_STORAGE": url}
    command = [sys.executable, "-m", "lsearch", "proxy", "--host", "127.0.0.1", "--port", str(port)]
    proxy = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s  # it imports torch first: seconds on 2 busy cores
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise SystemExit(f"lsearch proxy exited with {proxy.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proxy
        time.sleep(0.2)
    proxy.kill()
    raise SystemExit(f"lsearch proxy did not listen on port {port} within {timeout_s:g} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- a worker (a spawned process) ---


class CountingStub:
    """Optuna's gRPC stub, counting every request this process sends (from any thread)."""

    def __init__(self, stub: Any, calls: Counter[str], lock: threading.Lock) -> None:
        self._stub, self._calls, self._lock = stub, calls, lock

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._calls[name] += 1
            return method(*args, **kwargs)

        return counted


class StorageClock:
    """CPU seconds this process's threads spend inside storage calls (the storage's public
    methods, and ResilientStorage's `_call` behind its batched writes): the rest of a
    worker's CPU time is the trial's own work (sampling, pruning, the stub's metrics)."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()

    def wrap(self, storage: Any) -> None:
        from optuna.storages import BaseStorage

        names = [n for n, m in vars(BaseStorage).items() if callable(m) and n[0] != "_"]
        for name in [*names, "_call"]:
            if hasattr(storage, name):
                setattr(storage, name, self._timed(getattr(storage, name)))

    def _timed(self, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "inside", False):  # a call within a call counts once
                return method(*args, **kwargs)
            self._local.inside = True
            start = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                self._local.inside = False
                with self._lock:
                    self.cpu_s += spent

        return timed


def count_calls(storage: Any, calls: Counter[str]) -> None:
    """Count this process's storage calls into `calls`: gRPC requests behind the proxy, RDB
    transactions (scripts/storage_calls.py's definition) on a database."""
    from optuna.storages import GrpcStorageProxy

    if isinstance(storage, GrpcStorageProxy):
        stub = CountingStub(storage._stub, calls, threading.Lock())
        storage._stub = stub
        storage._cache.grpc_client = stub  # the cache's reads of the study's trials
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from storage_calls import count_calls as count_transactions

    count_transactions(calls, Counter())


class StubRun:
    """Stands in for a SeedRun (lsearch.training.seed_run): trains nothing; its validation
    accuracy rises over the epochs towards a ceiling set by the configuration (best near
    lr = 3e-3 and label smoothing 0.1), so that TPE and the median pruner have a landscape."""

    def __init__(self, seed: int, config: Any) -> None:
        import torch

        from lsearch.training.devices import Precision

        self.seed, self.config, self.epoch = seed, config, 0
        self.scaler = None
        self.precision = Precision(None, "stub")
        generator = torch.Generator().manual_seed(seed)
        self.logits = torch.randn(VAL_ROWS, CLASSES, generator=generator)
        labels = torch.randint(0, CLASSES, (VAL_ROWS,), generator=generator)
        self.split = SimpleNamespace(val_labels=labels)
        lr_gap = abs(math.log10(config.lr / 3e-3))
        self.ceiling = 0.97 - 0.15 * lr_gap - 0.2 * abs(config.label_smoothing - 0.1)
        self.ceiling -= 0.01 * seed + 0.02 * abs(config.trainable_layers - 3)

    def train_epoch(self) -> float:
        self.epoch += 1
        return 2.0 / self.epoch

    def evaluate(self, loss: float) -> tuple[Any, Any]:
        from lsearch.training.seed_run import EpochMetrics

        acc = self.ceiling * (1 - math.exp(-self.epoch / 3))
        return EpochMetrics(loss, 1.5 * loss, acc, 0.1 / self.epoch), self.logits * self.epoch

    def state_dict(self) -> dict[str, Any]:
        return {}


def make_objective(spec: Any) -> Any:
    """lsearch's SearchObjective with its seed-runs stubbed (see StubRun), on the CPU."""
    import torch

    from lsearch.search.checkpoints import Checkpoints, open_artifact_store
    from lsearch.search.objective import SearchObjective
    from lsearch.training.devices import CoreShare

    class StubObjective(SearchObjective):
        def start(self, seed: int, config: Any) -> Any:
            return StubRun(seed, config)

    checkpoints = Checkpoints(open_artifact_store(spec.checkpoint.location))
    # The pool is read only by the replaced `start`; threads=1 claims no core slot file.
    return StubObjective(spec, None, torch.device("cpu"), None, checkpoints, CoreShare(1))  # type: ignore[arg-type]


def worker(job: dict[str, Any], ready: Any, go: Any, release: Any, results: Any) -> None:
    """Open the storage and the study, wait for `go`, run lsearch's trial loop until the study
    holds job["trials"] finished trials, report, and wait for `release` (so that the parent
    reads the CPU time of our database connections before they close)."""
    from lsearch import load_study_file
    from lsearch.api.common import quiet_libraries
    from lsearch.search.launch import open_spec_storage
    from lsearch.search.loop import run_until
    from lsearch.search.study import open_study

    quiet_libraries()
    spec = load_study_file(job["study"], job["sets"])
    storage, liveness = open_spec_storage(spec, job["url"])
    study = open_study(spec, storage, job["name"])
    objective = make_objective(spec)
    calls: Counter[str] = Counter()
    count_calls(storage, calls)
    clock = StorageClock()
    clock.wrap(storage)
    told: list[int] = []
    ready.put(os.getpid())
    go.wait()
    calls.clear()  # opening is not what is measured
    clock.cpu_s = 0.0
    cpu = os.times()
    started = time.monotonic()
    # poll_seconds: a worker with nothing left to start checks again soon, so that the tail
    # of a run (the last trials running elsewhere) is not padded with lsearch's 2 s sleeps.
    run_until(study, objective, job["trials"], callbacks=[lambda s, t: told.append(t.number)],
              liveness=liveness, poll_seconds=0.05)  # fmt: skip
    ended = time.monotonic()
    after = os.times()
    results.put({
        "started": started, "ended": ended, "trials": len(told), "calls": dict(calls),
        "cpu_s": after.user + after.system - cpu.user - cpu.system, "storage_cpu_s": clock.cpu_s,
    })  # fmt: skip
    release.wait()


# --- one run, and the summary ---


def start_workers(job: dict[str, Any], count: int) -> tuple[list[Any], dict[str, Any]]:
    """`count` workers, each with its storage and study open, waiting for the signal."""
    context = multiprocessing.get_context("spawn")
    sync = {"ready": context.Queue(), "go": context.Event(), "release": context.Event(),
            "results": context.Queue()}  # fmt: skip
    processes = [
        context.Process(target=worker, args=(job, sync["ready"], sync["go"], sync["release"],
                                             sync["results"]), daemon=True)
        for _ in range(count)
    ]  # fmt: skip
    for process in processes:
        process.start()
    collect(sync["ready"], processes)
    return processes, sync


def collect(queue: Any, processes: list[Any]) -> list[Any]:
    """One message from each worker; a worker that died ends the benchmark (multiprocessing
    has printed its traceback) instead of leaving the others waiting."""
    got: list[Any] = []
    while len(got) < len(processes):
        try:
            got.append(queue.get(timeout=1))
        except Empty:
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if failed:
                raise SystemExit(
                    f"a worker exited with {failed[0]}: see its traceback above"
                ) from None
    return got


def measure(job: dict[str, Any], workers: int, admin: sqlalchemy.Engine, db: str) -> dict[str, Any]:
    """One run on a fresh study: the workers' figures, the database's transactions and the CPU
    seconds of workers, proxy (job["proxy_pid"]) and PostgreSQL backends over the run."""
    processes, sync = start_workers(job, workers)
    xacts = settled_transactions(admin, db)
    proxy_pid = job.get("proxy_pid")
    pids = backend_pids(admin, db)
    before = {pid: process_cpu_s(pid) for pid in [*pids, *([proxy_pid] if proxy_pid else [])]}
    busy, total = machine_ticks()
    go = time.monotonic()
    sync["go"].set()
    done = collect(sync["results"], processes)
    wall = max(d["ended"] for d in done) - go
    busy_after, total_after = machine_ticks()
    postgres_s = sum(process_cpu_s(p) - before.get(p, 0.0) for p in backend_pids(admin, db))
    proxy_s = process_cpu_s(proxy_pid) - before[proxy_pid] if proxy_pid else 0.0
    sync["release"].set()
    for process in processes:
        process.join(timeout=60)
    calls = sum(sum(d["calls"].values()) for d in done)
    trials = sum(d["trials"] for d in done)
    workers_s = sum(d["cpu_s"] for d in done)
    in_storage = sum(d["storage_cpu_s"] for d in done)
    xacts = settled_transactions(admin, db) - xacts
    cores = os.cpu_count() or 1
    return {
        "workers": workers, "trials": trials, "calls": calls, "seconds": round(wall, 3),
        "calls_per_s": calls / wall, "trials_per_s": trials / wall,
        "calls_per_trial": calls / trials, "db_transactions_per_s": xacts / wall,
        "db_transactions_per_trial": xacts / trials,
        "cpu_s": {"workers": workers_s, "proxy": proxy_s, "postgres": postgres_s,
                  "workers_in_storage_calls": in_storage},
        "cpu_share": cpu_shares(
            {"workers": workers_s, "workers_outside_storage_calls": workers_s - in_storage,
             "proxy": proxy_s, "postgres": postgres_s}, cores * wall,
            (busy_after - busy) / (total_after - total)),
    }  # fmt: skip


def cpu_shares(cpu_s: dict[str, float], available_s: float, busy: float) -> dict[str, float]:
    """Each part's share of the machine's CPU time over a run; `others` is what the rest of
    the machine used meanwhile (this machine is shared: another session's tests)."""
    shares = {part: seconds / available_s for part, seconds in cpu_s.items()}
    ours = shares["workers"] + shares["proxy"] + shares["postgres"]
    return {**shares, "machine_busy": busy, "others": max(0.0, busy - ours)}


def one_run(mode: str, index: int, url: URL, args: argparse.Namespace, folder: str) -> dict:
    """A `direct` or `proxy` run on its own study (and, for proxy, its own proxy process)."""
    plain = url.render_as_string(hide_password=False)
    name = f"bench-{mode}-{index}-{secrets.token_hex(3)}"
    sets = [*args.sets, f"checkpoint.location={json.dumps(str(Path(folder) / name))}"]
    job: dict[str, Any] = {"study": args.study, "sets": sets, "name": name, "trials": args.trials}
    proxy = None
    if mode == "proxy":
        port = args.port or free_port()
        proxy = start_proxy(plain, port)
        job.update(url=f"grpc://127.0.0.1:{port}", proxy_pid=proxy.pid)
    else:
        job["url"] = plain
    admin = admin_engine(url)
    try:
        result = {"mode": mode, "run": index, **measure(job, args.workers, admin, url.database)}
    finally:
        if proxy is not None:
            stop(proxy)
        admin.dispose()
    delete_study(plain, name)
    return result


def delete_study(url: str, name: str) -> None:
    import optuna

    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=url)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each mode's median and range, and proxy / direct of the medians."""
    keys = ("calls_per_s", "trials_per_s", "calls_per_trial", "db_transactions_per_s",
            "db_transactions_per_trial")  # fmt: skip
    modes = {
        mode: {key: spread([r[key] for r in runs if r["mode"] == mode]) for key in keys}
        for mode in ("direct", "proxy")
    }
    for mode, figures in modes.items():
        figures["cpu_share_median"] = {
            part: statistics.median(r["cpu_share"][part] for r in runs if r["mode"] == mode)
            for part in runs[0]["cpu_share"]
        }
    ratio = {
        key: modes["proxy"][key]["median"] / modes["direct"][key]["median"]
        for key in ("calls_per_s", "trials_per_s", "db_transactions_per_s")
    }
    return {"by_mode": modes, "proxy_over_direct": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=None, help="a PostgreSQL URL (else a fresh database)")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="where to create that database")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=200, help="finished trials per run, in all")
    parser.add_argument("--pairs", type=int, default=3, help="direct + proxy runs, alternated")
    parser.add_argument("--study", default="digits")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--port", type=int, default=0, help="the proxy's port (0: a free one)")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with bench_database(args.storage, args.server) as url, tempfile.TemporaryDirectory() as folder:
        for index in range(1, args.pairs + 1):
            for mode in ("direct", "proxy"):
                runs.append(one_run(mode, index, url, args, folder))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpu": cpu_model(),
        "cores": os.cpu_count(), "study": args.study, "sets": args.sets,
        "workers": args.workers, "trials_per_run": args.trials,
        **summarize(runs), "runs": runs,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
