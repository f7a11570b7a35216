"""Where a running trial stands: per-seed curves, the best epoch so far by mean validation
accuracy, what the pruner sees after each epoch, and the held-out results computed at
intermediate epoch counts; saved into and restored from a checkpoint (`state_dict`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from lsearch.spec import Objective as ObjectiveSpec
from lsearch.store.catalog import curve_attr
from lsearch.training.seed_run import EpochMetrics


def mean_of(values: list[float]) -> float:
    """The mean over seeds."""
    return statistics.fmean(values)


@dataclass
class TrialProgress:
    """Where a trial stands: per-seed curves, the best epoch so far (1-based) by mean
    validation accuracy with its logits (and, when the test set will be evaluated, its
    weights), and the held-out results already computed at intermediate epoch counts."""

    history: list[list[EpochMetrics]]
    best_acc: float = -1.0
    best_epoch: int = 0
    best_logits: list[torch.Tensor] = field(default_factory=list)
    last_logits: list[torch.Tensor] = field(default_factory=list)
    best_weights: list[dict[str, torch.Tensor]] = field(default_factory=list)
    held_out: dict[int, dict[str, Any]] = field(default_factory=dict)  # epochs -> results

    @property
    def epochs_run(self) -> int:
        return len(self.history[0])

    def mean(self, metric: str, epoch: int) -> float:
        return mean_of([getattr(curve[epoch - 1], metric) for curve in self.history])

    def best_epoch_up_to(self, epoch: int) -> int:
        """The first epoch of highest mean validation accuracy among epochs 1..`epoch`."""
        means = [self.mean("val_acc", e) for e in range(1, epoch + 1)]
        return means.index(max(means)) + 1

    def chosen_epoch(self, objective: ObjectiveSpec, epoch: int) -> int:
        """The epoch whose metrics stand for a trial that has run `epoch` epochs: the best by
        mean validation accuracy so far (for every objective, ECE included: the lowest-ECE
        epoch is often an underfit one), or the last with `select_epoch = "final"`."""
        if objective.select_epoch == "final":
            return epoch
        return self.best_epoch_up_to(epoch)

    def reported(self, objective: ObjectiveSpec, epoch: int) -> float:
        """The value the pruner sees after `epoch`: the objective metric's mean over seeds at
        the chosen epoch so far, so a pruned trial's value (its last report) is its attrs'."""
        metric = "val_ece" if objective.metric == "val_ece" else "val_acc"
        return self.mean(metric, self.chosen_epoch(objective, epoch))

    @classmethod
    def from_curves(cls, attrs: dict[str, Any]) -> TrialProgress:
        """The curves a finished trial recorded (`curve_*` attrs), as a TrialProgress."""
        names = [metric.name for metric in fields(EpochMetrics)]
        history = []
        for seed in zip(*(attrs[curve_attr(name)] for name in names), strict=True):
            epochs = zip(*seed, strict=True)  # one value of each metric per epoch
            history.append([EpochMetrics(**dict(zip(names, e, strict=True))) for e in epochs])
        return cls(history)

    def add_epoch(
        self,
        results: list[EpochMetrics],
        logits: list[torch.Tensor],
        weights: Callable[[], list[dict[str, torch.Tensor]]] | None = None,
    ) -> None:
        """Append an epoch; `weights` (called only on a new best) copies the models' weights."""
        for curve, result in zip(self.history, results, strict=True):
            curve.append(result)
        self.last_logits = logits
        mean_acc = self.mean("val_acc", self.epochs_run)
        if mean_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.best_logits = mean_acc, self.epochs_run, logits
            if weights is not None:
                self.best_weights = weights()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on from here, for a checkpoint (tensors kept as they are)."""
        return {
            "history": [[asdict(m) for m in curve] for curve in self.history],
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_logits": self.best_logits,
            "last_logits": self.last_logits,
            "best_weights": self.best_weights,
            "held_out": {str(k): v for k, v in self.held_out.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrialProgress:
        """The progress a checkpoint saved with `state_dict`."""
        history = [[EpochMetrics(**m) for m in curve] for curve in state["history"]]
        return cls(
            history, state["best_acc"], state["best_epoch"], state["best_logits"],
            state["last_logits"], state.get("best_weights", []),
            {int(k): v for k, v in state.get("held_out", {}).items()},
        )  # fmt: skip
