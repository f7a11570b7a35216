"""Live progress of a search or a comparison on a terminal (silent otherwise). The closing
table of a search is `lsearch.api.results.top_trials`."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Self

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lsearch.store.catalog import CONFIG_ATTR, FAIL_REASON_ATTR, FINISHED


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class _LiveBar:
    """A rich progress bar on a terminal (disabled elsewhere): what is done of a total, the
    work in flight, and the elapsed time; a context manager that starts and stops it."""

    def __init__(self, console: Console, label: str, total: int, done: int, *extra: str) -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[now]}"),
            *(TextColumn(column) for column in extra),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task(label, total=total, completed=done, now="", best="-")

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()


class SearchProgress(_LiveBar):
    """Trials done of N, the trial and epoch in flight, and the best value so far."""

    def __init__(self, console: Console, total: int, done: int, metric: str) -> None:
        super().__init__(console, "trials", total, done, "best {task.fields[best]}")
        self.metric = metric

    def on_epoch(self, trial_number: int, epoch: int, epochs: int, value: float) -> None:
        now = f"trial {trial_number} epoch {epoch}/{epochs} {self.metric} {value:.4f}"
        self.progress.update(self.task, now=now)

    def poll(self, study: optuna.Study) -> None:
        """Show the state of the whole study (used while other processes run the trials)."""
        trials = study.get_trials(deepcopy=False)
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        now = f"running trials {', '.join(map(str, running[:8]))}" if running else ""
        finished = sum(t.state in FINISHED for t in trials)
        self.progress.update(self.task, completed=finished, best=self._best(study), now=now)

    @staticmethod
    def _best(study: optuna.Study) -> str:
        if len(study.directions) == 1:
            with contextlib.suppress(ValueError):  # no complete trial yet
                return _format(study.best_value)
        return "-"

    def on_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get(FAIL_REASON_ATTR) or trial.system_attrs.get(
                FAIL_REASON_ATTR, "see the worker's log"
            )
            self.progress.console.print(f"trial {trial.number} failed: {reason}", highlight=False)
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        self.progress.update(self.task, completed=finished, best=self._best(study), now="")


class SeedRunProgress(_LiveBar):
    """Seed-runs of a comparison trained of those planned, and the one in flight."""

    def __init__(self, console: Console, total: int) -> None:
        super().__init__(console, "seed-runs", total, 0)

    def on_epoch(self, trial_number: int, epoch: int, epochs: int, value: float) -> None:
        now = f"trial {trial_number} epoch {epoch}/{epochs} val acc {value:.4f}"
        self.progress.update(self.task, now=now)

    def on_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = trial.user_attrs.get(FAIL_REASON_ATTR)
        # A seed-run that failed for a reason (a NaN loss) is settled: it is not retried.
        settled = trial.state == TrialState.FAIL and reason and CONFIG_ATTR in trial.user_attrs
        if settled:
            self.progress.console.print(f"trial {trial.number} failed: {reason}", highlight=False)
        if trial.state == TrialState.COMPLETE or settled:
            self.progress.advance(self.task)
        self.progress.update(self.task, now="")

    def poll(self, study: optuna.Study) -> None:
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        now = f"waiting for trials {', '.join(map(str, running[:8]))}" if running else ""
        self.progress.update(self.task, now=now)
