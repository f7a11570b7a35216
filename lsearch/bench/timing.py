"""Timing one seed's epochs: the figures one way of training gives (`Speed`).

Training and evaluation are timed apart, after one warm-up epoch, with the device synced
around each so the clock reads the device's work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lsearch.bench.memory import MB, peak_rss_mb
from lsearch.bench.workload import sync
from lsearch.training.data import Split


@dataclass
class Speed:
    """What one way of training one seed measured. `peak_memory_mb` is that seed's alone on
    CUDA (torch's peak allocated memory); a whole trial's is `TrialMemory`'s."""

    train_images_per_s: float
    eval_images_per_s: float
    seconds_per_epoch: float
    peak_memory_mb: float
    peak_memory_basis: str = ""  # what `peak_memory_mb` counts


def peak_memory(device: torch.device) -> tuple[float, str]:
    """One seed's peak memory, and what it counts."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB, (
            f"one seed's peak memory allocated by torch on {device} "
            "(torch.cuda.max_memory_allocated): without the allocator's reserve, the CUDA "
            "context, the other seeds; see trial_memory"
        )
    return peak_rss_mb(), "the process's peak resident memory so far (getrusage)"


def timed_epochs(
    epochs: int, device: torch.device, train: Callable[[], Any], evaluate: Callable[[Any], Any]
) -> tuple[float, float]:
    """Seconds of training and of evaluation over `epochs` epochs after one warm-up epoch."""
    evaluate(train())  # warm-up: allocator, cuDNN autotuning, lazy initialisation
    train_s = eval_s = 0.0
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        loss = train()
        sync(device)
        middle = time.perf_counter()
        evaluate(loss)
        sync(device)
        train_s += middle - start
        eval_s += time.perf_counter() - middle
    return train_s, eval_s


def speed_of(
    split: Split, epochs: int, seconds: tuple[float, float], device: torch.device
) -> Speed:
    """The figures of `epochs` timed epochs on `split`: images per second, seconds per
    epoch, and the peak memory."""
    train_s, eval_s = seconds
    train_images = split.train_labels.shape[0] * epochs
    eval_images = split.val_labels.shape[0] * epochs
    peak, basis = peak_memory(device)
    return Speed(
        train_images_per_s=train_images / train_s,
        eval_images_per_s=eval_images / eval_s,
        seconds_per_epoch=(train_s + eval_s) / epochs,
        peak_memory_mb=peak,
        peak_memory_basis=basis,
    )
