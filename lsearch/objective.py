"""The Optuna objective: suggest a configuration, train it on every seed in lockstep,
report the mean over seeds after each epoch, prune, stop on patience, record the results.

User attributes written on every finished or pruned trial (stable names, see README):
`config`, `seeds`, `val_acc`, `val_ece`, `val_nll`, `val_acc_per_seed`, `val_ece_per_seed`,
`val_nll_per_seed`, `temperature_per_seed`, `val_ece_temperature_scaled_per_seed`,
`best_epoch`, `chosen_epoch`, `epochs_run`, `epochs_trained`, `pruned_at_epoch`,
`train_seconds`, `device`, `resumed_from_trial`, `resumed_from_epoch`, and the curves
`curve_train_loss`, `curve_val_loss`, `curve_val_acc`, `curve_val_ece` (one list per seed,
one value per epoch). A trial whose loss became NaN gets `fail_reason`.

With checkpoints on, every epoch is checkpointed before it is reported; a trial that
Optuna re-queued after its worker died resumes from the newest checkpoint of the trial it
replaces, so only the epoch in flight is trained twice.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from lsearch import metrics
from lsearch.checkpoint import CHECKPOINT_ATTR, Checkpoints
from lsearch.data import ImagePool, Split, split_for_seed
from lsearch.models import build_model
from lsearch.spec import Param, Space, StudySpec
from lsearch.train import (
    EpochMetrics,
    NonFiniteLossError,
    SeedRun,
    describe_device,
    seed_everything,
    start_seed_run,
)

# Called after every epoch: (trial number, epoch, planned epochs, mean objective metric).
EpochCallback = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class TrialConfig:
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


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


@dataclass
class Progress:
    """Where a trial stands: per-seed curves and the best epoch so far (1-based)."""

    history: list[list[EpochMetrics]]
    best_acc: float = -1.0
    best_epoch: int = 0
    best_logits: list[torch.Tensor] = field(default_factory=list)
    last_logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def epochs_run(self) -> int:
        return len(self.history[0])

    def mean(self, metric: str, epoch: int) -> float:
        return _mean([getattr(curve[epoch - 1], metric) for curve in self.history])

    def add_epoch(self, results: list[EpochMetrics], logits: list[torch.Tensor]) -> None:
        for curve, result in zip(self.history, results, strict=True):
            curve.append(result)
        self.last_logits = logits
        mean_acc = self.mean("val_acc", self.epochs_run)
        if mean_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.best_logits = mean_acc, self.epochs_run, logits

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [[asdict(m) for m in curve] for curve in self.history],
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_logits": self.best_logits,
            "last_logits": self.last_logits,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Progress:
        history = [[EpochMetrics(**m) for m in curve] for curve in state["history"]]
        return cls(
            history, state["best_acc"], state["best_epoch"], state["best_logits"],
            state["last_logits"],
        )  # fmt: skip


class Objective:
    """Callable by `study.optimize`; holds what every trial of this process shares."""

    def __init__(
        self,
        spec: StudySpec,
        pool: ImagePool,
        device: torch.device,
        on_epoch: EpochCallback | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self.spec = spec
        self.pool = pool
        self.device = device
        self.on_epoch = on_epoch
        self.checkpoints = checkpoints
        self.prunes = len(spec.objective.directions) == 1 and spec.pruner.type != "none"
        self._splits: dict[int, Split] = {}

    def split(self, seed: int) -> Split:
        if seed not in self._splits:
            self._splits[seed] = split_for_seed(self.pool, self.spec.data, seed)
        return self._splits[seed]

    def start(self, seed: int, config: TrialConfig) -> SeedRun:
        seed_everything(seed)
        net = build_model(self.spec.model, self.pool.images.shape[1], self.pool.num_classes, seed)
        net.freeze(config.trainable_layers)
        return start_seed_run(
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

    def reported(self, progress: Progress, epoch: int) -> float:
        """The value the pruner sees: mean val accuracy, or mean ECE for an ECE objective."""
        metric = "val_ece" if self.spec.objective.metric == "val_ece" else "val_acc"
        return progress.mean(metric, epoch)

    def resume(self, trial: optuna.Trial, runs: list[SeedRun]) -> Progress | None:
        """Restore a re-queued trial from the newest checkpoint of the trial it replaces."""
        pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
        if self.checkpoints is None or not pointer:
            return None
        # A live Trial does not show its system attrs, where Optuna keeps the retry history.
        running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        (frozen,) = [t for t in running if t.number == trial.number]
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
        if not history:
            return None
        state = self.checkpoints.load(pointer, self.device)
        if state is None:
            return None
        for run, run_state in zip(runs, state["seeds"], strict=True):
            run.load_state_dict(run_state)
        progress = Progress.from_state_dict(state["progress"])
        trial.set_user_attr("resumed_from_trial", history[-1])
        trial.set_user_attr("resumed_from_epoch", progress.epochs_run)
        if self.prunes:
            # Epochs the old trial checkpointed but died before reporting; the rest are
            # carried over by Optuna's retry callback (and re-reporting them is a no-op).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for epoch in range(1, progress.epochs_run + 1):
                    trial.report(self.reported(progress, epoch), epoch)
        return progress

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        spec = self.spec
        config = suggest(trial, spec.space)
        trial.set_user_attr("config", asdict(config))
        trial.set_user_attr("seeds", list(spec.seeds))
        trial.set_user_attr("device", describe_device(self.device))
        started = time.perf_counter()
        runs = [self.start(seed, config) for seed in spec.seeds]
        progress = self.resume(trial, runs) or Progress([[] for _ in runs])
        first_epoch = progress.epochs_run + 1
        patience = spec.train.patience
        for epoch in range(first_epoch, config.epochs + 1):
            if patience is not None and epoch - 1 - progress.best_epoch >= patience:
                break  # (only after a resume: the old trial died before it could stop)
            results, logits = [], []
            for run in runs:
                try:
                    loss = run.train_epoch()
                except NonFiniteLossError as exc:
                    trial.set_user_attr("fail_reason", f"{exc} at epoch {epoch}")
                    if self.checkpoints is not None:
                        self.checkpoints.finish(trial, keep=False)
                    raise NonFiniteLossError(f"{exc} at epoch {epoch}") from None
                result, run_logits = run.evaluate(loss)
                results.append(result)
                logits.append(run_logits)
            progress.add_epoch(results, logits)
            if self.checkpoints is not None:
                state = {"seeds": [r.state_dict() for r in runs], "progress": progress.state_dict()}
                self.checkpoints.save(trial, epoch, state)
            value = self.reported(progress, epoch)
            if self.on_epoch is not None:
                self.on_epoch(trial.number, epoch, config.epochs, value)
            if self.prunes:
                trial.report(value, epoch)
                # After the last epoch the work is done: finish the trial rather than prune it.
                if epoch < config.epochs and trial.should_prune():
                    self._record(trial, progress, started, first_epoch, pruned_at=epoch)
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")
            if patience is not None and epoch - progress.best_epoch >= patience:
                break
        acc, ece = self._record(trial, progress, started, first_epoch, pruned_at=None)
        return {"val_acc": acc, "val_ece": ece, "val_acc+val_ece": (acc, ece)}[
            spec.objective.metric
        ]

    def _record(
        self,
        trial: optuna.Trial,
        progress: Progress,
        started: float,
        first_epoch: int,
        pruned_at: int | None,
    ) -> tuple[float, float]:
        """Write the trial's user attrs; return mean val acc and ECE at the chosen epoch."""
        history = progress.history
        epochs_run = progress.epochs_run
        final = self.spec.objective.select_epoch == "final"
        chosen = epochs_run if final else progress.best_epoch
        logits = progress.last_logits if final else progress.best_logits
        at_chosen = [curve[chosen - 1] for curve in history]
        labels = [self.split(seed).val_labels for seed in self.spec.seeds]
        temperatures = [
            metrics.fit_temperature(lg, lb) for lg, lb in zip(logits, labels, strict=True)
        ]
        scaled_ece = [
            metrics.ece(lg / t, lb) for lg, lb, t in zip(logits, labels, temperatures, strict=True)
        ]
        acc = _mean([m.val_acc for m in at_chosen])
        ece = _mean([m.val_ece for m in at_chosen])
        attrs = {
            "val_acc": acc,
            "val_ece": ece,
            "val_nll": _mean([m.val_loss for m in at_chosen]),
            "val_acc_per_seed": [m.val_acc for m in at_chosen],
            "val_ece_per_seed": [m.val_ece for m in at_chosen],
            "val_nll_per_seed": [m.val_loss for m in at_chosen],
            "temperature_per_seed": temperatures,
            "val_ece_temperature_scaled_per_seed": scaled_ece,
            "best_epoch": progress.best_epoch,
            "chosen_epoch": chosen,
            "epochs_run": epochs_run,
            "epochs_trained": epochs_run - first_epoch + 1,
            "pruned_at_epoch": pruned_at,
            "train_seconds": time.perf_counter() - started,
            "curve_train_loss": [[m.train_loss for m in c] for c in history],
            "curve_val_loss": [[m.val_loss for m in c] for c in history],
            "curve_val_acc": [[m.val_acc for m in c] for c in history],
            "curve_val_ece": [[m.val_ece for m in c] for c in history],
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if self.checkpoints is not None:
            self.checkpoints.finish(trial)
        return acc, ece
