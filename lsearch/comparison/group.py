"""Seed-runs of one comparison cell trained together: several trials of one seed each, one
SeedGroup (training.together), each trial stopping on its own.

Each seed-run of a comparison chooses its own epoch and stops on its own patience, so the
group shrinks as seed-runs end: a seed-run that stops (patience, its last epoch, a loss
that is not finite, its trial failed as stale by another worker) is told at once and leaves
the group (`SeedGroup.without`), and the others train on as they would alone. Each trial
keeps its own checkpoints (their writes one at a time: see CheckpointWriter.write_lock), so
a killed worker's seed-runs come back as retries that each resume alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import optuna

from lsearch import interrupts
from lsearch.search.trial_group import TrialGroup, stops_the_worker
from lsearch.search.trial_training import TrialTraining, train_trial
from lsearch.training.seed_run import NonFiniteLossError, SeedRun
from lsearch.training.together import SeedGroup, trains_together

if TYPE_CHECKING:
    from lsearch.comparison.plan import Plan
    from lsearch.search.objective import SearchObjective
    from lsearch.training.data import TestSet


def train_claimed(
    objective: SearchObjective,
    claims: Sequence[tuple[optuna.Trial, Plan]],
    test_set: TestSet,
    group: TrialGroup,
) -> None:
    """Train the claimed seed-runs (fresh trials of one configuration) together, telling
    `group` how each trial ends. Where they cannot train together (float16's gradient
    scaler), they train one after another."""
    objective.features.new_trial()
    write_lock = threading.Lock()
    units = []
    for trial, plan in claims:
        seed, config, test_at = [plan.seed], plan.config, plan.test_at
        unit = TrialTraining(objective, trial, config, seed, False, test_set, test_at, write_lock)
        units.append(unit)
    together = trains_together(objective.spec.train.seeds_together, objective.device, _runs(units))
    for unit in units:
        unit.record_together(together)
    if not together:
        for unit in units:
            outcome = _outcome(lambda u=unit: train_trial(u, lambda: [u.runs[0].train_epoch()]))
            group.finish(unit.trial, outcome)
        return
    _train_together(units, group)


def _runs(units: Sequence[TrialTraining]) -> list[SeedRun]:
    return [unit.runs[0] for unit in units]


def _fails_the_seed_run(exc: Exception) -> bool:
    """Whether `exc` ends one seed-run (told FAIL, or taken over) rather than the worker's
    step: an interrupt hands every claimed trial back, and a user error or a storage outage
    stops the worker (see search.trial_group.run_one)."""
    return not (isinstance(exc, interrupts.Interrupted) or stops_the_worker(exc))


def _outcome(train: Callable[[], dict]) -> float | Exception:
    """A seed-run's value (its test accuracy), or the exception that ended it; what stops
    the worker, or an interrupt, goes on."""
    try:
        return float(train()["test_acc"])
    except Exception as exc:
        if not _fails_the_seed_run(exc):
            raise
        return exc


def _train_together(units: list[TrialTraining], group: TrialGroup) -> None:
    active = list(units)
    seeds: SeedGroup | None = SeedGroup(_runs(units))
    try:
        for epoch in active[0].epochs():  # fresh trials: every one starts at epoch 1
            if seeds is not None:
                losses = seeds.train_epoch_each()
                if any(unit.writer is not None for unit in active):
                    seeds.sync_optimizers()  # checkpoints are per seed
            else:
                losses = [_alone_epoch(active[0])]
            leaving = [
                unit
                for unit, loss in zip(active, losses, strict=True)
                if _epoch_done(unit, epoch, loss, group)
            ]
            active = [unit for unit in active if unit not in leaving]
            if not active:
                return
            if leaving and seeds is not None:
                seeds = seeds.without(_runs(leaving))  # None: the last one trains alone
    except BaseException as exc:
        for unit in active:  # as TrialTraining.guarded does for one trial
            if isinstance(exc, interrupts.Interrupted):
                if unit.writer is not None:
                    unit.writer.flush()  # the last finished epoch goes with the hand-back
            elif isinstance(exc, Exception):
                unit.abandon(exc)
            elif unit.writer is not None:  # a second Ctrl-C: the trial is handed back too
                with contextlib.suppress(Exception):
                    unit.writer.wait()  # no write may land after the trial is handed on
        raise


def _alone_epoch(unit: TrialTraining) -> float | NonFiniteLossError:
    try:
        return unit.runs[0].train_epoch()
    except NonFiniteLossError as exc:
        return exc


def _epoch_done(
    unit: TrialTraining, epoch: int, loss: float | NonFiniteLossError, group: TrialGroup
) -> bool:
    """After `epoch`: the seed-run's evaluation and checkpoint; True when it has ended (and
    its trial was told how)."""
    try:
        with unit.guarded():
            if isinstance(loss, NonFiniteLossError):
                raise unit.loss_not_finite(loss, epoch)
            if not unit.epoch_done(epoch, [loss]) and epoch < unit.config.epochs:
                return False
            value = float(unit.finish()["test_acc"])
    except Exception as exc:
        if not _fails_the_seed_run(exc):
            raise
        group.finish(unit.trial, exc)
        return True
    group.finish(unit.trial, value)
    return True
