"""`lsearch bench` reports what a whole trial holds (every seed, the feature cache, on CUDA
the allocator's reserve and the context), and its baseline is the usual GPU script: loader
workers, pinned memory, and lsearch's autocast dtype. CUDA paths run here with torch.cuda
mocked: this machine has no GPU."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import pytest
import torch

from lsearch.bench.baseline import (
    baseline_datasets,
    baseline_loader_options,
    baseline_precision,
)
from lsearch.bench.memory import read_trial_memory
from lsearch.bench.speed import mean_epochs, measure_speed
from lsearch.spec import StudySpec
from lsearch.training import devices
from lsearch.training.data import load_pool, split_for_seed
from lsearch.training.features import FeatureCache
from lsearch.training.models import build_model
from lsearch.training.seed_run import start_seed_run
from tests.test_speed import tiny_spec

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
MB = 2**20


def three_seeds(trainable_layers: int) -> StudySpec:
    spec = tiny_spec(baseline={"trainable_layers": trainable_layers})
    return spec.model_copy(update={"seeds": [3, 5, 7]})


def one_seed_features_bytes(spec: StudySpec, seed: int) -> int:
    """What one seed's cached validation features weigh, computed apart from bench."""
    pool = load_pool(spec.data, CPU)
    net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=seed)
    net.freeze(spec.baseline.trainable_layers)
    base = spec.baseline
    run = start_seed_run(
        seed, net, split_for_seed(pool, spec.data, seed), pool, spec.data, spec.train,
        base.label_smoothing, base.lr, base.epochs, CPU,
    )  # fmt: skip
    features = run.val_features()
    return features.numel() * features.element_size()


def test_bench_json_holds_a_whole_trial_s_memory_and_feature_cache_counts() -> None:
    # small_cnn has 4 groups: 2 trainable leaves a frozen prefix whose features are cached.
    spec = three_seeds(trainable_layers=2)
    result = measure_speed(spec, CPU, epochs=1, synthetic=False, baseline=False)
    out = result.to_json(len(spec.seeds), mean_epochs(spec))
    json.dumps(out, allow_nan=False)
    memory = out["trial_memory"]
    assert memory["seeds"] == 3
    # The CPU has no allocator figures; the process's peak RSS is what a worker needs.
    assert memory["peak_allocated_mb"] is None and memory["peak_reserved_mb"] is None
    assert memory["device_used_mb"] is None
    assert memory["process_peak_rss_mb"] > 0
    assert memory["per_worker_mb"] == memory["process_peak_rss_mb"]
    assert set(memory["basis"]) >= {"per_worker_mb", "process_peak_rss_mb", "feature_cache_mb"}
    # Every seed misses once (its first evaluation fills the cache); the first seed's second
    # epoch, trained with every seed's features held, hits.
    cache = out["feature_cache"]
    assert (cache["misses"], cache["hits"], cache["entries"]) == (3, 1, 3)
    expected = sum(one_seed_features_bytes(spec, seed) for seed in spec.seeds)
    assert cache["bytes"] == expected
    assert memory["feature_cache_mb"] == pytest.approx(expected / MB)
    assert cache["budget_bytes"] == FeatureCache.for_device(CPU).budget_bytes
    assert "budget" in cache
    # The one-seed figure is still there, and says what it is.
    assert out["peak_memory_mb"] > 0 and "peak" in out["peak_memory_basis"]


def test_bench_without_a_frozen_prefix_caches_nothing() -> None:
    spec = three_seeds(trainable_layers=4)  # every group trains: no prefix to cache
    result = measure_speed(spec, CPU, epochs=1, synthetic=False, baseline=False)
    out = result.to_json(len(spec.seeds), mean_epochs(spec))
    assert out["trial_memory"]["seeds"] == 3
    cache = out["feature_cache"]
    assert (cache["misses"], cache["hits"], cache["entries"], cache["bytes"]) == (0, 0, 0, 0)


