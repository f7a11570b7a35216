"""A checkpoint is verified before it is trusted: a retry whose checkpoint was truncated,
emptied, overwritten or replaced trains from the start and says why, instead of killing its
worker (before: `lsearch run` exited 1 with a traceback from `torch.load` and the trial was
lost). Real processes, real signals, real files: a worker is SIGKILLed after a checkpoint,
the file is damaged, and the next run (which re-queues the dead worker's trial after a
3-second grace period) must finish the study."""

from __future__ import annotations

import hashlib
import io
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from lsearch.search import checkpoints as checkpoint
from tests.conftest import run_lsearch
from tests.test_workers import CRASH_ARGS, start_worker, wait_for_checkpoint


def another_model(data: bytes) -> bytes:
    """A valid checkpoint file of other content: the last seed's first weight has another
    shape, so the seeds before it load and that one fails."""
    state = torch.load(io.BytesIO(data), weights_only=True)
    weights = state["seeds"][-1]["model"]
    name = next(iter(weights))
    weights[name] = torch.zeros(*weights[name].shape, 3)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: random.Random(0).randbytes(len(data)),
    "another model": another_model,
}
# Other lsearch workers on this machine would change the thread count between the two runs,
# and with it the last bits of the losses compared below.
ARGS = (*CRASH_ARGS, "--threads", "1")


