"""Read-only views of studies in a storage: counts by state, best trials."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lsearch.errors import UserError
from lsearch.store.catalog import (
    CHECKPOINT_ATTR,
    CHECKPOINT_WARNING_ATTR,
    CONFIG_ATTR,
    SEARCH,
    SPEC_ATTR,
    STATES,
    study_kind,
    user_studies,
)


@dataclass(frozen=True)
class StudyRow:
    name: str
    kind: str  # "search" or "comparison"
    directions: list[str]
    counts: dict[str, int]  # trial state name -> number of trials
    best: list[float] | None  # the best values (single objective), None when none finished
    checkpoints: int  # rolling checkpoints its trials point at (RUNNING or WAITING ones' own)
    checkpoint_bytes: int | None  # their size, where the store is a local folder
    # Trials with a checkpoint that could not be written (user attr `checkpoint_warning`),
    # and the first one's reason.
    checkpoint_warnings: int = 0
    checkpoint_warning: str | None = None


def checkpoint_space(study: optuna.Study, trials: list[FrozenTrial]) -> tuple[int, int | None]:
    """The checkpoints the study's trials point at that still exist (a handed-back trial and
    its retry share one; a finished retry removed it), and their bytes, where the study's
    store is a local folder; elsewhere, those of RUNNING and WAITING trials, size unknown."""
    pointers = {
        pointer["artifact_id"]: t.state
        for t in trials
        if isinstance(pointer := t.user_attrs.get(CHECKPOINT_ATTR), dict)
    }
    location = study.user_attrs.get(SPEC_ATTR, {}).get("checkpoint", {}).get("location")
    if not location or "://" in location:
        unfinished = (TrialState.RUNNING, TrialState.WAITING)
        return sum(state in unfinished for state in pointers.values()), None
    files = [Path(location) / i for i in pointers if (Path(location) / i).is_file()]
    return len(files), sum(path.stat().st_size for path in files)


def study_rows(storage: optuna.storages.BaseStorage) -> list[StudyRow]:
    rows = []
    for summary in user_studies(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = Counter(t.state.name for t in trials)
        directions = [d.name.lower() for d in study.directions]
        kind = study_kind(summary)
        best = None
        # A comparison's best seed-run says nothing: its answer is `lsearch compare`'s output.
        if kind == SEARCH and len(directions) == 1 and counts["COMPLETE"]:
            best = [study.best_value]
        counts_by_state = {s: counts[s] for s in STATES}
        warned = [t for t in trials if t.user_attrs.get(CHECKPOINT_WARNING_ATTR)]
        rows.append(
            StudyRow(
                summary.study_name, kind, directions, counts_by_state, best,
                *checkpoint_space(study, trials), len(warned),
                f"trial {warned[0].number}, {warned[0].user_attrs[CHECKPOINT_WARNING_ATTR]}"
                if warned else None,
            )
        )  # fmt: skip
    return rows


def trial_summary(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters (searched and fixed) and headline metrics, JSON-ready."""
    attrs = trial.user_attrs
    keys = (
        "val_acc", "val_ece", "val_nll", "val_acc_per_seed", "val_ece_per_seed",
        "temperature_per_seed", "seeds", "best_epoch", "chosen_epoch", "epochs_run",
        "train_seconds", "device",
    )  # fmt: skip
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": trial.values,
        "params": attrs.get(CONFIG_ATTR, trial.params),
        **{key: attrs[key] for key in keys if key in attrs},
    }


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial, or the Pareto front of a multi-objective study."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(f"study '{study.study_name}' has no complete trial yet; run it first")
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    return [study.best_trial]
