"""Checkpoints of a trial through an Optuna artifact store.

After an epoch a trial writes one checkpoint (in the background, at most every
`checkpoint.every_s` seconds: see CheckpointWriter) holding, for every seed, the trainable
groups' weights (frozen groups are rebuilt from the weights), optimizer and scheduler state,
the seed's RNG state and its curves so far; the previous checkpoint is then removed, so a
running trial keeps one. The trial's user attr
`checkpoint` ({"artifact_id", "epoch", "sha256"}) points at it; a local file is written under a
temporary name and renamed, and a reader checks the checksum (see Checkpoints.load). When a
worker dies, Optuna's heartbeat machinery re-queues the trial with its user attrs, so the retry
finds that pointer, loads the checkpoint and continues from the next epoch.

When a trial finishes, its checkpoint is removed, or with `keep_final` re-registered with
`optuna.artifacts.upload_artifact`, so the dashboard lists it on the trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from lsearch.errors import one_line
from lsearch.store.catalog import (
    CHECKPOINT_ATTR,
    CHECKPOINT_PENDING_ATTR,
    CHECKPOINT_WARNING_ATTR,
    FINAL_CHECKPOINT_ATTR,
)


def open_artifact_store(location: str) -> Any:
    """A filesystem path, or s3://bucket/prefix, or gs://bucket (those need boto3 / GCS)."""
    if location.startswith("s3://"):
        import boto3
        from optuna.artifacts import Boto3ArtifactStore

        bucket = location.removeprefix("s3://").split("/", 1)[0]
        return Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    if location.startswith("gs://"):
        from optuna.artifacts import GCSArtifactStore

        return GCSArtifactStore(location.removeprefix("gs://").split("/", 1)[0])
    Path(location).mkdir(parents=True, exist_ok=True)
    return AtomicFileSystemArtifactStore(location)


TEMPORARY_SUFFIX = ".partial"  # a file being written to a local store, renamed when whole


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's local store, whose `write` is a plain open and copy, so a worker killed
    mid-write leaves a truncated file under the artifact's own name. Here a write goes to
    `<artifact_id>.partial` in the same folder and is renamed (os.replace, atomic) once whole
    and synced, so an artifact's name only ever shows a whole file; `remove` also removes the
    temporary file a killed write left. (S3 and GCS objects appear whole: their stores keep
    their own write.)"""

    def write(self, artifact_id: str, content_body: Any) -> None:
        path = self._get_filepath(artifact_id)
        partial = self._get_filepath(artifact_id + TEMPORARY_SUFFIX)
        try:
            with open(partial, "wb") as file:
                shutil.copyfileobj(content_body, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise

    def remove(self, artifact_id: str) -> None:
        partial = self._get_filepath(artifact_id + TEMPORARY_SUFFIX)
        try:
            partial.unlink()
        except FileNotFoundError:
            super().remove(artifact_id)
            return
        with contextlib.suppress(ArtifactNotFound):  # killed before the rename
            super().remove(artifact_id)


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be trusted: unreadable, not what its pointer says (checksum),
    or not a state of this trial's runs. Never fatal: the retry trains from the start."""


