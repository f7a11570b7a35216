"""One trial's training, epoch by epoch: its seed-runs, where it stands (TrialProgress), its
checkpoint writer, and what it does after each epoch (evaluate, checkpoint, report, prune,
stop on patience) and at its end (the held-out results, the recorded attrs).

The epochs themselves are trained by whoever holds the trial: a search trial trains its own
seeds (one after another, or as one SeedGroup), and a comparison trains several trials of
one seed each as one SeedGroup (comparison.together), each trial stopping on its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from lsearch import interrupts
from lsearch.search.checkpoints import CheckpointWriter
from lsearch.search.trial_progress import TrialProgress, mean_of
from lsearch.store.catalog import (
    BEST_EPOCH_ATTR,
    CHOSEN_BY_ATTR,
    CHOSEN_EPOCH_ATTR,
    CONFIG_ATTR,
    DEVICE_ATTR,
    EPOCHS_RUN_ATTR,
    EPOCHS_TRAINED_ATTR,
    FAIL_REASON_ATTR,
    HELD_OUT_ATTR,
    PRECISION_ATTR,
    PRUNED_AT_EPOCH_ATTR,
    SEEDS_RUN_ATTR,
    SEEDS_TOGETHER_ATTR,
    THREADS_ATTR,
    TRAIN_SECONDS_ATTR,
    curve_attr,
    per_seed_attr,
)
from lsearch.store.resilient import batched_user_attrs, is_transient
from lsearch.training import metrics
from lsearch.training.data import TestSet
from lsearch.training.devices import describe_device
from lsearch.training.evaluation import TEST_METRICS, held_out_metrics
from lsearch.training.seed_run import NonFiniteLossError, snapshot

if TYPE_CHECKING:
    from lsearch.search.objective import SearchObjective, TrialConfig


class TrialTraining:
    """One trial's seed-runs and where they stand; see the module's docstring. Made at the
    trial's start: it records the trial's first attrs, starts its seed-runs and resumes
    them from a checkpoint when the trial is a retry of a dead worker's."""

    def __init__(
        self,
        objective: SearchObjective,
        trial: optuna.Trial,
        config: TrialConfig,
        seeds: Sequence[int],
        prunes: bool,
        test_set: TestSet | None = None,
        test_at: Sequence[int] = (),
        write_lock: threading.Lock | None = None,
    ) -> None:
        self.objective, self.trial, self.config = objective, trial, config
        self.prunes, self.test_set, self.test_at = prunes, test_set, tuple(test_at)
        with batched_user_attrs(trial):
            trial.set_user_attr(CONFIG_ATTR, asdict(config))
            trial.set_user_attr(SEEDS_RUN_ATTR, list(seeds))
            trial.set_user_attr(CHOSEN_BY_ATTR, "val_acc")
            trial.set_user_attr(DEVICE_ATTR, describe_device(objective.device))
            if objective.cores is not None:
                trial.set_user_attr(THREADS_ATTR, objective.cores.refresh())
        self.started = time.perf_counter()
        self.runs = [objective.start(seed, config) for seed in seeds]
        resumed = objective.resume(trial, config, self.runs, prunes)
        self.progress = resumed or TrialProgress([[] for _ in self.runs])
        self.first_epoch = self.progress.epochs_run + 1
        self.writer: CheckpointWriter | None = None
        if objective.checkpoints is not None:
            every_s = objective.spec.checkpoint.every_s
            self.writer = CheckpointWriter(
                objective.checkpoints, trial, every_s, self.progress.epochs_run, write_lock
            )

    def record_together(self, together: bool) -> None:
        """The trial's precision and whether its seeds train together, in one write."""
        with batched_user_attrs(self.trial):
            self.trial.set_user_attr(PRECISION_ATTR, self.runs[0].precision.name)
            self.trial.set_user_attr(SEEDS_TOGETHER_ATTR, together)

    def epochs(self) -> range:
        """The epochs left to train (all of them, or those after a resumed checkpoint)."""
        return range(self.first_epoch, self.config.epochs + 1)

    def out_of_patience(self, epoch: int) -> bool:
        """Whether patience ran out before `epoch` (only after a resume: the old trial died
        before it could stop)."""
        patience = self.objective.spec.train.patience
        return patience is not None and epoch - 1 - self.progress.best_epoch >= patience

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """Around the trial's epochs: an interrupt writes the last finished epoch's checkpoint
        before the trial is handed back; a failure removes the checkpoint, except where the
        trial was taken over as stale or cut off by a storage outage (its retry resumes)."""
        try:
            yield
        except interrupts.Interrupted as exc:
            exc.trial_number = self.trial.number  # the loop hands it back
            if self.writer is not None:
                self.writer.flush()
            raise
        except Exception as exc:
            self.abandon(exc)
            raise
        except BaseException:
            if self.writer is not None:
                with contextlib.suppress(Exception):
                    self.writer.wait()  # no write may land after the trial is handed on
            raise

    def abandon(self, exc: BaseException) -> None:
        """What a trial that raised `exc` leaves: no write lands after it is handed on, and
        a trial told FAIL (never resumed) keeps no checkpoint."""
        if self.writer is None:
            return
        with contextlib.suppress(Exception):
            self.writer.wait()
        checkpoints = self.objective.checkpoints
        if checkpoints is not None and not (
            isinstance(exc, UpdateFinishedTrialError | optuna.TrialPruned) or is_transient(exc)
        ):
            with contextlib.suppress(Exception):
                checkpoints.finish(self.trial, keep=False)

    def loss_not_finite(self, exc: NonFiniteLossError, epoch: int) -> NonFiniteLossError:
        """Record why the trial fails (a loss that is not finite) and drop its checkpoint;
        the exception to raise."""
        reason = f"{exc} at epoch {epoch}"
        self.trial.set_user_attr(FAIL_REASON_ATTR, reason)
        if self.objective.checkpoints is not None and self.writer is not None:
            self.writer.wait()
            self.objective.checkpoints.finish(self.trial, keep=False)
        return NonFiniteLossError(reason)

    def epoch_done(self, epoch: int, losses: Sequence[float]) -> bool:
        """After `epoch` trained with these mean losses: evaluate, checkpoint, report (and
        prune: optuna.TrialPruned); True when patience has run out."""
        objective, progress, config = self.objective, self.progress, self.config
        results, logits = [], []
        for run, loss in zip(self.runs, losses, strict=True):
            result, run_logits = run.evaluate(loss)
            results.append(result)
            logits.append(run_logits)
        keep = None if self.test_set is None else (lambda: [r.weights() for r in self.runs])
        progress.add_epoch(results, logits, keep)
        if self.test_set is not None and epoch in self.test_at and epoch < config.epochs:
            progress.held_out[epoch] = self._held_out(epoch)
        if self.writer is not None:
            # The weights and optimizer state change in place as training goes on: they are
            # copied on the device. TrialProgress is already a copy of settled values.
            seeds = snapshot([r.state_dict() for r in self.runs])
            self.writer.epoch_done(epoch, {"seeds": seeds, "progress": progress.state_dict()})
        value = progress.reported(objective.spec.objective, epoch)
        if objective.on_epoch is not None:
            objective.on_epoch(self.trial.number, epoch, config.epochs, value)
        if self.prunes:
            self.trial.report(value, objective.step(config, epoch))
            # After the last epoch the work is done: finish the trial rather than prune it.
            if epoch < config.epochs and self.trial.should_prune():
                self._record(pruned_at=epoch)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        patience = objective.spec.train.patience
        return patience is not None and epoch - progress.best_epoch >= patience

    def finish(self) -> dict[str, Any]:
        """The trial's end: its held-out results (with a test set) and its recorded attrs."""
        progress = self.progress
        final: dict[str, Any] = {}
        held_out: dict[str, Any] = {}
        if self.test_set is not None:
            # A run that stopped early (patience) gives every longer epoch count its result.
            final = self._held_out(progress.epochs_run)
            for count in {*self.test_at, self.config.epochs}:
                if count not in progress.held_out or count >= progress.epochs_run:
                    progress.held_out[count] = final
            held_out = {HELD_OUT_ATTR: {str(k): v for k, v in progress.held_out.items()}, **final}
        attrs = self._record(None, also=held_out)
        return {**attrs, **final}

    def _held_out(self, epoch: int) -> dict[str, Any]:
        """Validation and test results per seed of the models chosen after `epoch` epochs."""
        assert self.test_set is not None
        progress, test_set, spec = self.progress, self.test_set, self.objective.spec
        chosen = progress.chosen_epoch(spec.objective, epoch)
        final = spec.objective.select_epoch == "final"
        val_logits = progress.last_logits if final else progress.best_logits
        per_seed = []
        for index, run in enumerate(self.runs):
            if final:
                test_logits = run.predict(test_set.images)
            else:
                test_logits = run.predict_with(progress.best_weights[index], test_set.images)
            per_seed.append(
                held_out_metrics(
                    test_logits, test_set.labels, val_logits[index], run.split.val_labels
                )
            )
        results: dict[str, Any] = {CHOSEN_EPOCH_ATTR: chosen, EPOCHS_RUN_ATTR: epoch}
        for name in ("val_acc", "val_ece", "val_nll"):
            field_name = "val_loss" if name == "val_nll" else name
            results[per_seed_attr(name)] = [
                getattr(curve[chosen - 1], field_name) for curve in progress.history
            ]
        for name in TEST_METRICS:
            results[per_seed_attr(name)] = [seed[name] for seed in per_seed]
        for name in ("val_acc", "val_ece", "val_nll", *TEST_METRICS):
            results[name] = mean_of(results[per_seed_attr(name)])
        for name in ("test_reliability", "test_reliability_ts"):
            results[per_seed_attr(name)] = [seed[name] for seed in per_seed]
        return results

    def _record(self, pruned_at: int | None, also: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the trial's user attrs at the chosen epoch, and `also` these, in one
        transaction; return the first."""
        history, trial = self.progress.history, self.trial
        epochs_run = self.progress.epochs_run
        chosen = self.progress.chosen_epoch(self.objective.spec.objective, epochs_run)
        final = self.objective.spec.objective.select_epoch == "final"
        logits = self.progress.last_logits if final else self.progress.best_logits
        at_chosen = [curve[chosen - 1] for curve in history]
        labels = [run.split.val_labels for run in self.runs]
        temperatures = [
            metrics.fit_temperature(lg, lb) for lg, lb in zip(logits, labels, strict=True)
        ]
        scaled_ece = [
            metrics.ece(lg / t, lb) for lg, lb, t in zip(logits, labels, temperatures, strict=True)
        ]
        attrs = {
            "val_acc": mean_of([m.val_acc for m in at_chosen]),
            "val_ece": mean_of([m.val_ece for m in at_chosen]),
            "val_nll": mean_of([m.val_loss for m in at_chosen]),
            per_seed_attr("val_acc"): [m.val_acc for m in at_chosen],
            per_seed_attr("val_ece"): [m.val_ece for m in at_chosen],
            per_seed_attr("val_nll"): [m.val_loss for m in at_chosen],
            per_seed_attr("temperature"): temperatures,
            per_seed_attr("val_ece_temperature_scaled"): scaled_ece,
            BEST_EPOCH_ATTR: self.progress.best_epoch,
            CHOSEN_EPOCH_ATTR: chosen,
            EPOCHS_RUN_ATTR: epochs_run,
            EPOCHS_TRAINED_ATTR: epochs_run - self.first_epoch + 1,
            PRUNED_AT_EPOCH_ATTR: pruned_at,
            TRAIN_SECONDS_ATTR: time.perf_counter() - self.started,
            **{
                curve_attr(name): [[getattr(m, name) for m in c] for c in history]
                for name in ("train_loss", "val_loss", "val_acc", "val_ece")
            },
        }
        with batched_user_attrs(trial):
            for key, value in {**attrs, **(also or {})}.items():
                trial.set_user_attr(key, value)
        self._finish_checkpoints(epochs_run)
        return attrs

    def _finish_checkpoints(self, epochs_run: int) -> None:
        checkpoints, writer = self.objective.checkpoints, self.writer
        if checkpoints is None or writer is None:
            return
        if checkpoints.keep_final:
            writer.flush()  # the kept checkpoint is the last epoch's
        else:
            writer.wait()
        try:
            checkpoints.finish(self.trial)
        except OSError as exc:  # the kept copy could not be written (a full disk)
            writer.warn(exc, epochs_run)
            checkpoints.finish(self.trial, keep=False)  # no rolling checkpoint outlives it


def train_trial(
    training: TrialTraining,
    train_epoch: Callable[[], list[float]],
    before_checkpoint: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train a trial's epochs with `train_epoch` (every seed one epoch: their mean losses),
    calling `before_checkpoint` (a SeedGroup's optimizer sync) after each when the trial
    checkpoints; its recorded attrs."""
    with training.guarded():
        for epoch in training.epochs():
            if training.out_of_patience(epoch):
                break
            try:
                losses = train_epoch()
            except NonFiniteLossError as exc:
                raise training.loss_not_finite(exc, epoch) from None
            if before_checkpoint is not None and training.writer is not None:
                before_checkpoint()
            if training.epoch_done(epoch, losses):
                break
        return training.finish()
