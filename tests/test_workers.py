"""Many workers on one study, crashes and resume: real processes, real databases, real kills."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lsearch.search.study import trial_seed
from lsearch.search.workers import worker_env
from lsearch.spec import StudySpec
from lsearch.training.devices import claim_gpu, parse_gpus
from tests.conftest import LSEARCH, TINY, run_lsearch

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def start_worker(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != "LSEARCH_STORAGE"}
    full_env.update(env or {})
    return subprocess.Popen(
        [LSEARCH, "run", *args],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(worker: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, stderr = worker.communicate(timeout=timeout)
    return worker.returncode, stderr


def assert_study_reached(study: optuna.Study, n: int, workers: int) -> None:
    states = [t.state for t in study.trials]
    assert TrialState.FAIL not in states, states
    assert sum(s in FINISHED for s in states) >= n
    # Workers check finished + running before each start: they overshoot only in a race.
    assert len(states) <= n + workers - 1, states


def test_four_local_workers_share_a_sqlite_study(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", "--workers", "4", "--trials", "8", *TINY, "--set", "space.epochs=4", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    assert "4 workers" in result.stderr
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'lsearch.db'}")
    assert_study_reached(study, 8, 4)
    assert "top" in result.stdout, "the supervising process prints the summary table"


def test_three_worker_processes_share_a_postgresql_study(tmp_path: Path, postgres_url: str) -> None:
    workers = [
        start_worker(
            "--trials",
            "9",
            *TINY,
            "--set",
            "space.epochs=4",
            "--storage",
            postgres_url,
            cwd=tmp_path,
        )
        for index in range(3)
    ]
    for worker in workers:
        code, stderr = finish(worker)
        assert code == 0, stderr
    study = optuna.load_study(study_name="digits", storage=postgres_url)
    assert_study_reached(study, 9, 3)
    assert_no_configuration_twice(study)


def assert_no_configuration_twice(study: optuna.Study) -> None:
    """Each trial's sampling is seeded from its number, which the storage makes unique, so
    workers started alike draw apart: no configuration is drawn twice (the duplicate check
    would fail it)."""
    configurations = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(configurations)) == len(configurations), configurations
    assert not study.get_trials(states=(TrialState.FAIL,))


def test_two_workers_started_alike_on_a_fresh_sqlite_file_draw_distinct_configurations(
    tmp_path: Path,
) -> None:
    args = ("--trials", "8", *TINY, "--set", "space.epochs=4")
    workers = [start_worker(*args, cwd=tmp_path) for _ in range(2)]
    for worker in workers:
        code, stderr = finish(worker)
        assert code == 0, stderr
    storage = f"sqlite:///{tmp_path / 'lsearch.db'}"
    study = optuna.load_study(study_name="digits", storage=storage)
    assert_study_reached(study, 8, 2)
    assert_no_configuration_twice(study)
    # Without a registry of workers: the storage holds the user's study and nothing else.
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["digits"]
    assert optuna.load_study(study_name=None, storage=storage).study_name == "digits"


CRASH_ARGS = (
    "--study", "digits",
    "--set", "data.train_per_class=50", "--set", "data.val_per_class=50",
    "--set", "space.epochs=30", "--set", "train.patience=100",
    # Reports every epoch but never prunes: the intermediate values must come out unbroken.
    "--set", "pruner.n_startup_trials=1000",
    "--heartbeat-interval", "1", "--grace-period", "3",
    # A checkpoint after every epoch (the study's 10 s would outlast these trials' epochs).
    "--set", "checkpoint.every_s=0",
)  # fmt: skip


def wait_for_checkpoint(storage: str, epoch: int, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="digits", storage=storage).trials
        except KeyError:  # the study is not created yet
            trials = []
        pointer = trials[0].user_attrs.get("checkpoint") if trials else None
        if pointer and pointer["epoch"] >= epoch:
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {deadline_s} s")


def test_a_killed_worker_s_trial_is_retried_and_resumed_from_its_checkpoint(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'crash.db'}"
    victim = start_worker("--trials", "2", "--storage", storage, *CRASH_ARGS, cwd=tmp_path)
    wait_for_checkpoint(storage, epoch=2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    survivor = run_lsearch("run", "--trials", "2", "--storage", storage, *CRASH_ARGS, cwd=tmp_path)
    assert survivor.returncode == 0, survivor.stderr

    study = optuna.load_study(study_name="digits", storage=storage)
    killed = study.trials[0]
    assert killed.state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE
    attrs = retry.user_attrs
    resumed_at = attrs["resumed_from_epoch"]
    assert attrs["resumed_from_trial"] == 0 and resumed_at >= 2
    # Only the epochs after the checkpoint were trained again.
    assert attrs["epochs_run"] == 30 and attrs["epochs_trained"] == 30 - resumed_at
    assert sorted(retry.intermediate_values) == list(range(1, 31))
    assert len(study.get_trials(states=FINISHED)) == 2

    # The resumed trial is bit for bit the trial that never crashed.
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    clean = run_lsearch("run", "--trials", "1", "--storage", reference, *CRASH_ARGS, cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    (uninterrupted,) = optuna.load_study(study_name="digits", storage=reference).trials
    assert uninterrupted.params == retry.params
    for key in ("curve_val_acc", "curve_val_ece", "curve_train_loss", "val_acc", "val_ece"):
        assert attrs[key] == uninterrupted.user_attrs[key], key
    assert retry.intermediate_values == uninterrupted.intermediate_values

    # Finished trials leave no rolling checkpoint behind.
    assert attrs["checkpoint"] is None
    assert [p for p in (tmp_path / "artifacts").iterdir()] == []


def test_all_workers_dead_then_one_run_continues_the_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'dead.db'}"
    args = ("--trials", "3", "--storage", storage, *CRASH_ARGS)
    victims = [start_worker(*args, cwd=tmp_path) for _ in range(2)]
    wait_for_checkpoint(storage, epoch=1)
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    again = run_lsearch("run", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="digits", storage=storage)
    assert len(study.get_trials(states=FINISHED)) == 3
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_postgresql_restart_mid_study_loses_nothing(tmp_path: Path, own_postgres) -> None:
    """Stops and starts a cluster the test made itself, never the machine's server."""
    url = own_postgres.url
    args = (
        "--trials", "8", *TINY, "--set", "space.epochs=30", "--set", "train.patience=100",
        "--set", 'pruner.type="none"', "--storage", url,
    )  # fmt: skip
    workers = [start_worker(*args, cwd=tmp_path) for _ in range(2)]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name="digits", storage=url)
            done_before = {t.number for t in study.get_trials(states=FINISHED)}
        except KeyError:
            done_before = set()
        if len(done_before) >= 2:
            break
        time.sleep(0.2)
    assert len(done_before) >= 2, "the workers did not get going"
    assert len(done_before) < 8, "the study ended before the restart: it tested nothing"
    own_postgres.stop()
    try:
        time.sleep(4)
    finally:
        own_postgres.start()
    for worker in workers:
        code, stderr = finish(worker)
        assert code == 0, stderr
        assert "Traceback" not in stderr
    study = optuna.load_study(study_name="digits", storage=url)
    assert_study_reached(study, 8, 2)
    still_done = {t.number for t in study.get_trials(states=FINISHED)}
    assert done_before <= still_done


