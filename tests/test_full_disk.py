"""A full disk while lsearch writes: a checkpoint that cannot be written is a warning and the
search goes on; `report -o` and `export -o` say so in one line (exit 2) and leave no file.
Each test mounts a small real file system (tmpfs, as root) that fills up, and unmounts it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from lsearch.search.checkpoints import Checkpoints, CheckpointWriter, open_artifact_store
from lsearch.store.catalog import CHECKPOINT_ATTR, CHECKPOINT_WARNING_ATTR
from tests.conftest import TINY, run_lsearch

FULL = "No space left on device"


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `folder`, always unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a file that takes all of `folder`'s file system but about `leave` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def everything_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_a_search_whose_checkpoint_disk_is_full_finishes_with_one_warning(
    tmp_path: Path,
) -> None:
    # A digits checkpoint is about 1 MB: none fits in 64 KB, so every write fails part-way.
    with small_disk(tmp_path / "small", "64k") as disk:
        artifacts = disk / "artifacts"
        result = run_lsearch(
            "run", "--trials", "3", *TINY, "--set", "checkpoint.every_s=0",
            "--artifacts", str(artifacts), cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if "could not be written" in line]
        assert len(warnings) == 1, result.stderr  # once per worker, not per epoch or trial
        (warning,) = warnings
        assert warning.startswith("warning: checkpoint of trial ")
        assert f"({FULL}: {artifacts})" in warning and "without crash protection" in warning
        assert "later writes will try again" in warning
        assert "Traceback" not in result.stderr and "OSError" not in result.stderr
        # Nothing half-written is left: every failed write's file was removed.
        assert everything_in(artifacts) == []

    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'lsearch.db'}")
    trials = study.get_trials()
    assert len(trials) == 3
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in trials:
        assert trial.user_attrs[CHECKPOINT_WARNING_ATTR] == f"epoch 1: {FULL}: {artifacts}"
        assert trial.user_attrs.get(CHECKPOINT_ATTR) is None  # none was ever written
        assert trial.user_attrs["epochs_run"] >= 1  # trained on after the failed write

    status = run_lsearch("status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    (row,) = [line for line in status.stdout.splitlines() if line.startswith("│ digits ")]
    assert row.split("│")[-2].strip() == "0 !3", "no checkpoint kept; 3 trials warned"
    assert "3 trial(s) of digits could not write a checkpoint" in status.stdout
    assert CHECKPOINT_WARNING_ATTR in status.stdout and FULL in status.stdout


def test_a_failed_write_is_removed_recorded_and_the_next_write_tries_again(
    tmp_path: Path,
) -> None:
    study = optuna.create_study()
    trial = study.ask()
    state = {"seeds": [{"w": torch.zeros(64 * 1024)}], "progress": {}}  # 256 KB of weights
    with small_disk(tmp_path / "small", "1m") as disk:
        checkpoints = Checkpoints(open_artifact_store(str(disk / "artifacts")))
        filler = fill(disk, leave=16 * 1024)
        writer = CheckpointWriter(checkpoints, trial, every_s=0, written_epoch=0)
        writer.epoch_done(1, state)
        writer.wait()  # the write failed: a warning on the trial, no exception
        assert trial.user_attrs[CHECKPOINT_WARNING_ATTR].startswith(f"epoch 1: {FULL}")
        assert trial.user_attrs.get(CHECKPOINT_ATTR) is None
        assert everything_in(disk / "artifacts") == [], "the part written is removed"

        filler.unlink()  # space again: the next epoch's write goes through
        writer.epoch_done(2, state)
        writer.wait()
        pointer = trial.user_attrs[CHECKPOINT_ATTR]
        assert pointer["epoch"] == 2 and writer.written_epoch == 2
        assert everything_in(disk / "artifacts") == [pointer["artifact_id"]]
        loaded = checkpoints.load(pointer, torch.device("cpu"))
        assert loaded is not None and torch.equal(loaded["seeds"][0]["w"], state["seeds"][0]["w"])

        # Errors that are not the disk's keep their behaviour: a trial finished by someone
        # else (failed as stale) still stops the worker's work on it.
        study.tell(trial, state=TrialState.FAIL)
        writer.epoch_done(3, state)
        with pytest.raises(UpdateFinishedTrialError):
            writer.wait()


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a small finished digits study (on the ordinary disk)."""
    folder = tmp_path_factory.mktemp("searched")
    result = run_lsearch("run", "--trials", "2", *TINY, cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_export_to_a_full_disk_is_one_line_and_leaves_no_file(searched: Path) -> None:
    with small_disk(searched / "small", "1m") as disk:
        fill(disk)  # a CSV of two trials is a few KB: leave none
        target = disk / "trials.csv"
        result = run_lsearch("export", "--format", "csv", "-o", str(target), cwd=searched)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [f"error: cannot write {target}: {FULL}"]
        assert everything_in(disk) == ["filler"], "no partial or temporary file is left"


def test_report_to_a_full_disk_is_one_line_and_leaves_no_file(searched: Path) -> None:
    # The self-contained report is about 5 MB (plotly.js inside): 1 MB is too small for it.
    with small_disk(searched / "small", "1m") as disk:
        target = disk / "report.html"
        result = run_lsearch("report", "-o", str(target), cwd=searched)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [f"error: cannot write {target}: {FULL}"]
        assert everything_in(disk) == [], "no partial or temporary file is left"
