"""Ctrl-C, SIGTERM and --timeout in the middle of a trial: the worker stops within seconds,
its trial is handed back (a WAITING retry that carries the checkpoint) and the next run
resumes it at once from its last finished epoch, leaving no checkpoint behind. Real
processes, real signals. The grace period is 600 s, far beyond the subprocess timeouts: a
rerun that had to wait for the heartbeat path instead would not finish in time."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_lsearch
from tests.test_workers import start_worker, wait_for_checkpoint

LONG = (
    "--study", "digits",
    "--set", "data.train_per_class=50", "--set", "data.val_per_class=50",
    "--set", "space.epochs=30", "--set", "train.patience=100",
    "--set", "pruner.n_startup_trials=1000", "--grace-period", "600",
    # A checkpoint after every epoch (the study's 10 s would outlast these trials' epochs).
    "--set", "checkpoint.every_s=0",
)  # fmt: skip


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_trial_is_handed_back_and_resumed_at_once(
    tmp_path: Path, sent: signal.Signals, code: int
) -> None:
    storage = f"sqlite:///{tmp_path / 'stop.db'}"
    worker = start_worker("--trials", "1", "--storage", storage, *LONG, cwd=tmp_path)
    wait_for_checkpoint(storage, epoch=2)
    worker.send_signal(sent)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == code, stderr
    assert "handed back as trial 1" in stderr and "Traceback" not in stderr
    study = optuna.load_study(study_name="digits", storage=storage)
    stopped, retry = study.trials
    assert stopped.state == TrialState.FAIL and retry.state == TrialState.WAITING
    pointer = retry.user_attrs["checkpoint"]
    assert pointer == stopped.user_attrs["checkpoint"] and pointer["epoch"] >= 2

    assert checkpoints_column(storage, tmp_path).startswith("1 ("), "status shows the space"

    again = run_lsearch("run", "--trials", "1", "--storage", storage, *LONG, cwd=tmp_path,
                        timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="digits", storage=storage)
    (done,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert done.number == 1 and done.user_attrs["resumed_from_trial"] == 0
    assert done.user_attrs["resumed_from_epoch"] == pointer["epoch"]
    assert done.user_attrs["epochs_trained"] == 30 - pointer["epoch"]
    assert list((tmp_path / "artifacts").iterdir()) == [], "no checkpoint outlives its trial"
    assert checkpoints_column(storage, tmp_path) == "0"


def checkpoints_column(storage: str, cwd: Path) -> str:
    """The digits row's last column in `lsearch status`."""
    status = run_lsearch("status", "--storage", storage, cwd=cwd)
    assert status.returncode == 0, status.stderr
    (row,) = [line for line in status.stdout.splitlines() if line.startswith("│ digits ")]
    return row.split("│")[-2].strip()