def test_postgresql_down_longer_than_the_grace_period_fails_no_live_trial(
    tmp_path: Path, own_postgres
) -> None:
    """Two workers wait out an outage three times their grace period; a third joins as the
    database comes back. Nobody may take the live trials for dead ones, nobody crashes, and
    every trial finished before the outage is still there."""
    url = own_postgres.url
    args = (
        "--trials", "8", *TINY, "--set", "space.epochs=40", "--set", "train.patience=100",
        "--set", 'pruner.type="none"', "--storage", url,
        "--heartbeat-interval", "1", "--grace-period", "4",
    )  # fmt: skip
    workers = [start_worker(*args, cwd=tmp_path) for _ in range(2)]
    deadline = time.monotonic() + 180
    running, done_before = [], set()
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name="digits", storage=url)
            done_before = {t.number for t in study.get_trials(states=FINISHED)}
            running = study.get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            pass
        if len(done_before) >= 1 and len(running) == 2:
            break
        time.sleep(0.1)
    assert len(running) == 2 and len(done_before) < 8, "no trials in flight to test with"
    own_postgres.stop()
    try:
        time.sleep(12)
    finally:
        own_postgres.start()
    workers.append(start_worker(*args, cwd=tmp_path))
    for worker in workers:
        code, stderr = finish(worker)
        assert code == 0, stderr
        assert "Traceback" not in stderr and "failed as stale" not in stderr, stderr
    study = optuna.load_study(study_name="digits", storage=url)
    assert_study_reached(study, 8, 3)
    assert done_before <= {t.number for t in study.get_trials(states=FINISHED)}
    # The trials in flight through the outage finished as themselves.
    for trial in running:
        assert study.trials[trial.number].state in FINISHED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_workers_through_the_grpc_proxy(tmp_path: Path) -> None:
    port = free_port()
    database = f"sqlite:///{tmp_path / 'served.db'}"
    proxy = start_proxy(database, port, tmp_path)
    try:
        result = run_lsearch(
            "run", "--workers", "2", "--trials", "4", *TINY,
            "--storage", f"grpc://127.0.0.1:{port}", cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        proxy.send_signal(signal.SIGINT)
        proxy.wait(timeout=30)
    assert f"on grpc://127.0.0.1:{port}" in proxy.stderr.read()
    study = optuna.load_study(study_name="digits", storage=database)
    assert len(study.get_trials(states=FINISHED)) >= 4
    assert not study.get_trials(states=(TrialState.FAIL,))


def start_proxy(database: str, port: int, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [LSEARCH, "proxy", "--storage", database, "--port", str(port)],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_the_proxy_recovers_a_killed_worker_s_trial(tmp_path: Path) -> None:
    """A worker behind `lsearch proxy` is SIGKILLed mid-trial with no other worker left: the
    proxy sees its heartbeat stand still, fails the trial and re-queues it, and the next
    worker resumes it from its checkpoint."""
    port = free_port()
    database = f"sqlite:///{tmp_path / 'served.db'}"
    proxy = start_proxy(database, port, tmp_path)
    served = ("--trials", "2", "--storage", f"grpc://127.0.0.1:{port}", *CRASH_ARGS)
    try:
        victim = start_worker(*served, cwd=tmp_path)
        wait_for_checkpoint(database, epoch=2)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        deadline = time.monotonic() + 120
        retries: list = []
        while time.monotonic() < deadline and not retries:
            study = optuna.load_study(study_name="digits", storage=database)
            retries = study.get_trials(states=(TrialState.WAITING,))
            time.sleep(0.5)
        assert retries, "the proxy did not re-queue the dead worker's trial"
        assert study.trials[0].state == TrialState.FAIL
        survivor = run_lsearch("run", *served, cwd=tmp_path)
        assert survivor.returncode == 0, survivor.stderr
    finally:
        proxy.send_signal(signal.SIGINT)
        proxy.wait(timeout=30)
    study = optuna.load_study(study_name="digits", storage=database)
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 2
    assert len(study.get_trials(states=FINISHED)) == 2
    assert [p for p in (tmp_path / "artifacts").iterdir()] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--storage", "grpc://127.0.0.1:1"], "cannot reach the storage proxy"),
        (["--storage", "grpc://nohostport"], "grpc://host:port"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--gpus", "0,1"], "no CUDA GPU"),
        (["--gpus", "0,,1"], "comma-separated"),
        (["--device", "cuda:free"], "no CUDA GPU"),
        (["--heartbeat-interval", "5", "--grace-period", "3"], "grace_period"),
    ],
)
def test_bad_worker_input_is_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_lsearch("run", *args, *TINY, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "lsearch.db").exists()


def test_gpus_are_assigned_round_robin_and_the_url_stays_off_the_command_line() -> None:
    assert parse_gpus("0,1,2,3") == ["0", "1", "2", "3"]
    assert parse_gpus(None) == []
    gpus = parse_gpus("0,1,2,3")
    url = "postgresql+psycopg://u:secret@h/db"
    assigned = [worker_env(i, gpus, url)["CUDA_VISIBLE_DEVICES"] for i in range(8)]
    assert assigned == ["0", "1", "2", "3", "0", "1", "2", "3"]
    assert worker_env(0, gpus, url)["LSEARCH_STORAGE"] == url
    # Without --gpus a worker sees the GPUs its parent sees.
    assert worker_env(0, [], url).get("CUDA_VISIBLE_DEVICES") == os.environ.get(
        "CUDA_VISIBLE_DEVICES"
    )


def test_claim_gpu_fills_every_gpu_before_sharing_one(tmp_path: Path) -> None:
    held = [claim_gpu(2, tmp_path) for _ in range(5)]
    assert [index for index, _ in held] == [0, 1, 0, 1, 0]
    held[1][1].close()  # a worker on GPU 1 dies: its slot is free again
    index, handle = claim_gpu(2, tmp_path)
    assert index == 1
    handle.close()
    for _, other in held:
        other.close()


def test_claim_gpu_holds_across_processes(tmp_path: Path) -> None:
    script = (
        "import sys, time; from lsearch.training.devices import claim_gpu; "
        f"i, h = claim_gpu(2, {str(tmp_path)!r}); print(i, flush=True); time.sleep(30)"
    )
    procs = []
    try:
        indices = []
        for _ in range(3):
            proc = subprocess.Popen(
                [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
            )
            procs.append(proc)
            indices.append(int(proc.stdout.readline()))
        assert sorted(indices) == [0, 0, 1]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_trial_seeds_differ_per_trial_and_trial_0_draws_with_the_study_file_s_seed() -> None:
    assert trial_seed(0, 0) == StudySpec(name="x").sampler.seed == 0
    assert len({trial_seed(0, number) for number in range(1000)}) == 1000
    assert trial_seed(5, 3) == trial_seed(5, 3) != trial_seed(6, 3)


RACER = """
import sys, time
from pathlib import Path
from lsearch.store.storage import open_storage
from lsearch.errors import UserError
gun = Path(sys.argv[1])
deadline = time.monotonic() + 120
while not gun.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
try:
    open_storage(sys.argv[2])
    print("ok")
except UserError as exc:
    print(f"error: {exc}")
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_opening_a_fresh_storage_at_the_same_moment_all_succeed(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Processes that are already running open one fresh storage at a start signal, so
    that they race to create Optuna's tables (this failed for SQLite with "table studies
    already exists" and "UNIQUE constraint failed: alembic_version")."""
    import sys

    url = (
        f"sqlite:///{tmp_path / 'fresh.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    gun = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(gun), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(8)  # every racer has imported lsearch and waits for the signal
    gun.touch()
    outputs = [racer.communicate(timeout=180)[0].strip() for racer in racers]
    assert outputs == ["ok"] * 4, outputs


def test_gpus_with_an_explicit_cpu_device_is_a_user_error() -> None:
    from lsearch.errors import UserError
    from lsearch.training.devices import worker_device

    assert worker_device("auto", ["0", "1"]) == "cuda"
    assert worker_device("cuda:free", []) == "cuda:free"  # cuda:free with --gpus: see below
    assert worker_device("cpu", []) == "cpu"
    with pytest.raises(UserError, match="leave out --device cuda:free or use --device cuda"):
        worker_device("cuda:free", ["0"])
    with pytest.raises(UserError, match="--gpus and --device cpu"):
        worker_device("cpu", ["0"])


HOLDER = """
import sys, time
from lsearch.training.devices import CoreShare
share = CoreShare(lock_dir=sys.argv[1], cores=8)
print(share.slot, flush=True)
time.sleep(60)
"""


def test_workers_on_one_machine_divide_its_cores_among_them(tmp_path: Path) -> None:
    """Each worker holds a slot lock; the share is the cores over the live holders, so it
    grows back when a worker exits. --threads overrides it."""
    import torch

    from lsearch.training.devices import CoreShare

    own = CoreShare(lock_dir=tmp_path, cores=8)
    assert own.share() == 8
    holders = [
        subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    try:
        slots = sorted(int(holder.stdout.readline()) for holder in holders)
        assert slots == [1, 2, 3], "each worker holds its own slot"
        assert own.workers() == 4 and own.share() == 2
        holders[0].kill()
        holders[0].wait()
        assert own.share() == 2, "8 cores over 3 workers"
        holders[1].kill()
        holders[1].wait()
        assert own.share() == 4
        before = torch.get_num_threads()
        try:
            assert own.refresh() == 4 and torch.get_num_threads() == 4
        finally:
            torch.set_num_threads(before)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        own.close()
    fixed = CoreShare(threads=3, lock_dir=tmp_path / "unused")
    assert fixed.share() == 3 and not (tmp_path / "unused").exists()


def test_each_worker_of_workers_w_starts_with_its_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    share = worker_env(0, [], "sqlite://", count=2)["OMP_NUM_THREADS"]
    assert share == str(max(1, cores // 2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    assert worker_env(0, [], "sqlite://", count=2)["OMP_NUM_THREADS"] == "3"


def test_a_cuda_device_becomes_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: torch.cuda's answers are stood in for, and set_device is recorded."""
    import torch

    from lsearch.training import devices

    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(devices, "set_determinism", lambda device, deterministic: None)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    assert current == [torch.device("cuda", 1), torch.device("cuda", 0)]


@pytest.mark.parametrize("deterministic", [True, False])
def test_train_deterministic_switches_cudnn_autotuning(deterministic: bool) -> None:
    import torch

    from lsearch.training.devices import set_determinism

    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        set_determinism(torch.device("cuda", 0), deterministic)
        assert torch.backends.cudnn.benchmark is not deterministic
        assert torch.backends.cudnn.deterministic is deterministic
        set_determinism(torch.device("cpu"), not deterministic)  # the CPU leaves them alone
        assert torch.backends.cudnn.deterministic is deterministic
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def test_a_worker_retries_a_lost_database_at_most_a_heartbeat_apart(tmp_path: Path) -> None:
    from lsearch.search.launch import open_spec_storage

    spec = StudySpec.model_validate(
        {"name": "x", "checkpoint": {"enabled": False},
         "storage": {"heartbeat_interval": 2, "grace_period": 5, "reconnect_timeout": 30}}
    )  # fmt: skip
    storage, liveness = open_spec_storage(spec, f"sqlite:///{tmp_path / 'x.db'}")
    assert storage.max_delay == 2 and storage.reconnect_timeout == 30
    assert liveness is not None and liveness.heartbeat.interval == 2
    assert liveness.sweeper.grace_period == 5
