"""Accuracy, negative log-likelihood, Expected Calibration Error and temperature scaling.

ECE follows Guo et al. (2017) and Müller et al. (2019): confidence is the largest softmax
probability; confidences fall into `n_bins` equal-width bins over [0, 1], each bin holding
the half-open interval (lower, upper] (the first bin also holds 0, the last holds 1.0);
ECE = Σ_b (n_b / N) · |acc(b) − conf(b)|. Everything is computed in float64, so a
saturated confidence of exactly 1.0 counts in the last bin instead of being dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar


@dataclass(frozen=True)
class ReliabilityBins:
    """The reliability diagram behind an ECE value: per bin, how many predictions fell in it,
    how often they were right and how confident they were (NaN for empty bins)."""

    edges: list[float]  # n_bins + 1 edges from 0 to 1
    counts: list[int]
    accuracy: list[float]
    confidence: list[float]

    @property
    def ece(self) -> float:
        total = sum(self.counts)
        if total == 0:
            return float("nan")
        return sum(
            n / total * abs(acc - conf)
            for n, acc, conf in zip(self.counts, self.accuracy, self.confidence, strict=True)
            if n
        )


def reliability_bins_from_confidences(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15
) -> ReliabilityBins:
    """Bin predictions by confidence; `correct` is 1 where the prediction was right."""
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    conf = confidences.detach().to("cpu", torch.float64).flatten()
    hits = correct.detach().to("cpu", torch.float64).flatten()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # right=False: a confidence equal to an inner edge belongs to the bin below it.
    index = torch.bucketize(conf, edges[1:-1], right=False)
    counts = torch.bincount(index, minlength=n_bins)
    hit_sums = torch.bincount(index, weights=hits, minlength=n_bins)
    conf_sums = torch.bincount(index, weights=conf, minlength=n_bins)
    safe = counts.clamp(min=1).to(torch.float64)
    empty = counts == 0
    accuracy = torch.where(empty, torch.nan, hit_sums / safe)
    confidence = torch.where(empty, torch.nan, conf_sums / safe)
    return ReliabilityBins(
        edges=edges.tolist(),
        counts=counts.tolist(),
        accuracy=accuracy.tolist(),
        confidence=confidence.tolist(),
    )


def confidences_and_predictions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(logits.detach().to(torch.float64), dim=-1)
    return probs.max(dim=-1)


def reliability_bins(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> ReliabilityBins:
    """Reliability bins of a classifier's logits (N x K) against integer labels (N)."""
    confidence, prediction = confidences_and_predictions(logits)
    return reliability_bins_from_confidences(
        confidence, prediction == labels.to(prediction.device), n_bins
    )


def ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected Calibration Error of logits (N x K, before softmax) against labels (N)."""
    return reliability_bins(logits, labels, n_bins).ece


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).double().mean().item()


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    return F.cross_entropy(logits.detach().double() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 that minimises NLL(logits / T) on these held-out logits.

    Dividing by T never changes the argmax, so accuracy is untouched; only confidence moves.
    """
    logits64 = logits.detach().to("cpu", torch.float64)
    labels_cpu = labels.detach().cpu()

    def loss(log_t: float) -> float:
        return F.cross_entropy(logits64 / math.exp(log_t), labels_cpu).item()

    result = minimize_scalar(
        loss, bounds=(math.log(0.01), math.log(100.0)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(result.x))