def test_timeout_stops_the_trial_in_flight_and_hands_it_back(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'timeout.db'}"
    result = run_lsearch(
        "run", "--trials", "1", "--storage", storage, *LONG, "--set", "space.epochs=3000",
        # No write falls due within the run: the hand-back writes the last finished epoch.
        "--set", "checkpoint.every_s=3600", "--timeout", "8", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--timeout passed: trial 0 was stopped and handed back as trial 1" in result.stderr
    study = optuna.load_study(study_name="digits", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert 1 <= study.trials[1].user_attrs["checkpoint"]["epoch"] < 3000


def test_a_first_signal_asks_for_a_stop_and_a_second_ctrl_c_stops_at_once() -> None:
    import os
    import time

    from lsearch import interrupts

    with interrupts.handling_signals():
        assert interrupts.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert interrupts.requested() == "SIGTERM"
        with pytest.raises(interrupts.Interrupted) as stopped:
            interrupts.check()
        assert stopped.value.exit_code == 143
        with pytest.raises(KeyboardInterrupt):  # after a request, Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                time.sleep(0.001)
    # The previous handlers are back, and nothing is left requested for what runs next.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert interrupts.requested() is None


def test_sigterm_to_a_supervisor_hands_back_every_workers_trial(tmp_path: Path) -> None:
    """`docker stop` signals only the process it started: `--workers` passes it on."""
    storage = f"sqlite:///{tmp_path / 'supervised.db'}"
    supervisor = start_worker(
        "--trials", "2", "--workers", "2", "--storage", storage, *LONG, cwd=tmp_path
    )
    wait_for_checkpoint(storage, epoch=1)
    supervisor.send_signal(signal.SIGTERM)
    _, stderr = supervisor.communicate(timeout=120)
    assert supervisor.returncode == 143, stderr
    study = optuna.load_study(study_name="digits", storage=storage)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states, states
    # Every stopped trial has its WAITING retry; the first one had a checkpoint to carry.
    failed = {t.number for t in study.get_trials(states=(TrialState.FAIL,))}
    retried = {
        t.system_attrs["failed_trial"]: t for t in study.get_trials(states=(TrialState.WAITING,))
    }
    assert failed and failed == set(retried), (failed, retried)
    assert retried[0].user_attrs["checkpoint"]["epoch"] >= 1


def test_a_dead_workers_trial_out_of_retries_leaves_no_checkpoint(tmp_path: Path) -> None:
    import io

    from optuna.artifacts import FileSystemArtifactStore

    from lsearch.search.checkpoints import Checkpoints, RetryOrDiscardCheckpoint

    store = FileSystemArtifactStore(str(tmp_path))
    checkpoints = Checkpoints(store)

    def stale_trial(retried: list[int]) -> optuna.trial.FrozenTrial:
        artifact = f"lsearch-ckpt-{len(retried)}"
        store.write(artifact, io.BytesIO(b"state"))
        return optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"lr": 0.1},
            distributions={"lr": optuna.distributions.FloatDistribution(0.01, 1.0)},
            user_attrs={"checkpoint": {"artifact_id": artifact, "epoch": 2}},
            system_attrs={"retry_history": retried} if retried else {},
        )

    study = optuna.create_study()
    # Retries left: re-queued with its checkpoint, which stays.
    RetryOrDiscardCheckpoint(max_retry=1, checkpoints=checkpoints)(study, stale_trial([]))
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs["checkpoint"]["artifact_id"] == "lsearch-ckpt-0"
    assert (tmp_path / "lsearch-ckpt-0").exists()
    # Out of retries: not re-queued, and its checkpoint is removed.
    RetryOrDiscardCheckpoint(max_retry=1, checkpoints=checkpoints)(study, stale_trial([0]))
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert not (tmp_path / "lsearch-ckpt-1").exists()


def test_a_file_a_killed_write_left_is_removed_by_the_next_save_or_at_the_end(
    tmp_path: Path,
) -> None:
    """A worker killed while writing a checkpoint leaves a file the trial only names as
    pending; its retry's next save (or its end) removes it."""
    import io

    from optuna.artifacts import FileSystemArtifactStore

    from lsearch.search.checkpoints import Checkpoints, RetryOrDiscardCheckpoint

    store = FileSystemArtifactStore(str(tmp_path))
    checkpoints = Checkpoints(store)
    study = optuna.create_study()
    for name in ("kept", "half-written", "half-written-2"):
        store.write(name, io.BytesIO(b"state"))
    killed = optuna.trial.create_trial(
        state=TrialState.FAIL,
        params={"lr": 0.1},
        distributions={"lr": optuna.distributions.FloatDistribution(0.01, 1.0)},
        user_attrs={
            "checkpoint": {"artifact_id": "kept", "epoch": 2},
            "checkpoint_pending": "half-written",
        },
    )
    RetryOrDiscardCheckpoint(max_retry=3, checkpoints=checkpoints)(study, killed)
    retry = study.ask()  # the WAITING retry, with the attrs of the killed trial
    checkpoints.save(retry, 3, {"epoch": 3})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "half-written" not in names and "kept" not in names
    assert len(names) == 2 and "half-written-2" in names  # (another trial's, untouched)
    # Killed mid-write again: at the end the pending file goes with the checkpoint.
    retry.set_user_attr("checkpoint_pending", "half-written-2")
    checkpoints.finish(retry)
    assert list(tmp_path.iterdir()) == []
