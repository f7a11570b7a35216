"""`lsearch bench`: how fast a study's trials train here, and how much faster than the
usual way.

It trains one seed of the study's baseline configuration for a few epochs, exactly as a
trial does (`train.SeedRun`: uint8 images on the device, index batches, batched
augmentation, cached validation features of the frozen prefix), and times training and
evaluation separately, after one warm-up epoch. That run's peak memory is one seed's.

It then measures what a whole trial holds (`TrialMemory`): one seed run per seed of the
study's `seeds`, sharing one feature cache, trained and evaluated in lockstep as a trial
does. On CUDA: the peak memory torch allocated, the peak its caching allocator reserved, and
the device's used memory (the CUDA context and any other process included); on the CPU: the
process's peak resident memory. Workers are sized by `TrialMemory.per_worker_mb`.

`--baseline` then trains the same configuration the way a typical fine-tuning script does, in
the same process, on the same data: a torch `Dataset` with per-sample torchvision transforms
(resized one image at a time on the CPU), a `DataLoader`, the whole model in train mode with
frozen layers only left out of the optimizer, evaluation every epoch. On CUDA it is the script
a user would write for a GPU (`baseline_loader_options`, `baseline_precision`): loader worker
processes kept across epochs, pinned memory, and autocast in the dtype lsearch trains in (with
a gradient scaler for float16). On the CPU it loads in the main process and trains in float32,
as lsearch does there: loader workers would compete with training for the same cores.

Nothing here touches a storage: Optuna and SQLAlchemy are not imported, so the command runs
on a bare GPU box with only torch, torchvision and lsearch's small dependencies.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lsearch.errors import UserError
from lsearch.spec import StudySpec
from lsearch.training.data import (
    ImagePool,
    Split,
    TestSet,
    load_pool,
    load_test_set,
    split_for_seed,
)
from lsearch.training.devices import (
    Precision,
    autocast_precision,
    describe_device,
    requested_precision,
)
from lsearch.training.models import LayeredModel, build_model
from lsearch.training.seed_run import (
    FeatureCache,
    SeedRun,
    make_optimizer,
    seed_everything,
    snapshot,
    start_seed_run,
)

# Shapes of the datasets lsearch knows: channels, side, classes.
SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10)}
SEARCH_TRIALS = 100
# A search's metric and the held-out metric its best configuration is judged by.
TEST_METRIC = {"val_acc": "test_acc", "val_ece": "test_ece"}
MB = 2**20
# The usual script's DataLoader workers on a GPU box: as many as it may use, at most 8.
BASELINE_MAX_WORKERS = 8


@dataclass
class Speed:
    """What one way of training one seed measured. `peak_memory_mb` is that seed's alone on
    CUDA (torch's peak allocated memory); a whole trial's is `TrialMemory`'s."""

    train_images_per_s: float
    eval_images_per_s: float
    seconds_per_epoch: float
    peak_memory_mb: float
    peak_memory_basis: str = ""  # what `peak_memory_mb` counts


@dataclass
class TrialMemory:
    """What a whole trial of the baseline configuration holds: every seed of the study's
    `seeds`, with the feature cache they share. `per_worker_mb` is the figure to size
    workers by (per GPU on CUDA, per machine on the CPU); `basis` says what each figure
    counts. The CUDA figures are None on the CPU."""

    seeds: int
    per_worker_mb: float
    peak_allocated_mb: float | None
    peak_reserved_mb: float | None
    device_used_mb: float | None
    process_peak_rss_mb: float
    feature_cache_mb: float
    feature_cache: dict[str, Any]  # FeatureCache.stats() of the trial's cache
    basis: dict[str, str]  # field name -> what it counts

    def to_json(self) -> dict[str, Any]:
        """The figures and their basis (the cache's stats go apart, see BenchResult)."""
        out = asdict(self)
        del out["feature_cache"]
        return out


@dataclass
class BenchResult:
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


def synthetic_pool(spec: StudySpec, device: torch.device) -> ImagePool:
    """Random uint8 images and balanced labels of the study's shape and counts."""
    channels, side, classes = SHAPES[spec.data.dataset]
    per_class = spec.data.train_per_class + spec.data.val_per_class
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (per_class * classes, channels, side, side), np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    return ImagePool(
        images=torch.from_numpy(images).to(device),
        labels=torch.from_numpy(labels).to(device),
        num_classes=classes,
        mean=(0.5,) * channels,
        std=(0.29,) * channels,
    )


def bench_data(
    spec: StudySpec, device: torch.device, synthetic: bool
) -> tuple[StudySpec, ImagePool, list[str]]:
    """The pool to train on and the spec to build the model from, with notes on what was
    substituted (random data; random weights where the study's cannot be had offline)."""
    notes = []
    if synthetic:
        pool = synthetic_pool(spec, device)
        notes.append(f"synthetic data: random images of {spec.data.dataset}'s shape")
        if spec.model.weights != "none":
            try:
                build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
            except UserError:
                spec = spec.model_copy(
                    update={"model": spec.model.model_copy(update={"weights": "none"})}
                )
                notes.append(
                    "randomly initialised weights: the study's weights cannot be had here "
                    "(the speed is the same)"
                )
    else:
        pool = load_pool(spec.data, device)
    return spec, pool, notes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    """The process's peak resident memory since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_memory(device: torch.device) -> tuple[float, str]:
    """One seed's peak memory, and what it counts."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB, (
            f"one seed's peak memory allocated by torch on {device} "
            "(torch.cuda.max_memory_allocated): without the allocator's reserve, the CUDA "
            "context, the other seeds; see trial_memory"
        )
    return _peak_rss_mb(), "the process's peak resident memory so far (getrusage)"


