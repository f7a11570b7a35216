"""`lsearch bench --seeds S`: seed-epochs per second with a trial's seeds trained together
(`training.together.SeedGroup`) and one at a time, measured in one process, alternating.

A seed-epoch is what a trial does for one seed in one epoch: train it, then evaluate it on
its validation images. Both ways train the study's baseline configuration on seeds 0 to
S - 1, built as a trial builds them; each timing starts from fresh seed-runs after one
warm-up epoch, and the two ways alternate over `rounds` rounds (the other way first in
every other round), so that a machine that slows down or speeds up meanwhile weighs on both.
The median round of each way is reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from lsearch.bench.workload import sync, trial_runs
from lsearch.errors import UserError
from lsearch.spec import StudySpec
from lsearch.training.data import ImagePool
from lsearch.training.devices import describe_device
from lsearch.training.features import FeatureCache
from lsearch.training.seed_run import SeedRun
from lsearch.training.together import SeedGroup, frozen_prefix

ROUNDS = 3


@dataclass(frozen=True)
class SeedsSpeed:
    """Seed-epochs per second both ways, each the median of `rounds` timings."""

    study: str
    device: str
    seeds: int
    epochs: int
    rounds: int
    seed_epochs_per_s: float  # together
    seed_epochs_per_s_one_at_a_time: float
    frozen_prefix: str  # "shared" (run once for all seeds), "per seed" or "none"
    # Each round's ratio (one at a time's seconds over together's, the two timed back to
    # back): their spread is the machine's noise, which a median alone would hide.
    round_ratios: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """How many times the seed-epochs per second of one at a time together trains."""
        return self.seed_epochs_per_s / self.seed_epochs_per_s_one_at_a_time

    def title(self) -> str:
        return f"{self.study}, {self.seeds} seeds, {self.device}"

    def rows(self) -> list[list[str]]:
        """Seed-epochs per second, and the seconds one takes, each way."""
        both = (("together", self.seed_epochs_per_s),
                ("one at a time", self.seed_epochs_per_s_one_at_a_time))  # fmt: skip
        return [[label, f"{rate:,.1f}", f"{1000 / rate:,.1f}"] for label, rate in both]

    def conclusion(self) -> str:
        """The ratio, the rounds' spread, and a hint where the rounds disagree on the winner."""
        text = (
            f"together trains {self.ratio:.2f}x the seed-epochs per second of one at a time "
            f"(median of {self.rounds} alternating rounds of {self.epochs} epochs each way"
        )
        if len(self.round_ratios) < 2:
            return text + ")"
        low, high = min(self.round_ratios), max(self.round_ratios)
        text += f"; rounds from {low:.2f}x to {high:.2f}x)"
        if low < 1 < high:
            text += (
                "; the rounds disagree on which way is faster: this machine's noise is larger "
                "than the difference, time more --epochs"
            )
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "device": self.device,
            "seeds": self.seeds,
            "epochs": self.epochs,
            "rounds": self.rounds,
            "seed_epochs_per_s": self.seed_epochs_per_s,
            "seed_epochs_per_s_one_at_a_time": self.seed_epochs_per_s_one_at_a_time,
            "together_over_one_at_a_time": self.ratio,
            "together_over_one_at_a_time_per_round": list(self.round_ratios),
            "frozen_prefix": self.frozen_prefix,
            "basis": "a seed-epoch trains one seed an epoch and evaluates it; the median of "
            f"{self.rounds} alternating rounds of {self.epochs} epochs each way, after a warm-up",
        }


def _fresh_runs(
    spec: StudySpec, pool: ImagePool, device: torch.device, seeds: int
) -> list[SeedRun]:
    """Seed-runs 0 .. seeds - 1 of the baseline configuration, as a trial starts them."""
    return trial_runs(spec, pool, device, range(seeds), FeatureCache.for_device(device))


def _seconds(runs: list[SeedRun], together: bool, epochs: int, device: torch.device) -> float:
    """Seconds for `epochs` epochs of every seed (train, then evaluate), after a warm-up."""
    group = SeedGroup(runs) if together else None

    def epoch() -> None:
        losses = group.train_epoch() if group else [run.train_epoch() for run in runs]
        for run, loss in zip(runs, losses, strict=True):
            run.evaluate(loss)

    epoch()  # warm-up: allocator, cuDNN autotuning, the feature cache's first fill
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    sync(device)
    return time.perf_counter() - start


def measure_seeds_together(
    spec: StudySpec, pool: ImagePool, device: torch.device, seeds: int, epochs: int,
    rounds: int = ROUNDS,
) -> SeedsSpeed:  # fmt: skip
    """Time `seeds` seeds of the baseline configuration together and one at a time.

    >>> from lsearch.spec import StudySpec
    >>> from lsearch.training.data import load_pool
    >>> spec = StudySpec.model_validate({"name": "s", "model": {"width": 8},
    ...     "data": {"train_per_class": 4, "val_per_class": 2}})
    >>> cpu = torch.device("cpu")
    >>> speed = measure_seeds_together(spec, load_pool(spec.data, cpu), cpu, 2, 1, rounds=1)
    >>> speed.seeds, speed.ratio > 0
    (2, True)
    """
    if seeds < 2:
        raise UserError(f"--seeds must be at least 2 to train seeds together (got {seeds})")
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(rounds):
        for together in (True, False) if round_ % 2 else (False, True):
            runs = _fresh_runs(spec, pool, device, seeds)
            times[together].append(_seconds(runs, together, epochs, device))
    seed_epochs = seeds * epochs
    return SeedsSpeed(
        study=spec.name,
        device=describe_device(device),
        seeds=seeds,
        epochs=epochs,
        rounds=rounds,
        seed_epochs_per_s=seed_epochs / statistics.median(times[True]),
        seed_epochs_per_s_one_at_a_time=seed_epochs / statistics.median(times[False]),
        frozen_prefix=frozen_prefix([run.net for run in _fresh_runs(spec, pool, device, seeds)]),
        round_ratios=tuple(
            alone / together for alone, together in zip(times[False], times[True], strict=True)
        ),
    )