def test_a_trial_that_trains_its_seeds_together_is_measured_together(monkeypatch) -> None:
    """Where the study trains seeds together (auto: on CUDA), the memory measured is that
    of the grouped model: two epochs of the group, every seed evaluated in each."""
    from lsearch.bench import memory
    from lsearch.training.together import SeedGroup

    epochs: list[int] = []
    real = SeedGroup.train_epoch

    def counted(self: SeedGroup) -> list[float]:
        epochs.append(self.seeds)
        return real(self)

    monkeypatch.setattr(SeedGroup, "train_epoch", counted)
    spec = three_seeds(trainable_layers=2)
    train = spec.train.model_copy(update={"seeds_together": True})
    spec = spec.model_copy(update={"train": train})
    measured = memory.measure_trial_memory(spec, load_pool(spec.data, CPU), CPU)
    assert epochs == [3, 3] and measured.seeds == 3
    cache = measured.feature_cache
    assert (cache["misses"], cache["hits"], cache["entries"]) == (3, 3, 3)


def test_cuda_trial_memory_puts_each_reading_in_its_named_field(monkeypatch) -> None:
    calls = []

    def reading(value: int):
        def read(device=None) -> int:
            calls.append(device)
            return value

        return read

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", reading(300 * MB))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", reading(512 * MB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", reading(400 * MB))
    # 1,000 MB in use on the device: 80 GiB in all.
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda device=None: (80 * 2**30 - 1000 * MB, 80 * 2**30)
    )
    cache = FeatureCache(budget_bytes=8 * MB, basis="8 MB")
    assert cache.put((0, 2), torch.zeros(MB // 4))  # 1 MB of float32
    cache.get((0, 2))
    cache.get((1, 2))

    memory = read_trial_memory(CUDA, seeds=3, cache=cache)

    assert memory.seeds == 3
    assert memory.peak_allocated_mb == 300
    assert memory.peak_reserved_mb == 512
    assert memory.device_used_mb == 1000
    # Peak reserved plus what the device holds beyond the allocator's reserve now (the
    # CUDA context, other processes): 512 + (1000 - 400).
    assert memory.per_worker_mb == 1112
    assert memory.feature_cache_mb == 1
    assert memory.process_peak_rss_mb > 0
    assert memory.feature_cache["hits"] == 1 and memory.feature_cache["misses"] == 1
    assert memory.feature_cache["budget_bytes"] == 8 * MB
    assert "context" in memory.basis["device_used_mb"]
    assert "other processes" in memory.basis["device_used_mb"]
    assert all(device == CUDA for device in calls)
    json.dumps(memory.to_json(), allow_nan=False)


def test_baseline_loader_uses_worker_processes_and_pinned_memory_on_cuda_only(
    monkeypatch,
) -> None:
    assert baseline_loader_options(CPU) == {"num_workers": 0, "pin_memory": False}
    cores = len(os.sched_getaffinity(0))
    assert baseline_loader_options(CUDA) == {
        "num_workers": min(8, cores), "persistent_workers": True, "pin_memory": True,
    }  # fmt: skip
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert baseline_loader_options(CUDA)["num_workers"] == 8


@pytest.fixture
def fresh_precision(monkeypatch):
    monkeypatch.delenv(devices.PRECISION_ENV, raising=False)
    devices.autocast_precision.cache_clear()
    yield
    devices.autocast_precision.cache_clear()


def test_baseline_autocasts_as_lsearch_does_on_cuda(monkeypatch, fresh_precision) -> None:
    spec = tiny_spec()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    precision, scaler = baseline_precision(spec, CUDA)
    assert precision.dtype == torch.bfloat16 and scaler is None
    assert precision == devices.autocast_precision(CUDA, spec.train.precision)

    devices.autocast_precision.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns here: this machine has no CUDA
        precision, scaler = baseline_precision(spec, CUDA)
    assert precision.dtype == torch.float16
    assert isinstance(scaler, torch.amp.GradScaler)


def test_baseline_trains_in_float32_on_the_cpu(fresh_precision) -> None:
    precision, scaler = baseline_precision(tiny_spec(), CPU)
    assert precision.dtype is None and scaler is None


def test_baseline_datasets_survive_pickling_for_worker_processes() -> None:
    """Spawned or forkserver DataLoader workers get the datasets by pickle."""
    spec = tiny_spec(data={"image_size": 16})
    pool = load_pool(spec.data, CPU)
    split = split_for_seed(pool, spec.data, 0)
    net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
    for dataset in baseline_datasets(spec, pool, split, net.in_channels):
        copy = pickle.loads(pickle.dumps(dataset))
        image, label = copy[0]
        assert label == dataset[0][1]
        assert image.shape == (net.in_channels, 16, 16) and image.dtype == torch.float32
        assert len(copy) == len(dataset)
