"""Accuracy, negative log-likelihood, Expected Calibration Error and temperature scaling.

ECE follows Guo et al. (2017) and Müller et al. (2019): confidence is the largest softmax
probability; confidences fall into `n_bins` equal-width bins over [0, 1], each bin holding
the half-open interval (lower, upper] (the first bin also holds 0, the last holds 1.0);
ECE = Σ_b (n_b / N) · |acc(b) − conf(b)|. Everything is computed in float64, so a
saturated confidence of exactly 1.0 counts in the last bin instead of being dropped.

`adaptive_ece` is the equal-mass variant (Nixon et al., 2019): bins of equal count over the
sorted confidences instead of equal width. `brier` is the multiclass Brier (1950) score.
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
    """Expected Calibration Error of logits (N x K, before softmax) against labels (N).

    Two confident predictions (0.9, one right) and two hesitant ones (0.4, one right): with
    two bins the 0.4s fall in (0, 0.5] and the 0.9s in (0.5, 1], so
    ECE = 0.5 · |0.5 − 0.4| + 0.5 · |0.5 − 0.9| = 0.05 + 0.2 = 0.25.

    >>> probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05],
    ...                       [0.4, 0.3, 0.3], [0.4, 0.3, 0.3]])
    >>> round(ece(probs.log(), torch.tensor([0, 1, 0, 2]), n_bins=2), 6)
    0.25
    """
    return reliability_bins(logits, labels, n_bins).ece


def adaptive_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Equal-mass (adaptive) ECE of logits (N x K, before softmax) against labels (N).

    The adaptive binning of Nixon et al. (2019), applied to the top-label confidence (the
    largest softmax probability, computed in float64): instead of equal-width bins over
    [0, 1], the N predictions are sorted by confidence and cut into groups of as equal a
    size as possible, and ECE = Σ_b (n_b / N) · |acc(b) − conf(b)| as in `ece`.

    The rule, exactly:

    * the sort is ascending and stable, so equal confidences keep their input order, and a
      run of tied confidences may be split across two neighbouring bins by that order;
    * the sorted predictions are split like `numpy.array_split(sorted, G)` with
      G = min(n_bins, N): every group has ⌊N / G⌋ predictions and the first N mod G groups
      have one more; so no group is empty, and when N < n_bins there are N groups of one
      prediction each (ECE is then the mean of |correct − confidence|);
    * an empty input (N = 0) or n_bins < 1 raises ValueError.

    Five predictions in two bins: the groups are sizes 3 and 2. Confidences 0.6, 0.7, 0.8
    (two right) give |2/3 − 0.7| = 1/30; confidences 0.9, 0.9 (both right) give
    |1 − 0.9| = 0.1; ECE = 3/5 · 1/30 + 2/5 · 0.1 = 0.02 + 0.04 = 0.06.

    >>> p = torch.tensor([0.9, 0.7, 0.6, 0.9, 0.8])
    >>> logits = torch.stack([p, 1 - p], dim=1).log()  # class 0 is always predicted
    >>> round(adaptive_ece(logits, torch.tensor([0, 0, 0, 0, 1]), n_bins=2), 6)
    0.06
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    confidence, prediction = confidences_and_predictions(logits)
    conf = confidence.to("cpu").flatten()
    hits = (prediction == labels.to(prediction.device)).to("cpu", torch.float64).flatten()
    total = conf.numel()
    if total == 0:
        raise ValueError("adaptive_ece needs at least one prediction")
    if hits.numel() != total:
        raise ValueError(f"{total} predictions but {hits.numel()} labels")
    order = torch.sort(conf, stable=True).indices
    conf, hits = conf[order], hits[order]
    groups = min(n_bins, total)
    size, extra = divmod(total, groups)
    counts = torch.full((groups,), size, dtype=torch.long)
    counts[:extra] += 1
    index = torch.repeat_interleave(torch.arange(groups), counts)
    hit_means = torch.bincount(index, weights=hits, minlength=groups) / counts
    conf_means = torch.bincount(index, weights=conf, minlength=groups) / counts
    return sum(
        n / total * abs(acc - c)
        for n, acc, c in zip(counts.tolist(), hit_means.tolist(), conf_means.tolist(), strict=True)
    )


def brier(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Multiclass Brier score of softmax(logits / temperature) (N x K) against labels (N).

    The original definition of Brier (1950): the mean over the N samples of the squared
    distance between the predicted distribution and the one-hot label,
    (1 / N) Σ_i Σ_k (p_ik − 1[y_i = k])², with p = softmax(logits / temperature) computed
    in float64. It is summed over the K classes, not divided by K, so it lies in [0, 2]:
    0 for a confident right answer, 2 for a confident wrong one. For K = 2 it is twice the
    usual binary Brier score (mean squared error of the positive-class probability, as in
    scikit-learn's `brier_score_loss`). An empty input raises ValueError.

    p = (0.7, 0.2, 0.1) with label 0 scores 0.3² + 0.2² + 0.1² = 0.14:

    >>> round(brier(torch.tensor([[0.7, 0.2, 0.1]]).log(), torch.tensor([0])), 6)
    0.14
    >>> brier(torch.tensor([[100.0, -100.0]]), torch.tensor([1]))  # confidently wrong
    2.0
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    logits64 = logits.detach().to(torch.float64)
    if logits64.ndim != 2 or logits64.shape[0] == 0:
        raise ValueError("brier needs logits of shape (N, K) with N >= 1")
    probs = torch.softmax(logits64 / temperature, dim=-1)
    target = F.one_hot(labels.to(probs.device).long(), probs.shape[-1]).to(torch.float64)
    if target.shape != probs.shape:
        raise ValueError(f"{probs.shape[0]} predictions but {target.shape[0]} labels")
    return ((probs - target) ** 2).sum(dim=-1).mean().item()


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
