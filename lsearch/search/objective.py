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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from lsearch.search.checkpoints import Checkpoints
from lsearch.search.resume import resume_trial
from lsearch.search.study import check_new
from lsearch.search.trial_progress import TrialProgress
from lsearch.search.trial_training import TrialTraining, train_trial
from lsearch.spec import Param, Space, StudySpec
from lsearch.training.data import ImagePool, Split, TestSet, split_for_seed
from lsearch.training.devices import CoreShare
from lsearch.training.features import FeatureCache
from lsearch.training.models import build_model
from lsearch.training.seed_run import (
    SeedRun,
    seed_everything,
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
        self.features.new_trial()
        training = TrialTraining(self, trial, config, seeds, prunes, test_set, test_at)
        runs = training.runs
        together = trains_together(self.spec.train.seeds_together, self.device, runs)
        training.record_together(together)
        if not together:
            return train_trial(training, lambda: [run.train_epoch() for run in runs])
        # Built after a resume, so that the group starts from the seeds' restored state.
        group = SeedGroup(runs)
        return train_trial(training, group.train_epoch, group.sync_optimizers)
