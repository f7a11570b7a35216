"""The Optuna objective: suggest a configuration, train it on every seed in lockstep,
report the mean over seeds after each epoch, prune, stop on patience, record the results.

User attributes written on every finished or pruned trial (stable names, see README):
`config`, `seeds`, `val_acc`, `val_ece`, `val_nll`, `val_acc_per_seed`, `val_ece_per_seed`,
`val_nll_per_seed`, `temperature_per_seed`, `val_ece_temperature_scaled_per_seed`,
`best_epoch`, `chosen_epoch`, `epochs_run`, `pruned_at_epoch`, `train_seconds`, `device`,
and the curves `curve_train_loss`, `curve_val_loss`, `curve_val_acc`, `curve_val_ece`
(one list per seed, one value per epoch). A trial whose loss became NaN gets `fail_reason`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import optuna
import torch

from lsearch import metrics
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


class Objective:
    """Callable by `study.optimize`; holds what every trial of this process shares."""

    def __init__(
        self,
        spec: StudySpec,
        pool: ImagePool,
        device: torch.device,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        self.spec = spec
        self.pool = pool
        self.device = device
        self.on_epoch = on_epoch
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

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        spec = self.spec
        config = suggest(trial, spec.space)
        trial.set_user_attr("config", asdict(config))
        trial.set_user_attr("seeds", list(spec.seeds))
        trial.set_user_attr("device", describe_device(self.device))
        started = time.perf_counter()
        runs = [self.start(seed, config) for seed in spec.seeds]
        history: list[list[EpochMetrics]] = [[] for _ in runs]
        best_acc, best_epoch = -1.0, 0
        best_logits: list[torch.Tensor] = []
        last_logits: list[torch.Tensor] = []
        patience = spec.train.patience
        for epoch in range(1, config.epochs + 1):
            last_logits = []
            for run, curve in zip(runs, history, strict=True):
                try:
                    loss = run.train_epoch()
                except NonFiniteLossError as exc:
                    trial.set_user_attr("fail_reason", f"{exc} at epoch {epoch}")
                    raise NonFiniteLossError(f"{exc} at epoch {epoch}") from None
                result, logits = run.evaluate(loss)
                curve.append(result)
                last_logits.append(logits)
            mean_acc = _mean([curve[-1].val_acc for curve in history])
            if mean_acc > best_acc:
                best_acc, best_epoch, best_logits = mean_acc, epoch, last_logits
            reported = (
                _mean([curve[-1].val_ece for curve in history])
                if spec.objective.metric == "val_ece"
                else mean_acc
            )
            if self.on_epoch is not None:
                self.on_epoch(trial.number, epoch, config.epochs, reported)
            if self.prunes:
                trial.report(reported, epoch)
                # After the last epoch the work is done: finish the trial rather than prune it.
                if epoch < config.epochs and trial.should_prune():
                    self._record(
                        trial, history, best_epoch, best_logits, last_logits, started, epoch
                    )
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")
            if patience is not None and epoch - best_epoch >= patience:
                break
        acc, ece = self._record(trial, history, best_epoch, best_logits, last_logits, started, None)
        return {"val_acc": acc, "val_ece": ece, "val_acc+val_ece": (acc, ece)}[
            spec.objective.metric
        ]

    def _record(
        self,
        trial: optuna.Trial,
        history: list[list[EpochMetrics]],
        best_epoch: int,
        best_logits: list[torch.Tensor],
        last_logits: list[torch.Tensor],
        started: float,
        pruned_at: int | None,
    ) -> tuple[float, float]:
        """Write the trial's user attrs; return mean val acc and ECE at the chosen epoch."""
        epochs_run = len(history[0])
        final = self.spec.objective.select_epoch == "final"
        chosen = epochs_run if final else best_epoch
        logits = last_logits if final else best_logits
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
            "best_epoch": best_epoch,
            "chosen_epoch": chosen,
            "epochs_run": epochs_run,
            "pruned_at_epoch": pruned_at,
            "train_seconds": time.perf_counter() - started,
            "curve_train_loss": [[m.train_loss for m in c] for c in history],
            "curve_val_loss": [[m.val_loss for m in c] for c in history],
            "curve_val_acc": [[m.val_acc for m in c] for c in history],
            "curve_val_ece": [[m.val_ece for m in c] for c in history],
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return acc, ece