def read_trial_memory(device: torch.device, seeds: int, cache: FeatureCache) -> TrialMemory:
    """Read a trial's memory after it trained (peak statistics reset before it started)."""
    stats = cache.stats()
    rss = _peak_rss_mb()
    basis = {
        "seeds": "seed runs trained in lockstep with one shared feature cache, as a trial",
        "feature_cache_mb": "the frozen prefix's validation features the seeds cached, on the "
        "device (part of the memory figures, not added to them)",
        "process_peak_rss_mb": "the process's peak resident host memory since it started "
        "(getrusage; bench's one-seed run included)",
    }
    if device.type != "cuda":
        basis["per_worker_mb"] = (
            "process_peak_rss_mb: size workers per machine by it (each is a process like this)"
        )
        return TrialMemory(
            seeds=seeds, per_worker_mb=rss, peak_allocated_mb=None, peak_reserved_mb=None,
            device_used_mb=None, process_peak_rss_mb=rss, feature_cache_mb=stats["bytes"] / MB,
            feature_cache=stats, basis=basis,
        )  # fmt: skip
    allocated = torch.cuda.max_memory_allocated(device) / MB
    reserved = torch.cuda.max_memory_reserved(device) / MB
    free, total = torch.cuda.mem_get_info(device)
    used = (total - free) / MB
    # What the device holds beyond torch's reserve now: the CUDA context (and other
    # processes'). Added to the peak reserve, in case the reserve was larger at its peak.
    beyond = max(0.0, used - torch.cuda.memory_reserved(device) / MB)
    basis.update(
        per_worker_mb="peak_reserved_mb plus the CUDA context (device_used_mb less what torch "
        "reserves now): size workers per GPU by it; an overstatement by other processes' "
        "memory if any shared the GPU",
        peak_allocated_mb="torch's peak allocated memory (torch.cuda.max_memory_allocated): "
        "tensors only",
        peak_reserved_mb="the caching allocator's peak reserve (torch.cuda.max_memory_reserved): "
        "what torch held from the device, allocated or cached",
        device_used_mb="the device's used memory after the trial (total less free, "
        "torch.cuda.mem_get_info): includes the CUDA context and other processes' memory",
    )
    return TrialMemory(
        seeds=seeds, per_worker_mb=reserved + beyond, peak_allocated_mb=allocated,
        peak_reserved_mb=reserved, device_used_mb=used, process_peak_rss_mb=rss,
        feature_cache_mb=stats["bytes"] / MB, feature_cache=stats, basis=basis,
    )  # fmt: skip


def _timed_epochs(
    epochs: int, device: torch.device, train: Callable[[], Any], evaluate: Callable[[Any], Any]
) -> tuple[float, float]:
    """Seconds of training and of evaluation over `epochs` epochs after one warm-up epoch."""
    evaluate(train())  # warm-up: allocator, cuDNN autotuning, lazy initialisation
    train_s = eval_s = 0.0
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        loss = train()
        _sync(device)
        middle = time.perf_counter()
        evaluate(loss)
        _sync(device)
        train_s += middle - start
        eval_s += time.perf_counter() - middle
    return train_s, eval_s


