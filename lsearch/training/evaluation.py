"""Held-out test metrics of one seed's model at its chosen epoch.

The temperature is fitted on that seed's validation logits at the chosen epoch (data the
model did not train on, and that the epoch was chosen on anyway), then applied to the test
logits: `test_ece_ts` and `test_nll_ts` are what temperature scaling buys on data that
nothing was tuned on. Reliability data (15 equal-width bins) is kept before and after
scaling, so reports draw reliability diagrams without retraining.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lsearch.training import metrics

N_BINS = 15
# The per-seed test metrics, by their user-attr names (each also has a `_per_seed` list).
TEST_METRICS = (
    "test_acc", "test_nll", "test_ece", "test_ece_ts", "test_nll_ts", "test_brier",
    "test_ace", "test_temperature",
)  # fmt: skip


def _reliability(bins: metrics.ReliabilityBins) -> dict[str, list[Any]]:
    """JSON-safe reliability data: empty bins hold null, not NaN."""

    def clean(values: list[float]) -> list[float | None]:
        return [None if math.isnan(v) else v for v in values]

    return {
        "counts": bins.counts,
        "confidence": clean(bins.confidence),
        "accuracy": clean(bins.accuracy),
    }


def held_out_metrics(
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
) -> dict[str, Any]:
    """One seed's test metrics (floats) and its reliability data before and after scaling."""
    temperature = metrics.fit_temperature(val_logits, val_labels)
    logits = test_logits.detach().float()
    labels = test_labels.to(logits.device)
    scaled = logits / temperature
    return {
        "test_acc": metrics.accuracy(logits, labels),
        "test_nll": metrics.nll(logits, labels),
        "test_ece": metrics.ece(logits, labels, N_BINS),
        "test_ece_ts": metrics.ece(scaled, labels, N_BINS),
        "test_nll_ts": metrics.nll(logits, labels, temperature),
        "test_brier": metrics.brier(logits, labels),
        "test_ace": metrics.adaptive_ece(logits, labels, N_BINS),
        "test_temperature": temperature,
        "test_reliability": _reliability(metrics.reliability_bins(logits, labels, N_BINS)),
        "test_reliability_ts": _reliability(metrics.reliability_bins(scaled, labels, N_BINS)),
    }


def pooled_reliability(per_seed: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Reliability bins pooled over seeds: counts add up; accuracy and confidence are
    count-weighted means (None where no seed had a prediction in the bin)."""
    bins = len(per_seed[0]["counts"])
    counts = [sum(s["counts"][b] for s in per_seed) for b in range(bins)]
    pooled: dict[str, list[Any]] = {"counts": counts, "accuracy": [], "confidence": []}
    for key in ("accuracy", "confidence"):
        for b in range(bins):
            total = sum(s["counts"][b] * s[key][b] for s in per_seed if s["counts"][b])
            pooled[key].append(total / counts[b] if counts[b] else None)
    return pooled
