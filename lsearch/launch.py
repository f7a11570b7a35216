"""Everything between parsed arguments and a running search, in an order that checks every
input a user can get wrong (spec, device, model, data) before the storage is touched."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import torch

from lsearch.checkpoint import Checkpoints, RetryOrDiscardCheckpoint, open_artifact_store
from lsearch.data import ImagePool, load_pool
from lsearch.errors import UserError
from lsearch.models import build_model, layer_group_count
from lsearch.search import open_study
from lsearch.spec import StudySpec, load_spec
from lsearch.storage import open_storage
from lsearch.train import describe_device, resolve_device


@dataclass(frozen=True)
class Prepared:
    spec: StudySpec
    device: torch.device
    pool: ImagePool
    study: optuna.Study
    checkpoints: Checkpoints | None
    heartbeats: bool  # whether dead workers' trials are failed and re-queued


def check_trainable_layers(spec: StudySpec) -> None:
    groups = layer_group_count(spec.model)
    _, high = spec.space.trainable_layers.bounds()
    if high > groups:
        raise UserError(
            f"space.trainable_layers goes up to {high:g}, but {spec.model.name} has {groups} "
            f"layer groups (1 = classifier only ... {groups} = whole network); keep it within "
            f"1..{groups}"
        )


def check_and_load(
    spec: StudySpec, device_name: str, trains: bool = True
) -> tuple[torch.device, ImagePool]:
    """Check the device, the model and its weights, and load the training pool: every input
    a user can get wrong, before any storage is touched."""
    device = resolve_device(device_name)
    check_trainable_layers(spec)
    pool = load_pool(spec.data, device if trains else torch.device("cpu"))
    # Load the weights once now, so a bad weights file fails before the storage is touched.
    build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
    return device, pool


def open_spec_storage(
    spec: StudySpec, storage_url: str, checkpoints: Checkpoints | None = None
) -> tuple[optuna.storages.BaseStorage, bool]:
    """The storage with the spec's heartbeat settings, and whether dead workers' trials are
    failed and re-queued through it (not behind the gRPC proxy, which carries no heartbeat).
    A dead worker's trial goes to its retry with its checkpoint, or, when its retries are
    used up, its checkpoint is removed (`checkpoints`, or the spec's store)."""
    beats = spec.storage.heartbeat_interval or None
    storage = open_storage(
        storage_url,
        heartbeat_interval=beats,
        grace_period=spec.storage.grace_period,
        stale_trial_callback=RetryOrDiscardCheckpoint(
            spec.storage.max_retry, checkpoints or open_checkpoints(spec)
        ),
    )
    return storage, beats is not None and not storage_url.startswith("grpc://")


def open_checkpoints(spec: StudySpec) -> Checkpoints | None:
    if not spec.checkpoint.enabled:
        return None
    store = open_artifact_store(spec.checkpoint.location)
    return Checkpoints(store, keep_final=spec.checkpoint.keep_final)


def prepare(
    study_file: str,
    overrides: list[str],
    storage_url: str,
    device_name: str,
    study_name: str | None = None,
    worker_index: int = 0,
    trains: bool = True,
) -> Prepared:
    """Check everything, then open the study. `trains=False` (a process that only starts and
    watches workers) still checks the device but keeps the data off the GPU."""
    spec = load_spec(study_file, overrides)
    device, pool = check_and_load(spec, device_name, trains)
    checkpoints = open_checkpoints(spec)
    storage, heartbeats = open_spec_storage(spec, storage_url, checkpoints)
    study = open_study(spec, storage, study_name, worker_index, describe_device(device))
    return Prepared(spec, device, pool, study, checkpoints, heartbeats)