def _speed(split: Split, epochs: int, seconds: tuple[float, float], device: torch.device) -> Speed:
    train_s, eval_s = seconds
    train_images = split.train_labels.shape[0] * epochs
    eval_images = split.val_labels.shape[0] * epochs
    peak, basis = _peak_memory(device)
    return Speed(
        train_images_per_s=train_images / train_s,
        eval_images_per_s=eval_images / eval_s,
        seconds_per_epoch=(train_s + eval_s) / epochs,
        peak_memory_mb=peak,
        peak_memory_basis=basis,
    )


def _net(spec: StudySpec, pool: ImagePool, trainable_layers: int, seed: int = 0) -> LayeredModel:
    """The model as a trial builds it for `seed` (objective.SearchObjective.start)."""
    seed_everything(seed)
    net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=seed)
    net.freeze(trainable_layers)
    return net


def measure_lsearch(
    spec: StudySpec, pool: ImagePool, device: torch.device, epochs: int
) -> tuple[Split, Speed]:
    """One seed of the baseline configuration, trained as a trial trains it."""
    base = spec.baseline
    split = split_for_seed(pool, spec.data, 0)
    run: SeedRun = start_seed_run(
        0, _net(spec, pool, base.trainable_layers), split, pool, spec.data, spec.train,
        base.label_smoothing, base.lr, epochs + 1, device,
    )  # fmt: skip
    # The cache a trial's seed run gets (its budget on CUDA depends on the free memory).
    run.features, run.features_key = FeatureCache.for_device(device), (0, base.trainable_layers)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed_epochs(epochs, device, run.train_epoch, run.evaluate)
    return split, _speed(split, epochs, seconds, device)


def measure_trial_memory(spec: StudySpec, pool: ImagePool, device: torch.device) -> TrialMemory:
    """What a trial of the baseline configuration holds: one seed run per seed of
    `spec.seeds`, built as `SearchObjective.start` builds them and sharing one feature cache keyed
    (seed, trainable_layers), trained and evaluated for one epoch in lockstep; then the first
    seed trains and evaluates again, because a trial's later epochs train with every seed's
    features cached (in the first, the last seed trains before its own are), with the checkpoint
    snapshots of two epochs held as a trial holds them while a write is in flight."""
    base = spec.baseline
    if device.type == "cuda":
        # The one-seed run's leftovers go back to the device, so the reserve read is the
        # trial's; the peaks then start from what stays (the pool).
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cache = FeatureCache.for_device(device)  # a worker's, made before its first trial
    cache.new_trial()
    runs = []
    for seed in spec.seeds:
        run = start_seed_run(
            seed, _net(spec, pool, base.trainable_layers, seed),
            split_for_seed(pool, spec.data, seed), pool, spec.data, spec.train,
            base.label_smoothing, base.lr, base.epochs, device,
        )  # fmt: skip
        run.features, run.features_key = cache, (seed, base.trainable_layers)
        runs.append(run)
    # A trial also keeps its last finished epoch's state on the device for checkpoints, and
    # a second while a write is in flight: both are held here as the trial would hold them.
    snapshots = []
    for index, run in enumerate([*runs, runs[0]]):
        run.evaluate(run.train_epoch())
        if index >= len(runs) - 1:
            snapshots.append(snapshot([r.state_dict() for r in runs]))
    _sync(device)
    return read_trial_memory(device, len(runs), cache)


def baseline_loader_options(device: torch.device) -> dict[str, Any]:
    """The usual script's DataLoader options on `device`. On CUDA: worker processes for the
    per-image transforms (as many as this process may run on, at most 8), kept across epochs
    so that their start-up is not timed every epoch, and pinned memory for the copies to the
    GPU. On the CPU: none, since workers would take the cores training runs on."""
    if device.type != "cuda":
        return {"num_workers": 0, "pin_memory": False}
    return {
        "num_workers": min(BASELINE_MAX_WORKERS, len(os.sched_getaffinity(0))),
        "persistent_workers": True,
        "pin_memory": True,
    }


