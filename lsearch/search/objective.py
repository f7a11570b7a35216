"""The Optuna objective: suggest a configuration, train it on every seed in lockstep,
report the mean over seeds after each epoch, prune, stop on patience, record the results.

User attributes written on every finished or pruned trial (stable names, see README):
`config`, `seeds`, `val_acc`, `val_ece`, `val_nll`, `val_acc_per_seed`, `val_ece_per_seed`,
`val_nll_per_seed`, `temperature_per_seed`, `val_ece_temperature_scaled_per_seed`,
`best_epoch`, `chosen_epoch`, `epochs_run`, `epochs_trained`, `pruned_at_epoch`,
`train_seconds`, `device`, `precision`, `resumed_from_trial`, `resumed_from_epoch`,
`resumed_on_other_device` (after a checkpoint from another kind of device), and the curves
`curve_train_loss`, `curve_val_loss`, `curve_val_acc`, `curve_val_ece` (one list per seed,
one value per epoch), and `chosen_by` (the epoch is chosen by mean validation accuracy, for
every objective). A trial whose loss became NaN gets `fail_reason` (search.loop.run_one gives one
to a trial that raised anything else), one that could not use its checkpoint
`checkpoint_error`, one that could not write one `checkpoint_warning`. A trial trained with a
test set (`lsearch compare`, `lsearch evaluate`) also gets the test metrics of
`lsearch.training.evaluation.TEST_METRICS` with their `_per_seed` lists, the reliability data, and
`held_out`: those results for every epoch count read from it.

With checkpoints on, every epoch is checkpointed before it is reported; a trial that
Optuna re-queued after its worker died resumes from the newest checkpoint of the trial it
replaces, so only the epoch in flight is trained twice (search.resume). Where a running
trial stands is a TrialProgress (search.trial_progress).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError

from lsearch import interrupts
from lsearch.search.checkpoints import Checkpoints, CheckpointWriter
from lsearch.search.resume import resume_trial
from lsearch.search.study import check_new
from lsearch.search.trial_progress import TrialProgress, mean_of
from lsearch.spec import Param, Space, StudySpec
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
from lsearch.training.data import ImagePool, Split, TestSet, split_for_seed
from lsearch.training.devices import CoreShare, describe_device
from lsearch.training.evaluation import TEST_METRICS, held_out_metrics
from lsearch.training.features import FeatureCache
from lsearch.training.models import build_model
from lsearch.training.seed_run import (
    NonFiniteLossError,
    SeedRun,
    seed_everything,
    snapshot,
    start_seed_run,
)
from lsearch.training.together import SeedGroup, trains_together

__all__ = ["EpochCallback", "SearchObjective", "TrialConfig", "suggest"]

# Called after every epoch: (trial number, epoch, planned epochs, mean objective metric).
EpochCallback = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class TrialConfig:
    """The configuration one trial trains: the four parameters lsearch varies."""

    label_smoothing: float
    epochs: int
    lr: float
    trainable_layers: int


def _suggest(trial: optuna.Trial, name: str, param: Param, is_int: bool, log: bool) -> float:
    if param.value is not None:
        return param.value
    if param.choices is not None:
        return trial.suggest_categorical(name, list(param.choices))
    assert param.low is not None and param.high is not None
    if is_int:
        step = int(param.step) if param.step is not None else 1
        return trial.suggest_int(name, int(param.low), int(param.high), step=step)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=log)


def suggest(trial: optuna.Trial, space: Space) -> TrialConfig:
    """Sample the searched parameters; fixed ones take their value and are not Optuna params."""
    return TrialConfig(
        label_smoothing=float(
            _suggest(trial, "label_smoothing", space.label_smoothing, False, False)
        ),
        epochs=int(_suggest(trial, "epochs", space.epochs, True, False)),
        lr=float(_suggest(trial, "lr", space.lr, False, True)),
        trainable_layers=int(
            _suggest(trial, "trainable_layers", space.trainable_layers, True, False)
        ),
    )


class SearchObjective:
    """Callable by `study.optimize`; holds what every trial of this process shares.

    A search trial suggests its configuration and trains `spec.seeds` in lockstep.
    `lsearch compare` reuses `train` with a configuration and seeds of its own and a test
    set: the search itself never loads or evaluates the test set.
    """

    def __init__(
        self,
        spec: StudySpec,
        pool: ImagePool,
        device: torch.device,
        on_epoch: EpochCallback | None = None,
        checkpoints: Checkpoints | None = None,
        cores: CoreShare | None = None,
    ) -> None:
        self.spec = spec
        self.pool = pool
        self.device = device
        self.on_epoch = on_epoch
        self.checkpoints = checkpoints
        self.cores = cores  # re-divided before each trial, as workers come and go
        self.prunes = len(spec.objective.directions) == 1 and spec.pruner.type != "none"
        self._splits: dict[int, Split] = {}
        self.features = FeatureCache.for_device(device)  # see features.feature_cache_budget
        self._writer: CheckpointWriter | None = None  # the running trial's
        self._group: SeedGroup | None = None  # the running trial's seeds, when together

    def split(self, seed: int) -> Split:
        """The seed's train/validation split (made once per seed and process)."""
        if seed not in self._splits:
            self._splits[seed] = split_for_seed(self.pool, self.spec.data, seed)
        return self._splits[seed]

    def start(self, seed: int, config: TrialConfig) -> SeedRun:
        """A fresh seed-run of `config`: the seeded model, its frozen layers, its optimizer."""
        seed_everything(seed)
        net = build_model(self.spec.model, self.pool.images.shape[1], self.pool.num_classes, seed)
        net.freeze(config.trainable_layers)
        run = start_seed_run(
            seed,
            net,
            self.split(seed),
            self.pool,
            self.spec.data,
            self.spec.train,
            config.label_smoothing,
            config.lr,
            config.epochs,
            self.device,
        )
        # Same seed, same split, same frozen prefix: the same validation features.
        run.features, run.features_key = self.features, (seed, config.trainable_layers)
        return run

    def step(self, config: TrialConfig, epoch: int) -> int:
        """The pruner's step for `epoch` of this trial (see spec.Pruner.step)."""
        if self.spec.pruner.step == "epoch":
            return epoch
        longest = int(self.spec.space.epochs.bounds()[1])
        return -(-epoch * longest // config.epochs)  # ceil, in integers: the last is `longest`

    def resume(
        self, trial: optuna.Trial, config: TrialConfig, runs: list[SeedRun], prunes: bool
    ) -> TrialProgress | None:
        """Restore a re-queued trial from its checkpoint, or None (see search.resume)."""
        return resume_trial(self, trial, config, runs, prunes)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        config = suggest(trial, self.spec.space)
        check_new(trial)
        attrs = self.train(trial, config, self.spec.seeds, prunes=self.prunes)
        acc, ece = attrs["val_acc"], attrs["val_ece"]
        return {"val_acc": acc, "val_ece": ece, "val_acc+val_ece": (acc, ece)}[
            self.spec.objective.metric
        ]

    def train(
        self,
        trial: optuna.Trial,
        config: TrialConfig,
        seeds: Sequence[int],
        prunes: bool,
        test_set: TestSet | None = None,
        test_at: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Train `config` on `seeds` in lockstep, epoch by epoch; record and return the attrs.

        With a `test_set`, each seed's model at the chosen epoch is evaluated on it, after
        the last epoch and after each epoch count in `test_at` (a shorter run's result read
        from this one, exact under a constant learning rate); the attr `held_out` maps each
        of those epoch counts to its results.
        """
        with batched_user_attrs(trial):
            trial.set_user_attr(CONFIG_ATTR, asdict(config))
            trial.set_user_attr(SEEDS_RUN_ATTR, list(seeds))
            trial.set_user_attr(CHOSEN_BY_ATTR, "val_acc")
            trial.set_user_attr(DEVICE_ATTR, describe_device(self.device))
            if self.cores is not None:
                trial.set_user_attr(THREADS_ATTR, self.cores.refresh())
        started = time.perf_counter()
        self.features.new_trial()
        runs = [self.start(seed, config) for seed in seeds]
        progress = self.resume(trial, config, runs, prunes) or TrialProgress([[] for _ in runs])
        together = trains_together(self.spec.train.seeds_together, self.device, runs)
        with batched_user_attrs(trial):
            trial.set_user_attr(PRECISION_ATTR, runs[0].precision.name)  # or bfloat16, float16
            trial.set_user_attr(SEEDS_TOGETHER_ATTR, together)
        # Built after a resume, so that the group starts from the seeds' restored state.
        self._group = SeedGroup(runs) if together else None
        first_epoch = progress.epochs_run + 1
        keep_weights = None if test_set is None else (lambda: [r.weights() for r in runs])
        self._writer = None
        if self.checkpoints is not None:
            every_s = self.spec.checkpoint.every_s
            self._writer = CheckpointWriter(self.checkpoints, trial, every_s, progress.epochs_run)
        try:
            return self._train_epochs(
                trial, config, runs, progress, started, first_epoch, prunes, test_set, test_at,
                keep_weights,
            )  # fmt: skip
        except interrupts.Interrupted as exc:
            exc.trial_number = trial.number  # the caller hands it back (interrupts.hand_back)
            if self._writer is not None:
                self._writer.flush()  # the last finished epoch goes with the hand-back
            raise
        except Exception as exc:
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.wait()  # no write may land after the trial is handed on
                # A trial failing here is told FAIL and never resumed (search.run_one), so
                # its checkpoint goes; one taken over as stale, or cut off by a storage
                # outage, leaves it to the retry that resumes from it.
                if self.checkpoints is not None and not (
                    isinstance(exc, UpdateFinishedTrialError | optuna.TrialPruned)
                    or is_transient(exc)
                ):
                    with contextlib.suppress(Exception):
                        self.checkpoints.finish(trial, keep=False)
            raise
        except BaseException:
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.wait()  # no write may land after the trial is handed on
            raise

    def _train_epochs(
        self,
        trial: optuna.Trial,
        config: TrialConfig,
        runs: list[SeedRun],
        progress: TrialProgress,
        started: float,
        first_epoch: int,
        prunes: bool,
        test_set: TestSet | None,
        test_at: Sequence[int],
        keep_weights: Callable[[], list[dict[str, torch.Tensor]]] | None,
    ) -> dict[str, Any]:
        patience = self.spec.train.patience
        for epoch in range(first_epoch, config.epochs + 1):
            if patience is not None and epoch - 1 - progress.best_epoch >= patience:
                break  # (only after a resume: the old trial died before it could stop)
            results, logits = [], []
            for run, loss in zip(runs, self._train_epoch(trial, runs, epoch), strict=True):
                result, run_logits = run.evaluate(loss)
                results.append(result)
                logits.append(run_logits)
            progress.add_epoch(results, logits, keep_weights)
            if test_set is not None and epoch in test_at and epoch < config.epochs:
                progress.held_out[epoch] = self._held_out(runs, progress, test_set, epoch)
            if self._writer is not None:
                # The seeds' weights and optimizer state change in place as training goes on:
                # they are copied on the device. TrialProgress is already a copy of settled values.
                if self._group is not None:
                    self._group.sync_optimizers()  # a checkpoint is per seed either way
                seeds = snapshot([r.state_dict() for r in runs])
                self._writer.epoch_done(epoch, {"seeds": seeds, "progress": progress.state_dict()})
            value = progress.reported(self.spec.objective, epoch)
            if self.on_epoch is not None:
                self.on_epoch(trial.number, epoch, config.epochs, value)
            if prunes:
                trial.report(value, self.step(config, epoch))
                # After the last epoch the work is done: finish the trial rather than prune it.
                if epoch < config.epochs and trial.should_prune():
                    self._record(trial, progress, started, first_epoch, pruned_at=epoch)
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")
            if patience is not None and epoch - progress.best_epoch >= patience:
                break
        final: dict[str, Any] = {}
        held_out: dict[str, Any] = {}
        if test_set is not None:
            # A run that stopped early (patience) gives every longer epoch count its result.
            final = self._held_out(runs, progress, test_set, progress.epochs_run)
            for count in {*test_at, config.epochs}:
                if count not in progress.held_out or count >= progress.epochs_run:
                    progress.held_out[count] = final
            held_out = {HELD_OUT_ATTR: {str(k): v for k, v in progress.held_out.items()}, **final}
        attrs = self._record(trial, progress, started, first_epoch, None, also=held_out)
        return {**attrs, **final}

    def _train_epoch(self, trial: optuna.Trial, runs: list[SeedRun], epoch: int) -> list[float]:
        """One epoch of every seed, together or one after another: their mean losses. A loss
        that is not finite fails the trial (and drops its checkpoint), not the worker."""
        try:
            if self._group is not None:
                return self._group.train_epoch()
            return [run.train_epoch() for run in runs]
        except NonFiniteLossError as exc:
            trial.set_user_attr(FAIL_REASON_ATTR, f"{exc} at epoch {epoch}")
            if self.checkpoints is not None and self._writer is not None:
                self._writer.wait()
                self.checkpoints.finish(trial, keep=False)
            raise NonFiniteLossError(f"{exc} at epoch {epoch}") from None

    def _held_out(
        self, runs: list[SeedRun], progress: TrialProgress, test_set: TestSet, epoch: int
    ) -> dict[str, Any]:
        """Validation and test results per seed of the models chosen after `epoch` epochs."""
        chosen = progress.chosen_epoch(self.spec.objective, epoch)
        final = self.spec.objective.select_epoch == "final"
        val_logits = progress.last_logits if final else progress.best_logits
        per_seed = []
        for index, run in enumerate(runs):
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
        results[per_seed_attr("test_reliability")] = [seed["test_reliability"] for seed in per_seed]
        results[per_seed_attr("test_reliability_ts")] = [
            seed["test_reliability_ts"] for seed in per_seed
        ]
        return results

    def _record(
        self,
        trial: optuna.Trial,
        progress: TrialProgress,
        started: float,
        first_epoch: int,
        pruned_at: int | None,
        also: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the trial's user attrs at the chosen epoch, and `also` these, in one
        transaction; return the first."""
        history = progress.history
        epochs_run = progress.epochs_run
        chosen = progress.chosen_epoch(self.spec.objective, epochs_run)
        final = self.spec.objective.select_epoch == "final"
        logits = progress.last_logits if final else progress.best_logits
        at_chosen = [curve[chosen - 1] for curve in history]
        labels = [self.split(seed).val_labels for seed in trial.user_attrs[SEEDS_RUN_ATTR]]
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
            BEST_EPOCH_ATTR: progress.best_epoch,
            CHOSEN_EPOCH_ATTR: chosen,
            EPOCHS_RUN_ATTR: epochs_run,
            EPOCHS_TRAINED_ATTR: epochs_run - first_epoch + 1,
            PRUNED_AT_EPOCH_ATTR: pruned_at,
            TRAIN_SECONDS_ATTR: time.perf_counter() - started,
            curve_attr("train_loss"): [[m.train_loss for m in c] for c in history],
            curve_attr("val_loss"): [[m.val_loss for m in c] for c in history],
            curve_attr("val_acc"): [[m.val_acc for m in c] for c in history],
            curve_attr("val_ece"): [[m.val_ece for m in c] for c in history],
        }
        with batched_user_attrs(trial):
            for key, value in {**attrs, **(also or {})}.items():
                trial.set_user_attr(key, value)
        if self.checkpoints is not None and self._writer is not None:
            if self.checkpoints.keep_final:
                self._writer.flush()  # the kept checkpoint is the last epoch's
            else:
                self._writer.wait()
            try:
                self.checkpoints.finish(trial)
            except OSError as exc:  # the kept copy could not be written (a full disk)
                self._writer.warn(exc, epochs_run)
                self.checkpoints.finish(trial, keep=False)  # no rolling checkpoint outlives it
        return attrs
