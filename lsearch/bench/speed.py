"""`lsearch bench`: how fast a study's trials train here, and how much faster than the
usual way.

It trains one seed of the study's baseline configuration for a few epochs, exactly as a
trial does (`seed_run.SeedRun`: uint8 images on the device, index batches, batched
augmentation, cached validation features of the frozen prefix), and times training and
evaluation separately, after one warm-up epoch (`bench.timing`). That run's peak memory is
one seed's. It then measures what a whole trial holds (`bench.memory.TrialMemory`), and with
`--baseline` trains the same configuration the way a typical fine-tuning script does
(`bench.baseline`). `--search` compares whole searches with and without the pruner
(`bench.search_runs`).

Nothing here touches a storage: Optuna and SQLAlchemy are not imported, so the command runs
on a bare GPU box with only torch, torchvision and lsearch's small dependencies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lsearch.bench.baseline import (
    measure_baseline,
)
from lsearch.bench.memory import TrialMemory, measure_trial_memory
from lsearch.bench.timing import Speed, speed_of, timed_epochs
from lsearch.bench.workload import bench_data, trial_model
from lsearch.errors import UserError
from lsearch.spec import StudySpec
from lsearch.training.data import ImagePool, Split, split_for_seed
from lsearch.training.devices import describe_device
from lsearch.training.features import FeatureCache
from lsearch.training.seed_run import SeedRun, start_seed_run

SEARCH_TRIALS = 100


@dataclass
class BenchResult:
    """What `lsearch bench` measured: one seed's speed as a trial trains it, a whole trial's
    memory, and with `--baseline` the usual way's speed."""

    device: str
    study: str
    model: str
    image_size: int
    trainable_layers: int
    epochs: int
    train_images: int
    eval_images: int
    lsearch: Speed
    baseline: Speed | None = None
    trial_memory: TrialMemory | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        """lsearch's training images per second over the baseline's."""
        if self.baseline is None:
            return None
        return self.lsearch.train_images_per_s / self.baseline.train_images_per_s

    def search_estimate_s(self, seeds: int, mean_epochs: float) -> float:
        """A `--trials 100` search at this speed with no trial pruned (an upper bound)."""
        return SEARCH_TRIALS * seeds * mean_epochs * self.lsearch.seconds_per_epoch

    def to_json(self, seeds: int, mean_epochs: float) -> dict[str, Any]:
        """What `lsearch bench --json` prints (`seeds`, `mean_epochs` size the estimate)."""
        out: dict[str, Any] = {
            **asdict(self.lsearch),
            "device": self.device,
            "study": self.study,
            "model": self.model,
            "image_size": self.image_size,
            "trainable_layers": self.trainable_layers,
            "epochs": self.epochs,
            "train_images": self.train_images,
            "eval_images": self.eval_images,
            "search_100_trials_s": self.search_estimate_s(seeds, mean_epochs),
            "notes": self.notes,
        }
        if self.trial_memory is not None:
            out["trial_memory"] = self.trial_memory.to_json()
            out["feature_cache"] = {
                **self.trial_memory.feature_cache,
                "basis": f"the feature cache of the trial_memory run ({self.trial_memory.seeds} "
                "seeds): a seed misses on its first evaluation, hits on later ones",
            }
        if self.baseline is not None:
            out["baseline"] = asdict(self.baseline)
            out["speedup_train"] = self.speedup
        return out


def measure_lsearch(
    spec: StudySpec, pool: ImagePool, device: torch.device, epochs: int
) -> tuple[Split, Speed]:
    """One seed of the baseline configuration, trained as a trial trains it."""
    base = spec.baseline
    split = split_for_seed(pool, spec.data, 0)
    run: SeedRun = start_seed_run(
        0, trial_model(spec, pool, base.trainable_layers), split, pool, spec.data, spec.train,
        base.label_smoothing, base.lr, epochs + 1, device,
    )  # fmt: skip
    # The cache a trial's seed run gets (its budget on CUDA depends on the free memory).
    run.features, run.features_key = FeatureCache.for_device(device), (0, base.trainable_layers)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed_epochs(epochs, device, run.train_epoch, run.evaluate)
    return split, speed_of(split, epochs, seconds, device)


def measure_speed(
    spec: StudySpec, device: torch.device, epochs: int, synthetic: bool, baseline: bool
) -> BenchResult:
    """Time one seed as a trial trains it, measure a whole trial's memory, and with
    `baseline` time the usual way too (see the module's docstring)."""
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1 (got {epochs})")
    spec, pool, notes = bench_data(spec, device, synthetic)
    split, speed = measure_lsearch(spec, pool, device, epochs)
    result = BenchResult(
        device=describe_device(device),
        study=spec.name,
        model=spec.model.name,
        image_size=spec.data.image_size or int(pool.images.shape[-1]),
        trainable_layers=spec.baseline.trainable_layers,
        epochs=epochs,
        train_images=int(split.train_labels.shape[0]),
        eval_images=int(split.val_labels.shape[0]),
        lsearch=speed,
        trial_memory=measure_trial_memory(spec, pool, device),
        notes=notes,
    )
    if baseline:
        result.baseline = measure_baseline(spec, pool, split, device, epochs)
    return result


def mean_epochs(spec: StudySpec) -> float:
    """The mean of the study's epochs range: what an average trial trains."""
    low, high = spec.space.epochs.bounds()
    return (low + high) / 2