def baseline_precision(
    spec: StudySpec, device: torch.device
) -> tuple[Precision, torch.amp.GradScaler | None]:
    """The usual script's autocast on `device`: the dtype lsearch trains in there (float32
    on the CPU), with a gradient scaler where that is float16."""
    precision = autocast_precision(device, requested_precision(spec.train.precision))
    scaler = torch.amp.GradScaler("cuda") if precision.scales_gradients else None
    return precision, scaler


class _Expand:
    """Repeat a one-channel image to the model's channels (a class, not a lambda: loader
    workers started by spawn or forkserver get the transforms by pickle)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.channels, -1, -1)


class _Images(Dataset):
    """Images kept on the CPU, transformed one at a time: the usual Dataset."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        self.images, self.labels, self.transform = images.cpu(), labels.cpu(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def baseline_datasets(
    spec: StudySpec, pool: ImagePool, split: Split, channels: int
) -> tuple[Dataset, Dataset]:
    """The usual script's training and validation Datasets: per-image torchvision
    transforms (augmentation, float conversion, resize, normalisation)."""
    from torchvision.transforms import v2

    data = spec.data
    size = data.image_size or pool.images.shape[-1]
    steps: list[Any] = []
    if data.augment.crop_padding:
        steps.append(v2.RandomCrop(pool.images.shape[-1], padding=data.augment.crop_padding))
    if data.augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    tail: list[Any] = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize((size, size), antialias=False),
        v2.Normalize(list(pool.mean), list(pool.std)),
    ]
    if pool.images.shape[1] != channels:
        tail.append(_Expand(channels))
    return (
        _Images(split.train_images, split.train_labels, v2.Compose(steps + tail)),
        _Images(split.val_images, split.val_labels, v2.Compose(tail)),
    )


