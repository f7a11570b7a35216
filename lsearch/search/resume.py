"""Resuming a re-queued trial: Optuna hands a dead worker's trial back as a WAITING retry,
and its new run goes on from the newest checkpoint of the trial it replaces, so only the
epoch in flight is trained twice. A checkpoint that cannot be trusted is never fatal.

User attrs written here: `resumed_from_trial`, `resumed_from_epoch`,
`resumed_on_other_device` (after a checkpoint from another kind of device), or
`checkpoint_error` when the checkpoint was not used.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from lsearch import interrupts
from lsearch.errors import one_line
from lsearch.search.checkpoints import DamagedCheckpoint
from lsearch.search.trial_progress import TrialProgress
from lsearch.store.catalog import (
    CHECKPOINT_ATTR,
    CHECKPOINT_ERROR_ATTR,
    RESUMED_FROM_EPOCH_ATTR,
    RESUMED_FROM_TRIAL_ATTR,
    RESUMED_ON_OTHER_DEVICE_ATTR,
)
from lsearch.training.seed_run import SeedRun

if TYPE_CHECKING:
    from lsearch.search.objective import SearchObjective, TrialConfig

RESUMED_ATTRS = ("resumed_from_trial", "resumed_from_epoch", "resumed_on_other_device")


def _retry_history(trial: optuna.Trial) -> list[int]:
    """The trials this one replaces, oldest first (empty for a trial that is no retry)."""
    # A live Trial does not show its system attrs, where Optuna keeps the retry history.
    running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    (frozen,) = [t for t in running if t.number == trial.number]
    return RetryHeartbeatStaleTrialCallback.retry_history(frozen)


def _load(
    objective: SearchObjective, pointer: Any, runs: list[SeedRun]
) -> tuple[TrialProgress, dict[str, Any], list[bool]] | None:
    """The checkpoint's progress and state, loaded into `runs` (None when there is none);
    DamagedCheckpoint when it does not fit."""
    assert objective.checkpoints is not None
    state = objective.checkpoints.load(pointer, objective.device)
    if state is None:
        return None
    try:
        progress = TrialProgress.from_state_dict(state["progress"])
        moved = [
            run.load_state_dict(s, progress.epochs_run)
            for run, s in zip(runs, state["seeds"], strict=True)
        ]
    except (interrupts.Interrupted, torch.cuda.OutOfMemoryError):
        raise  # not the checkpoint's fault
    except Exception as exc:  # a missing key, a shape, another model or version
        raise DamagedCheckpoint(f"it does not fit this trial ({one_line(exc)})") from exc
    return progress, state, moved


def _discard(
    objective: SearchObjective,
    trial: optuna.Trial,
    config: TrialConfig,
    runs: list[SeedRun],
    replaced: int,
    exc: DamagedCheckpoint,
) -> None:
    """Record why the checkpoint (of trial `replaced`) was not used, remove it, and rebuild
    `runs` in place."""
    assert objective.checkpoints is not None
    pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
    where = pointer.get("artifact_id") if isinstance(pointer, dict) else pointer
    epoch = pointer.get("epoch") if isinstance(pointer, dict) else None
    trial.set_user_attr(
        CHECKPOINT_ERROR_ATTR,
        f"checkpoint {where} (epoch {epoch}, trial {replaced}) was not used: {exc}; "
        "trained from epoch 1",
    )
    for name in RESUMED_ATTRS:
        if name in trial.user_attrs:  # from an earlier retry of this trial
            trial.set_user_attr(name, None)
    trial.set_user_attr(CHECKPOINT_ATTR, None)
    if isinstance(where, str):
        objective.checkpoints.discard(where)
    runs[:] = [objective.start(run.seed, config) for run in runs]


def resume_trial(
    objective: SearchObjective,
    trial: optuna.Trial,
    config: TrialConfig,
    runs: list[SeedRun],
    prunes: bool,
) -> TrialProgress | None:
    """Restore a re-queued trial from the newest checkpoint of the trial it replaces.

    A checkpoint that cannot be trusted (damaged, gone, or not a state of these runs) is never
    fatal: it is removed, the reason goes to the user attr `checkpoint_error`, `runs` are
    rebuilt in place (a seed that loaded before a later one failed must not go on from
    it) and the trial trains from the start (None)."""
    pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
    if objective.checkpoints is None or not pointer:
        return None
    history = _retry_history(trial)
    if not history:
        return None
    try:
        loaded = _load(objective, pointer, runs)
    except DamagedCheckpoint as exc:
        _discard(objective, trial, config, runs, history[-1], exc)
        return None
    if loaded is None:  # said, not silent: a retry that trains from epoch 1 costs the user time
        gone = DamagedCheckpoint("its file is gone (removed, or on another machine's disk)")
        _discard(objective, trial, config, runs, history[-1], gone)
        return None
    progress, state, moved = loaded
    trial.set_user_attr(RESUMED_FROM_TRIAL_ATTR, history[-1])
    trial.set_user_attr(RESUMED_FROM_EPOCH_ATTR, progress.epochs_run)
    if any(moved):
        # Same weights and optimizer state, new random streams (see SeedRun.load_state_dict).
        saved_on = state["seeds"][0].get("device", "another kind of device")
        trial.set_user_attr(RESUMED_ON_OTHER_DEVICE_ATTR, f"{saved_on} -> {objective.device.type}")
    if prunes:
        # Epochs the old trial checkpointed but died before reporting; the rest are
        # carried over by Optuna's retry callback (and re-reporting them is a no-op).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epoch in range(1, progress.epochs_run + 1):
                trial.report(
                    progress.reported(objective.spec.objective, epoch),
                    objective.step(config, epoch),
                )
    return progress