class Checkpoints:
    """Saves and loads one trial's checkpoints in an artifact store."""

    def __init__(self, store: Any, keep_final: bool = False) -> None:
        self.store = store
        self.keep_final = keep_final

    def save(self, trial: optuna.Trial, epoch: int, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        sha256 = hashlib.sha256(buffer.getbuffer()).hexdigest()  # checked by `load`
        buffer.seek(0)
        artifact_id = f"lsearch-ckpt-{uuid.uuid4().hex}"
        previous = trial.user_attrs.get(CHECKPOINT_ATTR)
        # Name the file in the trial before writing it, so that a worker killed mid-write
        # leaves no file nobody knows of: the next save, finish or discard removes it.
        self.remove_pending(trial.user_attrs, previous)
        trial.set_user_attr(CHECKPOINT_PENDING_ATTR, artifact_id)
        self.store.write(artifact_id, buffer)
        try:
            pointer = {"artifact_id": artifact_id, "epoch": epoch, "sha256": sha256}
            trial.set_user_attr(CHECKPOINT_ATTR, pointer)
        except UpdateFinishedTrialError:
            # Failed as stale by another worker meanwhile: its retry resumes from `previous`.
            self._remove(artifact_id)
            raise
        if previous:
            self._remove(previous["artifact_id"])

    def load(self, pointer: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
        """The checkpoint a pointer names, or None when it is gone. Raises DamagedCheckpoint
        when its bytes are not those written (sha256; pointers written before checksums have
        none) or do not load as a checkpoint; a store that cannot be read raises its own
        error (the file may be fine)."""
        artifact_id = pointer.get("artifact_id") if isinstance(pointer, dict) else None
        if not isinstance(artifact_id, str):
            raise DamagedCheckpoint(f"the pointer {pointer!r} names no file")
        try:
            with self.store.open_reader(artifact_id) as reader:
                data = reader.read()
        except ArtifactNotFound:
            return None
        expected = pointer.get("sha256")
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise DamagedCheckpoint(
                f"its {len(data)} bytes do not match the sha256 it was written with "
                "(truncated, overwritten or replaced)"
            )
        try:
            state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        except Exception as exc:  # torch.load raises many kinds on bytes that are no checkpoint
            raise DamagedCheckpoint(f"it does not load ({one_line(exc)})") from exc
        if not isinstance(state, dict) or not {"seeds", "progress"} <= state.keys():
            raise DamagedCheckpoint("it loads but holds no lsearch checkpoint (seeds, progress)")
        return state

    def finish(self, trial: optuna.Trial, keep: bool | None = None) -> None:
        """Remove the trial's rolling checkpoint, or keep it as a listed artifact."""
        pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
        self.remove_pending(trial.user_attrs, pointer)
        if not pointer:
            return
        if self.keep_final if keep is None else keep:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / f"trial-{trial.number}-epoch-{pointer['epoch']}.pt"
                with self.store.open_reader(pointer["artifact_id"]) as reader:
                    path.write_bytes(reader.read())
                final_id = upload_artifact(
                    artifact_store=self.store, file_path=str(path), study_or_trial=trial
                )
            trial.set_user_attr(FINAL_CHECKPOINT_ATTR, {**pointer, "artifact_id": final_id})
        trial.set_user_attr(CHECKPOINT_ATTR, None)
        self._remove(pointer["artifact_id"])

    def remove_pending(self, attrs: dict[str, Any], pointer: dict[str, Any] | None) -> None:
        """Remove a file a killed write may have left (named, never pointed at)."""
        pending = attrs.get(CHECKPOINT_PENDING_ATTR)
        if pending and (not pointer or pending != pointer["artifact_id"]):
            self._remove(pending)

    def discard(self, artifact_id: str) -> None:
        """Remove a checkpoint no trial will resume from."""
        self._remove(artifact_id)

    def _remove(self, artifact_id: str) -> None:
        # Already gone: removed by the trial this one was retried from.
        with contextlib.suppress(ArtifactNotFound):
            self.store.remove(artifact_id)


class RetryOrDiscardCheckpoint(RetryHeartbeatStaleTrialCallback):
    """Optuna's re-queueing of a dead worker's trial, which carries the checkpoint to the
    retry; when the trial has used up its retries, its checkpoint is removed instead, so no
    checkpoint outlives its trial."""

    def __init__(self, max_retry: int | None, checkpoints: Checkpoints | None) -> None:
        super().__init__(max_retry=max_retry, inherit_intermediate_values=True)
        self.max_retry = max_retry
        self.checkpoints = checkpoints

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        retries = len(RetryHeartbeatStaleTrialCallback.retry_history(trial)) + 1
        pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
        if self.max_retry is not None and self.max_retry < retries:
            if self.checkpoints is not None:
                self.checkpoints.remove_pending(trial.user_attrs, pointer)
                if pointer:
                    self.checkpoints.discard(pointer["artifact_id"])
            return
        super().__call__(study, trial)


def to_host(value: Any) -> Any:
    """A (nested) `snapshot` with its tensors on the CPU, for torch.save; tensors already there
    are not copied again (a snapshot shares nothing with the live model)."""
    if isinstance(value, torch.Tensor):
        return value.to("cpu")
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_host(item) for item in value)
    return value


log = logging.getLogger("lsearch.search.checkpoints")
_warned = threading.Lock()  # held for good once this process has printed its warning


def describe_os_error(exc: OSError, where: Any = None) -> str:
    """`No space left on device: /path` (the error's file, else `where`), or the error's
    text where it has no strerror."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename or where
    return f"{reason}: {where}" if where else reason


class CheckpointWriter:
    """One trial's checkpoints, written in the background while the next epoch trains.

    After each epoch the trial hands over its state as a `snapshot` (kept on the device it
    trains on) as the latest. It is copied to the host and written when at least `every_s`
    seconds have passed since the last write began and no write is still going; otherwise it
    waits on the device, and a newer epoch replaces it. So training never waits for storage
    or for a copy to the host, a hard crash loses at most `every_s` seconds plus the epochs of
    one write, and an interrupt (Ctrl-C, SIGTERM, --timeout), which arrives in the middle of
    an epoch, writes the last finished epoch's snapshot before the trial is handed back
    (`flush`), losing at most the epoch in flight.

    A write that fails with an OSError (a full disk, a quota, an I/O or permission error) is
    a warning, not a crash: the file it may have left is removed, the trial records why in
    its user attr `checkpoint_warning` (on the training thread, at its next call), the
    process prints one warning line (once, for all its trials), and the trial goes on
    without crash protection; the next write tries again. Other errors (the trial failed as
    stale by another worker, ...) are raised in the training thread as before."""

    def __init__(
        self,
        checkpoints: Checkpoints,
        trial: optuna.Trial,
        every_s: float,
        written_epoch: int,
        write_lock: threading.Lock | None = None,
    ) -> None:
        self.checkpoints = checkpoints
        # Shared by the writers of seed-runs trained together: one write at a time, so a
        # group holds no more storage connections than one trial does.
        self.write_lock = write_lock or threading.Lock()
        self.trial = trial
        self.every_s = every_s
        self.written_epoch = written_epoch  # the newest epoch in the store
        self.latest: tuple[int, dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._error_epoch = 0
        self._last_start = time.monotonic()
        self.warned = False  # this trial has recorded `checkpoint_warning`

    def epoch_done(self, epoch: int, state: dict[str, Any]) -> None:
        """`state` must share no memory with what training goes on changing (`snapshot`)."""
        self.latest = (epoch, state)
        self._raise_error()
        busy = self._thread is not None and self._thread.is_alive()
        if not busy and time.monotonic() - self._last_start >= self.every_s:
            self._start(*self.latest)

    def flush(self) -> None:
        """Write the latest state now, unless the store has it: before a hand-back."""
        self.wait()
        if self.latest is not None and self.latest[0] > self.written_epoch:
            try:
                self._write(*self.latest)
            except OSError as exc:
                self._remove_partial()
                self.warn(exc, self.latest[0])

    def wait(self) -> None:
        """Wait for the write in progress; raise what it raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _start(self, epoch: int, state: dict[str, Any]) -> None:
        self._last_start = time.monotonic()
        self._thread = threading.Thread(
            target=self._write_catching, args=(epoch, state), name="lsearch-checkpoint",
            daemon=True,
        )  # fmt: skip
        self._thread.start()

    def _write_catching(self, epoch: int, state: dict[str, Any]) -> None:
        try:
            self._write(epoch, state)
        except BaseException as exc:  # handed to the training thread at its next call
            if isinstance(exc, OSError):
                self._remove_partial()  # touches the store only: no Optuna write here
            self._error, self._error_epoch = exc, epoch

    def _write(self, epoch: int, state: dict[str, Any]) -> None:
        with self.write_lock:
            self.checkpoints.save(self.trial, epoch, to_host(state))
        self.written_epoch = epoch

    def _remove_partial(self) -> None:
        """Remove what a failed write may have left: the file `checkpoint_pending` names,
        unless `checkpoint` points at it (the write itself succeeded)."""
        with contextlib.suppress(OSError):
            attrs = self.trial.user_attrs
            self.checkpoints.remove_pending(attrs, attrs.get(CHECKPOINT_ATTR))

    def warn(self, exc: OSError, epoch: int) -> None:
        """Record on the trial (once) and print (once per process) that a checkpoint could
        not be written. On the training thread: it writes a trial attr."""
        # A failed write() names no file: name the local store's folder instead.
        reason = describe_os_error(exc, getattr(self.checkpoints.store, "_base_path", None))
        if not self.warned:
            self.warned = True
            self.trial.set_user_attr(CHECKPOINT_WARNING_ATTR, f"epoch {epoch}: {reason}")
        if _warned.acquire(blocking=False):
            log.warning(
                "warning: checkpoint of trial %d could not be written (%s); the trial goes on "
                "without crash protection; later writes will try again (printed once)",
                self.trial.number, reason,
            )  # fmt: skip

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, OSError):
                self.warn(error, self._error_epoch)
                return
            raise error
