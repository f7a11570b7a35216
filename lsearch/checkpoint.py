"""Per-epoch checkpoints of a trial through an Optuna artifact store.

After every epoch a trial writes one checkpoint holding, for every seed, the model,
optimizer and scheduler state, the seed's RNG state and its curves so far; the previous
epoch's checkpoint is then removed, so a running trial keeps one. The trial's user attr
`checkpoint` ({"artifact_id", "epoch"}) points at it. When a worker dies, Optuna's
heartbeat machinery re-queues the trial with its user attrs, so the retry finds that
pointer, loads the checkpoint and continues from the next epoch.

When a trial finishes, its checkpoint is removed, or with `keep_final` re-registered with
`optuna.artifacts.upload_artifact`, so the dashboard lists it on the trial.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
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

CHECKPOINT_ATTR = "checkpoint"


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
    return FileSystemArtifactStore(location)


class Checkpoints:
    """Saves and loads one trial's checkpoints in an artifact store."""

    def __init__(self, store: Any, keep_final: bool = False) -> None:
        self.store = store
        self.keep_final = keep_final

    def save(self, trial: optuna.Trial, epoch: int, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        artifact_id = f"lsearch-ckpt-{uuid.uuid4().hex}"
        self.store.write(artifact_id, buffer)
        previous = trial.user_attrs.get(CHECKPOINT_ATTR)
        try:
            trial.set_user_attr(CHECKPOINT_ATTR, {"artifact_id": artifact_id, "epoch": epoch})
        except UpdateFinishedTrialError:
            # Failed as stale by another worker meanwhile: its retry resumes from `previous`.
            self._remove(artifact_id)
            raise
        if previous:
            self._remove(previous["artifact_id"])

    def load(self, pointer: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
        """The checkpoint a pointer names, or None when it is gone."""
        try:
            with self.store.open_reader(pointer["artifact_id"]) as reader:
                data = reader.read()
        except ArtifactNotFound:
            return None
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)

    def finish(self, trial: optuna.Trial, keep: bool | None = None) -> None:
        """Remove the trial's rolling checkpoint, or keep it as a listed artifact."""
        pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
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
            trial.set_user_attr("final_checkpoint", {**pointer, "artifact_id": final_id})
        trial.set_user_attr(CHECKPOINT_ATTR, None)
        self._remove(pointer["artifact_id"])

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
            if self.checkpoints is not None and pointer:
                self.checkpoints.discard(pointer["artifact_id"])
            return
        super().__call__(study, trial)
