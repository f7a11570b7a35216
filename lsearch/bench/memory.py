"""What a whole trial holds (`TrialMemory`): one seed run per seed of the study's `seeds`,
sharing one feature cache, trained and evaluated in lockstep as a trial does.

On CUDA: the peak memory torch allocated, the peak its caching allocator reserved, and the
device's used memory (the CUDA context and any other process included); on the CPU: the
process's peak resident memory. Workers are sized by `TrialMemory.per_worker_mb`.
"""

from __future__ import annotations

import gc
import resource
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lsearch.bench.workload import sync, trial_runs
from lsearch.spec import StudySpec
from lsearch.training.data import ImagePool
from lsearch.training.features import FeatureCache
from lsearch.training.seed_run import snapshot
from lsearch.training.together import SeedGroup, trains_together

MB = 2**20


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


def peak_rss_mb() -> float:
    """The process's peak resident memory since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_trial_memory(device: torch.device, seeds: int, cache: FeatureCache) -> TrialMemory:
    """Read a trial's memory after it trained (peak statistics reset before it started)."""
    stats = cache.stats()
    rss = peak_rss_mb()
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


def measure_trial_memory(spec: StudySpec, pool: ImagePool, device: torch.device) -> TrialMemory:
    """What a trial of the baseline configuration holds (its seeds together where the study
    trains them so on this device: `train.seeds_together`): one seed run per seed of
    `spec.seeds`, built as `SearchObjective.start` builds them and sharing one feature cache keyed
    (seed, trainable_layers), trained and evaluated for one epoch in lockstep; then the first
    seed trains and evaluates again, because a trial's later epochs train with every seed's
    features cached (in the first, the last seed trains before its own are), with the checkpoint
    snapshots of two epochs held as a trial holds them while a write is in flight."""
    if device.type == "cuda":
        # The one-seed run's leftovers go back to the device, so the reserve read is the
        # trial's; the peaks then start from what stays (the pool).
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cache = FeatureCache.for_device(device)  # a worker's, made before its first trial
    cache.new_trial()
    runs = trial_runs(spec, pool, device, spec.seeds, cache)
    # A trial also keeps its last finished epoch's state on the device for checkpoints, and
    # a second while a write is in flight: both are held here as the trial would hold them.
    snapshots = []
    if trains_together(spec.train.seeds_together, device, runs):
        group = SeedGroup(runs)  # its grouped copy of the seeds' models is held too
        for _ in range(2):
            for run, loss in zip(runs, group.train_epoch(), strict=True):
                run.evaluate(loss)
            group.sync_optimizers()
            snapshots.append(snapshot([r.state_dict() for r in runs]))
    for index, run in enumerate([] if snapshots else [*runs, runs[0]]):
        run.evaluate(run.train_epoch())
        if index >= len(runs) - 1:
            snapshots.append(snapshot([r.state_dict() for r in runs]))
    sync(device)
    return read_trial_memory(device, len(runs), cache)