def measure_baseline(
    spec: StudySpec, pool: ImagePool, split: Split, device: torch.device, epochs: int
) -> Speed:
    """The same configuration trained the usual way: per-sample transforms in a Dataset, a
    DataLoader (on CUDA with worker processes and pinned memory), autocast as lsearch's on
    CUDA, model.train() on the whole network (frozen BatchNorm statistics drift, as in such
    scripts), frozen layers only left out of the optimizer, evaluation every epoch."""
    from torch.utils.data import DataLoader

    base = spec.baseline
    net = _net(spec, pool, base.trainable_layers)
    trainable = net.trainable_parameters()
    for param in net.model.parameters():
        param.requires_grad_(True)  # the usual script freezes by leaving params out
    model = net.model.to(device)
    optimizer = make_optimizer(trainable, spec.train, base.lr, fused=False)
    precision, scaler = baseline_precision(spec, device)
    train_set, val_set = baseline_datasets(spec, pool, split, net.in_channels)
    options = baseline_loader_options(device)
    train_loader = DataLoader(
        train_set, batch_size=spec.train.batch_size, shuffle=True, drop_last=False, **options
    )
    val_loader = DataLoader(
        val_set, batch_size=spec.train.eval_batch_size, shuffle=False, **options
    )
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=base.label_smoothing)
    # Pinned host memory lets the copies run asynchronously, as such scripts write them.
    copy = {"non_blocking": bool(options["pin_memory"])}

    def autocast() -> contextlib.AbstractContextManager:
        if precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=precision.dtype)

    def train() -> float:
        model.train()
        total = 0.0
        for x, y in train_loader:
            x, y = x.to(device, **copy), y.to(device, **copy)
            if x.shape[0] < 2:
                continue  # BatchNorm cannot train on one image
            optimizer.zero_grad()
            with autocast():
                loss = criterion(model(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            total += loss.item()  # the usual per-batch sync
        return total

    def evaluate(_: Any) -> float:
        model.eval()
        correct = 0
        with torch.no_grad(), autocast():
            for x, y in val_loader:
                correct += (model(x.to(device, **copy)).argmax(1) == y.to(device)).sum().item()
        return correct

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed_epochs(epochs, device, train, evaluate)
    return _speed(split, epochs, seconds, device)


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
    low, high = spec.space.epochs.bounds()
    return (low + high) / 2


@dataclass
class SearchRun:
    """One search of `bench --search`."""

    sampler_seed: int
    pruned: bool
    seed_epochs: int  # epochs trained, summed over trials and seeds
    wall_s: float
    best_value: float
    pruned_trials: int
    # The best trial's configuration trained again on fresh seeds and measured on the held-out
    # test set (the study metric's test counterpart, mean over the seeds): what the search's
    # answer is worth on data it never read, free of the best value's winner's curse.
    test_value: float
    best_config: dict[str, Any]  # the best trial's configuration


def run_search(
    spec: StudySpec, pool: ImagePool, device: torch.device, trials: int, sampler_seed: int,
    prune: bool, held_out: tuple[TestSet, Sequence[int]],
) -> SearchRun:  # fmt: skip
    """One search in memory, as `lsearch run --trials N` runs it, with the study's pruner or
    with none; its best configuration is then trained on `held_out`'s fresh seeds and
    measured on its test set."""
    import optuna

    from lsearch.search.loop import run_until
    from lsearch.search.objective import SearchObjective, TrialConfig
    from lsearch.search.study import build_pruner, build_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if not prune:
        spec = spec.model_copy(update={"pruner": spec.pruner.model_copy(update={"type": "none"})})
    study = optuna.create_study(
        directions=spec.objective.directions,
        sampler=build_sampler(spec, sampler_seed),
        pruner=build_pruner(spec),
    )
    started = time.perf_counter()
    run_until(study, SearchObjective(spec, pool, device), trials)
    wall = time.perf_counter() - started
    finished = study.get_trials(deepcopy=False)
    seed_epochs = sum(
        int(t.user_attrs.get("epochs_trained", 0)) * len(t.user_attrs.get("seeds", []))
        for t in finished
    )
    best_config = study.best_trial.user_attrs["config"]
    test_set, seeds = held_out
    attrs = SearchObjective(spec, pool, device).train(
        study.ask(), TrialConfig(**best_config), seeds, prunes=False, test_set=test_set
    )
    test_value = float(attrs[TEST_METRIC[spec.objective.metric]])
    return SearchRun(
        sampler_seed=sampler_seed,
        pruned=prune,
        seed_epochs=seed_epochs,
        wall_s=wall,
        best_value=float(study.best_value),
        pruned_trials=sum(t.state.name == "PRUNED" for t in finished),
        test_value=test_value,
        best_config=best_config,
    )


def bench_search(
    spec: StudySpec,
    device: torch.device,
    trials: int,
    sampler_seeds: int,
    on_run: Callable[[SearchRun], None] | None = None,
    test_seeds: int = 5,
) -> list[SearchRun]:
    """The study's search with its pruner and with none, over `sampler_seeds` sampler seeds
    (one search against one search is noise); each search's best configuration is measured
    on the test set over the same `test_seeds` fresh seeds."""
    from lsearch.comparison.compare import fresh_seeds

    if len(spec.objective.directions) != 1:
        raise UserError("bench --search needs a single-objective study (pruning needs one)")
    pool = load_pool(spec.data, device)
    held_out = (load_test_set(spec.data, device), fresh_seeds(spec.seeds, test_seeds))
    runs = []
    for seed in range(sampler_seeds):
        for prune in (True, False):
            runs.append(run_search(spec, pool, device, trials, seed, prune, held_out))
            if on_run is not None:
                on_run(runs[-1])
    return runs


def summarise_search(runs: list[SearchRun]) -> dict[str, Any]:
    """Medians and ranges of each arm, and the pruned arm's share of the unpruned work and
    its best value's difference, per sampler seed (paired) and in the median."""

    def arm(pruned: bool) -> list[SearchRun]:
        return [run for run in runs if run.pruned == pruned]

    def stats(values: list[float]) -> dict[str, float]:
        return {"median": float(np.median(values)), "min": min(values), "max": max(values)}

    out: dict[str, Any] = {}
    for name, pruned in (("pruned", True), ("unpruned", False)):
        chosen = arm(pruned)
        out[name] = {
            "seed_epochs": stats([float(r.seed_epochs) for r in chosen]),
            "wall_s": stats([r.wall_s for r in chosen]),
            "best_value": stats([r.best_value for r in chosen]),
            "test_value": stats([r.test_value for r in chosen]),
        }
    pairs = list(zip(arm(True), arm(False), strict=True))
    out["work_share"] = stats([p.seed_epochs / u.seed_epochs for p, u in pairs])
    out["best_value_difference"] = stats([p.best_value - u.best_value for p, u in pairs])
    out["test_value_difference"] = stats([p.test_value - u.test_value for p, u in pairs])
    out["sampler_seeds"] = len(pairs)
    return out
