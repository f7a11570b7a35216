"""The frozen prefix's features of validation images, computed once and kept within a
budget (`FeatureCache`): every epoch of a seed-run, and later trials of the same process that
share the seed and `trainable_layers`, reuse them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch

CPU_FEATURE_CACHE_BYTES = 1 << 30
# The share of a GPU's free memory (when the process starts) the feature cache may fill.
GPU_FEATURE_CACHE_SHARE = 0.25


def feature_cache_budget(device: torch.device) -> tuple[int, str]:
    """How many bytes of validation features a process keeps on `device`, and why: a
    quarter of the GPU's free memory (other workers may share it, and a trial's training
    needs the rest), or 1 GiB on the CPU.

    >>> feature_cache_budget(torch.device("cpu"))
    (1073741824, '1.0 GiB on the CPU')
    """
    if device.type != "cuda":
        return CPU_FEATURE_CACHE_BYTES, f"{CPU_FEATURE_CACHE_BYTES / 2**30:.1f} GiB on the CPU"
    free, _ = torch.cuda.mem_get_info(device)
    budget = int(free * GPU_FEATURE_CACHE_SHARE)
    return budget, (
        f"{budget / 2**30:.1f} GiB, a quarter of the {free / 2**30:.1f} GiB free on {device}"
    )


class FeatureCache:
    """The frozen prefix's features of validation images, computed once and reused: by
    every epoch of a seed run, and by later trials of the same process that share the seed
    and `trainable_layers` (same frozen prefix, same images).

    The budget is never overrun, and the cache never thrashes: an entry that a trial has
    used is kept for the rest of that trial (`new_trial` starts the next), entries of earlier
    trials make room least recently used first, and a tensor that still does not fit is not
    kept (its seed run computes the features every epoch, the others hit). An LRU alone would
    miss on every `get` when a trial's seeds cycle through more features than fit.

    >>> cache = FeatureCache(budget_bytes=16)  # room for four float32 numbers
    >>> [cache.put(key, torch.zeros(n)) for key, n in (("a", 2), ("b", 2), ("c", 1))]
    [True, True, False]
    >>> cache.get("a") is not None, cache.get("c"), cache.hits, cache.misses
    (True, None, 1, 1)
    """

    def __init__(self, budget_bytes: int = CPU_FEATURE_CACHE_BYTES, basis: str = "") -> None:
        self.budget_bytes = budget_bytes
        self.basis = basis or f"{budget_bytes} bytes"
        self.hits = 0
        self.misses = 0
        self._trial = 0
        # key -> (features, the trial that last used them); oldest use first
        self._items: OrderedDict[Hashable, tuple[torch.Tensor, int]] = OrderedDict()

    @classmethod
    def for_device(cls, device: torch.device) -> FeatureCache:
        return cls(*feature_cache_budget(device))

    @property
    def bytes(self) -> int:
        return sum(_nbytes(features) for features, _ in self._items.values())

    def new_trial(self) -> None:
        """Entries used so far may now make room for the next trial's."""
        self._trial += 1

    def get(self, key: Hashable) -> torch.Tensor | None:
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items[key] = (found[0], self._trial)
        self._items.move_to_end(key)
        return found[0]

    def put(self, key: Hashable, features: torch.Tensor) -> bool:
        """Keep `features` if they fit, making room from earlier trials' entries only."""
        size = _nbytes(features)
        self._items.pop(key, None)
        used = self.bytes
        for old in [k for k, (_, trial) in self._items.items() if trial < self._trial]:
            if used + size <= self.budget_bytes:
                break
            used -= _nbytes(self._items.pop(old)[0])
        if used + size > self.budget_bytes:
            return False
        self._items[key] = (features, self._trial)
        return True

    def stats(self) -> dict[str, Any]:
        """What `lsearch bench --json` and `lsearch doctor` show."""
        return {
            "budget_bytes": self.budget_bytes,
            "budget": self.basis,
            "entries": len(self._items),
            "bytes": self.bytes,
            "hits": self.hits,
            "misses": self.misses,
        }


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
