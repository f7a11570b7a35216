"""deploy/slurm/lsearch-array.sbatch on a real single-node SLURM cluster that the test starts
(tests/slurm_cluster.py): an array of workers finishes a PostgreSQL study, and a task that
SLURM signals (scancel --batch, preemption) hands its trial back to the study, exit 143, for
the next task, or itself requeued, to resume from its checkpoint."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY
from tests.slurm_cluster import SlurmCluster
from tests.test_interrupts import LONG
from tests.test_workers import wait_for_checkpoint

SCRIPT = Path(__file__).parents[1] / "deploy" / "slurm" / "lsearch-array.sbatch"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    cluster = SlurmCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def submit(
    slurm: SlurmCluster, cwd: Path, storage: str, options: list[str], *arguments: str
) -> str:
    """sbatch the script as a user would (sbatch's `options`, then lsearch run's `arguments`),
    with lsearch on PATH and the storage exported; every task runs on the CPU (a --device
    among the arguments wins over the script's)."""
    env = {
        "LSEARCH_STORAGE": storage,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    # One CPU per task: the test's node has two (the script asks for 4, as a GPU worker would).
    command = ["sbatch", "--parsable", "--cpus-per-task=1", *options, str(SCRIPT), *arguments]
    out = slurm.run(*command, "--device", "cpu", cwd=cwd, env=env)
    return out.strip().split(";")[0]


def log_of(cwd: Path, array_id: str, task: int) -> str:
    return (cwd / f"lsearch-{array_id}_{task}.out").read_text()


def test_an_array_of_three_workers_finishes_a_postgres_study(
    slurm: SlurmCluster, tmp_path: Path, postgres_url: str
) -> None:
    array = submit(slurm, tmp_path, postgres_url, ["--array=0-2"], "--trials", "8", *TINY,
                   "--set", "space.epochs=4")  # fmt: skip
    tasks = slurm.wait_until_done(array)
    assert [t["ExitCode"] for t in tasks] == ["0:0"] * 3, [
        log_of(tmp_path, array, i) for i in range(3)
    ]
    study = optuna.load_study(study_name="digits", storage=postgres_url)
    states = [t.state for t in study.trials]
    assert TrialState.FAIL not in states and sum(s in FINISHED for s in states) >= 8, states
    drawn = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(drawn)) == len(drawn), "no configuration drawn twice"
    # One fake GPU each: SLURM set CUDA_VISIBLE_DEVICES for every task, and with 2 GPUs (and
    # 2 CPUs) the third task started only once one of the first two had ended.
    for task in range(3):
        assert "GPU 0" in log_of(tmp_path, array, task) or "GPU 1" in log_of(tmp_path, array, task)
    first_end = min(t["EndTime"] for t in tasks[:2])
    assert tasks[2]["StartTime"] >= first_end, tasks


def test_a_task_signalled_by_scancel_hands_its_trial_to_the_next_task(
    slurm: SlurmCluster, tmp_path: Path, postgres_url: str
) -> None:
    # %1: one task at a time, so the second starts when the first has stopped.
    array = submit(slurm, tmp_path, postgres_url, ["--array=0-1%1"], "--trials", "1", *LONG)
    wait_for_checkpoint(postgres_url, epoch=2)
    slurm.run("scancel", "--batch", "--signal=TERM", f"{array}_0")
    tasks = slurm.wait_until_done(array)
    first = log_of(tmp_path, array, 0)
    assert tasks[0]["ExitCode"] == "143:0" and tasks[0]["JobState"] == "FAILED", first
    assert "handed back as trial 1" in first and "Traceback" not in first, first
    assert tasks[1]["ExitCode"] == "0:0", log_of(tmp_path, array, 1)
    assert_resumed(postgres_url)


def test_a_preempted_task_is_requeued_and_resumes_its_own_trial(
    slurm: SlurmCluster, tmp_path: Path, postgres_url: str
) -> None:
    array = submit(slurm, tmp_path, postgres_url, ["--array=0"], "--trials", "1", *LONG)
    wait_for_checkpoint(postgres_url, epoch=2)
    # A job of the urgent partition that needs both GPUs preempts the task: SIGTERM to it,
    # then requeue.
    slurm.run("sbatch", "--partition=urgent", "--gres=gpu:2", "--output=/dev/null",
              "--wrap=true", cwd=tmp_path)  # fmt: skip
    requeued = slurm.wait_for(f"{array}_0", {"PENDING"})
    assert requeued["Restarts"] == "1", requeued
    # SLURM holds a requeued job back for 2 minutes (as docs/operations.md says); start it now.
    held = datetime.fromisoformat(requeued["EligibleTime"]) - datetime.fromisoformat(
        requeued["SubmitTime"]
    )
    assert held.total_seconds() >= 100, requeued
    slurm.run("scontrol", "update", f"JobId={array}_0", "StartTime=now")
    (task,) = slurm.wait_until_done(array)
    log = log_of(tmp_path, array, 0)
    assert task["ExitCode"] == "0:0" and task["Restarts"] == "1", log
    assert "handed back as trial 1" in log and "(restart 1)" in log, log
    assert_resumed(postgres_url)


def assert_resumed(storage: str) -> None:
    """The stopped trial came back as trial 1 and finished from its checkpoint."""
    study = optuna.load_study(study_name="digits", storage=storage)
    stopped, done = study.trials
    assert stopped.state == TrialState.FAIL and done.state == TrialState.COMPLETE
    assert done.user_attrs["resumed_from_trial"] == 0
    assert done.user_attrs["resumed_from_epoch"] >= 2


def test_a_task_near_its_time_limit_gets_sigterm_and_hands_its_trial_back(
    slurm: SlurmCluster, tmp_path: Path, postgres_url: str
) -> None:
    """The script's `--signal=B:TERM@N`, with a 3-minute limit and N = 100 s. SLURM may send
    it up to 60 s early (sbatch's man page), so it comes 20 to 80 s in, once lsearch trains.
    With a 2-minute limit it came as early as 1 s in, before lsearch had set its handler
    (Python's default for SIGTERM, exit 0:15: one CI run in several)."""
    array = submit(slurm, tmp_path, postgres_url, ["--array=0", "--time=3", "--signal=B:TERM@100"],
                   "--trials", "1", *LONG, "--set", "space.epochs=3000",
                   "--set", "train.patience=3000")  # fmt: skip
    (task,) = slurm.wait_until_done(array, deadline_s=240)
    log = log_of(tmp_path, array, 0)
    assert task["ExitCode"] == "143:0" and "handed back as trial 1" in log, log
    study = optuna.load_study(study_name="digits", storage=postgres_url)
    stopped, retry = study.trials
    assert stopped.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.user_attrs["checkpoint"]["epoch"] >= 1