def killed_after_a_checkpoint(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A study whose first trial's worker was SIGKILLed after a checkpoint: the storage URL
    and the checkpoint pointer the trial (still RUNNING, soon stale) leaves to its retry."""
    storage = f"sqlite:///{tmp_path / 'damaged.db'}"
    worker = start_worker("--trials", "1", "--storage", storage, *ARGS, cwd=tmp_path)
    wait_for_checkpoint(storage, epoch=1)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    (killed,) = optuna.load_study(study_name="digits", storage=storage).trials
    assert killed.state == TrialState.RUNNING
    return storage, killed.user_attrs["checkpoint"]


@pytest.mark.parametrize(
    ("damage", "with_checksum"),
    [
        ("truncated", True),
        ("empty", True),  # garbage and another model under a checksum: see the test below
        # Pointers written before checksums: what torch.load and the model say decides.
        ("garbage", False),
        ("another model", False),
    ],
)
def test_a_damaged_checkpoint_is_retrained_from_the_start_and_the_study_finishes(
    tmp_path: Path, damage: str, with_checksum: bool
) -> None:
    storage, pointer = killed_after_a_checkpoint(tmp_path)
    assert set(pointer) == {"artifact_id", "epoch", "sha256"}
    path = tmp_path / "artifacts" / pointer["artifact_id"]
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == pointer["sha256"]
    saved = torch.load(io.BytesIO(data), weights_only=True)["progress"]["history"]
    path.write_bytes(DAMAGES[damage](data))
    if not with_checksum:
        study = optuna.load_study(study_name="digits", storage=storage)
        old = {"artifact_id": pointer["artifact_id"], "epoch": pointer["epoch"]}
        study._storage.set_trial_user_attr(study.trials[0]._trial_id, "checkpoint", old)

    again = run_lsearch("run", "--trials", "1", "--storage", storage, *ARGS, cwd=tmp_path,
                        timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    study = optuna.load_study(study_name="digits", storage=storage)
    (done,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert done.number == 1 and done.system_attrs["failed_trial"] == 0
    error = done.user_attrs["checkpoint_error"]
    assert "\n" not in error and pointer["artifact_id"] in error, error
    expected = {
        True: "do not match the sha256",
        False: "does not fit this trial" if damage == "another model" else "does not load",
    }[with_checksum]
    assert expected in error, error
    assert "resumed_from_epoch" not in done.user_attrs
    assert done.user_attrs["epochs_trained"] == done.user_attrs["epochs_run"] == 30
    assert not path.exists(), "the damaged file is removed"
    assert list((tmp_path / "artifacts").iterdir()) == [], "no checkpoint outlives its trial"
    # Trained from the start on every seed, the seeds that had loaded before the last one
    # failed included: its first epochs are those the stopped trial trained.
    for seed, curve in enumerate(saved):
        losses = [m["val_loss"] for m in curve]
        assert done.user_attrs["curve_val_loss"][seed][: len(losses)] == losses, seed


class FakeTrial:
    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        self.user_attrs: dict[str, Any] = dict(attrs or {})

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


STATE = {"seeds": [{"model": {"w": torch.arange(4.0)}}], "progress": {"history": []}}


def test_a_pointer_without_a_checksum_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before checksums: trusted when they load (and fit the model)."""
    checkpoints = checkpoint.Checkpoints(checkpoint.open_artifact_store(str(tmp_path)))
    trial = FakeTrial()
    checkpoints.save(trial, 3, STATE)  # type: ignore[arg-type]
    pointer = trial.user_attrs["checkpoint"]
    assert set(pointer) == {"artifact_id", "epoch", "sha256"} and pointer["epoch"] == 3
    old = {"artifact_id": pointer["artifact_id"], "epoch": 3}
    state = checkpoints.load(old, torch.device("cpu"))
    assert state is not None and torch.equal(state["seeds"][0]["model"]["w"], torch.arange(4.0))
    (tmp_path / pointer["artifact_id"]).write_bytes(b"\x00not a checkpoint")
    with pytest.raises(checkpoint.DamagedCheckpoint, match="sha256"):
        checkpoints.load(pointer, torch.device("cpu"))
    with pytest.raises(checkpoint.DamagedCheckpoint, match="does not load"):
        checkpoints.load(old, torch.device("cpu"))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_damage_under_a_checksum_is_a_damaged_checkpoint(tmp_path: Path, damage: str) -> None:
    """ "another model" is still a valid torch file: only its checksum gives it away here."""
    checkpoints = checkpoint.Checkpoints(checkpoint.open_artifact_store(str(tmp_path)))
    trial = FakeTrial()
    state = {"seeds": [{"model": {"fc.weight": torch.ones(2, 2)}}], "progress": {"history": []}}
    checkpoints.save(trial, 1, state)  # type: ignore[arg-type]
    pointer = trial.user_attrs["checkpoint"]
    path = tmp_path / pointer["artifact_id"]
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.raises(checkpoint.DamagedCheckpoint, match="do not match the sha256"):
        checkpoints.load(pointer, torch.device("cpu"))


def test_a_killed_write_leaves_only_a_temporary_file_that_the_next_save_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = checkpoint.open_artifact_store(str(tmp_path))
    checkpoints = checkpoint.Checkpoints(store)
    trial = FakeTrial()
    checkpoints.save(trial, 1, STATE)  # type: ignore[arg-type]
    first = trial.user_attrs["checkpoint"]

    # The worker dies in the middle of the next write: the copy into the file stops.
    def killed(source: Any, target: Any) -> None:
        target.write(source.read(100))
        raise SystemExit("killed mid-write")

    monkeypatch.setattr(checkpoint.shutil, "copyfileobj", killed)
    monkeypatch.setattr(checkpoint.os, "unlink", lambda path: None)  # no cleanup: a SIGKILL
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
    with pytest.raises(SystemExit):
        checkpoints.save(trial, 2, STATE)  # type: ignore[arg-type]
    monkeypatch.undo()
    pending = trial.user_attrs["checkpoint_pending"]
    assert trial.user_attrs["checkpoint"] == first, "still the whole one"
    assert not (tmp_path / pending).exists(), "no file under a checkpoint's name is partial"
    partial = tmp_path / (pending + checkpoint.TEMPORARY_SUFFIX)
    assert partial.stat().st_size == 100
    assert checkpoints.load(first, torch.device("cpu")) is not None

    checkpoints.save(trial, 2, STATE)  # type: ignore[arg-type]  (the retry's next save)
    pointer = trial.user_attrs["checkpoint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [pointer["artifact_id"]]
    checkpoints.finish(trial)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_retry_whose_checkpoint_is_gone_trains_from_the_start_and_says_so(
    tmp_path: Path,
) -> None:
    """Before, a retry whose checkpoint file had gone trained from epoch 1 and recorded
    nothing: it looked like a trial that had never been stopped."""
    storage, pointer = killed_after_a_checkpoint(tmp_path)
    (tmp_path / "artifacts" / pointer["artifact_id"]).unlink()
    again = run_lsearch("run", "--trials", "1", "--storage", storage, *ARGS, cwd=tmp_path,
                        timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    (done,) = optuna.load_study(study_name="digits", storage=storage).get_trials(
        states=(TrialState.COMPLETE,)
    )
    error = done.user_attrs["checkpoint_error"]
    assert pointer["artifact_id"] in error and "its file is gone" in error, error
    assert "trained from epoch 1" in error and "resumed_from_epoch" not in done.user_attrs
    assert done.user_attrs["epochs_trained"] == done.user_attrs["epochs_run"] == 30
