"""Everything between parsed arguments and a running search, in an order that checks every
input a user can get wrong (spec, device, model, data) before the storage is touched."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import optuna
import torch

from lsearch.errors import UserError
from lsearch.search.checkpoints import Checkpoints, RetryOrDiscardCheckpoint, open_artifact_store
from lsearch.search.liveness import StaleTrialSweeper
from lsearch.search.loop import Liveness, liveness_for
from lsearch.search.study import open_study
from lsearch.spec import StudySpec
from lsearch.store.catalog import SPEC_ATTR, user_studies
from lsearch.store.resilient import MAX_RETRY_DELAY_S
from lsearch.store.storage import open_storage
from lsearch.training.data import ImagePool, load_pool
from lsearch.training.devices import CoreShare, describe_device, resolve_device, set_determinism
from lsearch.training.models import build_model, layer_group_count

log = logging.getLogger("lsearch.search.launch")


@dataclass(frozen=True)
class Prepared:
    spec: StudySpec
    device: torch.device
    pool: ImagePool
    cores: CoreShare | None  # this worker's share of the machine's cores
    study: optuna.Study
    checkpoints: Checkpoints | None
    liveness: Liveness | None  # heartbeats and the sweep of dead workers' trials


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
    spec: StudySpec, device_name: str, trains: bool = True, threads: int | None = None
) -> tuple[torch.device, ImagePool, CoreShare | None]:
    """Check the device, the model and its weights, and load the training pool: every input
    a user can get wrong, before any storage is touched. A process that trains takes its
    share of the machine's cores (`threads`, or divided among the workers running here).
    One that does not train only checks the device: it claims no GPU (see resolve_device)."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1 (got {threads})")
    device = resolve_device(device_name, claim=trains)
    if trains:  # the cuDNN settings matter only where kernels run
        set_determinism(device, spec.train.deterministic)
    check_trainable_layers(spec)
    pool = load_pool(spec.data, device if trains else torch.device("cpu"), spec.model.weights)
    # Load the weights once now, so a bad weights file fails before the storage is touched.
    build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
    cores = CoreShare(threads) if trains else None
    if cores is not None:
        cores.refresh()
    return device, pool, cores


def open_spec_storage(
    spec: StudySpec, storage_url: str, checkpoints: Checkpoints | None = None
) -> tuple[optuna.storages.BaseStorage, Liveness | None]:
    """The storage with the spec's reconnect window, and this process's heartbeat and sweep
    of dead workers' trials (None with heartbeats off). A dead worker's trial goes to its
    retry with its checkpoint, or, when its retries are used up, its checkpoint is removed
    (`checkpoints`, or the spec's store)."""
    settings = spec.storage
    storage = open_storage(
        storage_url,
        reconnect_timeout=settings.reconnect_timeout,
        max_delay=min(MAX_RETRY_DELAY_S, settings.heartbeat_interval or MAX_RETRY_DELAY_S),
    )
    return storage, spec_liveness(spec, storage, checkpoints or open_checkpoints(spec))


def spec_liveness(
    spec: StudySpec, storage: optuna.storages.BaseStorage, checkpoints: Checkpoints | None
) -> Liveness | None:
    settings = spec.storage
    on_stale = RetryOrDiscardCheckpoint(settings.max_retry, checkpoints)
    return liveness_for(storage, settings.heartbeat_interval, settings.grace_period, on_stale)


def open_checkpoints(spec: StudySpec) -> Checkpoints | None:
    if not spec.checkpoint.enabled:
        return None
    store = open_artifact_store(spec.checkpoint.location)
    return Checkpoints(store, keep_final=spec.checkpoint.keep_final)


def prepare_search(
    spec: StudySpec,
    storage_url: str,
    device_name: str,
    study_name: str | None = None,
    trains: bool = True,
    threads: int | None = None,
) -> Prepared:
    """Check every input a user can get wrong (device, model, weights, data), then open the
    storage and the study. `trains=False` (a process that only starts and watches workers)
    checks the device but claims no GPU and keeps the data off it."""
    device, pool, cores = check_and_load(spec, device_name, trains, threads)
    checkpoints = open_checkpoints(spec)
    storage, liveness = open_spec_storage(spec, storage_url, checkpoints)
    study = open_study(spec, storage, study_name, device=describe_device(device))
    return Prepared(spec, device, pool, cores, study, checkpoints, liveness)


def watch_stale_trials(
    storage: optuna.storages.BaseStorage, stop: threading.Event, every_s: float = 5.0
) -> None:
    """Sweep every lsearch study of a storage for trials whose workers stopped beating, until
    `stop` is set: what `lsearch proxy` runs beside the gRPC server, so that the trials of
    workers behind it are recovered even when no other worker is left to do it. Each study
    is swept with its own stored settings (grace period, retries, checkpoint store)."""
    # A study with heartbeats off is looked at once: None.
    sweepers: dict[str, tuple[optuna.Study, StaleTrialSweeper] | None] = {}
    while not stop.wait(every_s):
        try:
            for summary in user_studies(storage):
                name = summary.study_name
                if name not in sweepers:
                    stored = summary.user_attrs.get(SPEC_ATTR)
                    if stored is None:
                        continue  # not lsearch's, or its spec is still being recorded
                    spec = StudySpec.model_validate(stored)
                    liveness = spec_liveness(spec, storage, open_checkpoints(spec))
                    sweepers[name] = None
                    if liveness is not None:
                        study = optuna.load_study(study_name=name, storage=storage)
                        sweepers[name] = (study, liveness.sweeper)
                watched = sweepers[name]
                if watched is not None:
                    watched[1].sweep(watched[0])
        except Exception as exc:  # keep serving; the next round tries again
            log.warning("sweep for stale trials failed: %s", exc)
