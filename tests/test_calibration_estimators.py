"""The Brier score and the equal-mass (adaptive) ECE in lsearch.training.metrics, checked by hand
and against independent implementations (numpy loops, scikit-learn)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss

from lsearch.training.metrics import adaptive_ece, brier, ece


def binary_logits(p_class0: list[float]) -> torch.Tensor:
    """Logits whose softmax is (p, 1 - p); with every p > 0.5, class 0 is always predicted."""
    p = torch.tensor(p_class0, dtype=torch.float64)
    return torch.stack([p, 1 - p], dim=1).log()


def random_problem(
    seed: int, n: int, k: int, scale: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * scale
    labels = torch.randint(0, k, (n,), generator=generator)
    return logits, labels


def numpy_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------- Brier score


def reference_brier(logits: np.ndarray, labels: np.ndarray) -> float:
    probs = numpy_softmax(logits.astype(np.float64))
    total = 0.0
    for row, label in zip(probs, labels, strict=True):
        for k, p in enumerate(row):
            total += (p - (1.0 if k == label else 0.0)) ** 2
    return total / len(labels)


def test_brier_by_hand() -> None:
    # Sample 1: p = (0.7, 0.2, 0.1), label 0: 0.3² + 0.2² + 0.1² = 0.09 + 0.04 + 0.01 = 0.14.
    # Sample 2: p = (0.2, 0.5, 0.3), label 2: 0.2² + 0.5² + 0.7² = 0.04 + 0.25 + 0.49 = 0.78.
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
    assert brier(probs[:1].log(), torch.tensor([0])) == pytest.approx(0.14, abs=1e-12)
    assert brier(probs[1:].log(), torch.tensor([2])) == pytest.approx(0.78, abs=1e-12)
    assert brier(probs.log(), torch.tensor([0, 2])) == pytest.approx(0.46, abs=1e-12)


def test_brier_range_ends() -> None:
    confident = torch.tensor([[50.0, -50.0, -50.0]])
    assert brier(confident, torch.tensor([0])) == pytest.approx(0.0, abs=1e-12)
    assert brier(confident, torch.tensor([1])) == pytest.approx(2.0, abs=1e-12)
    # Uniform over K classes: (1 - 1/K)² + (K - 1)/K² = 1 - 1/K; not divided by K.
    assert brier(torch.zeros(4, 5), torch.tensor([0, 1, 2, 3])) == pytest.approx(0.8, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_matches_numpy_reference(seed: int) -> None:
    logits, labels = random_problem(seed, n=257, k=10)
    value = brier(logits, labels)
    assert value == pytest.approx(reference_brier(logits.numpy(), labels.numpy()), abs=1e-12)
    assert 0.0 <= value <= 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_binary_is_twice_sklearn(seed: int) -> None:
    logits, labels = random_problem(seed, n=301, k=2)
    p_positive = torch.softmax(logits.double(), dim=1)[:, 1].numpy()
    expected = 2.0 * brier_score_loss(labels.numpy(), p_positive)
    assert brier(logits, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.skipif(
    "scale_by_half" not in inspect.signature(brier_score_loss).parameters,
    reason="multiclass brier_score_loss needs scikit-learn >= 1.7",
)
def test_brier_multiclass_matches_sklearn() -> None:
    logits, labels = random_problem(7, n=200, k=6)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    expected = brier_score_loss(labels.numpy(), probs, labels=list(range(6)), scale_by_half=False)
    assert brier(logits, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("temperature", [0.25, 0.5, 2.0, 3.7])
def test_brier_temperature_divides_logits(temperature: float) -> None:
    logits, labels = random_problem(3, n=128, k=7)
    scaled = brier(logits.double() / temperature, labels)
    assert brier(logits, labels, temperature=temperature) == pytest.approx(scaled, abs=1e-12)
    # And it really does something: a different temperature gives a different score.
    assert brier(logits, labels, temperature=temperature) != pytest.approx(
        brier(logits, labels), abs=1e-6
    )


def test_brier_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        brier(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError):
        brier(torch.zeros(2, 3), torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(ValueError):
        brier(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------- adaptive ECE


def reference_adaptive_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Plain loops: sort by confidence (stable), cut into min(n_bins, N) groups whose sizes
    differ by at most one (larger groups first), sum (n_b / N) |acc_b - conf_b|."""
    probs = numpy_softmax(logits.astype(np.float64))
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    order = sorted(range(len(confidence)), key=lambda i: confidence[i])  # stable
    n = len(order)
    groups = min(n_bins, n)
    total, start = 0.0, 0
    for b in range(groups):
        size = n // groups + (1 if b < n % groups else 0)
        members = order[start : start + size]
        start += size
        acc = sum(correct[i] for i in members) / size
        conf = sum(confidence[i] for i in members) / size
        total += size / n * abs(acc - conf)
    assert start == n
    return total


def test_adaptive_ece_by_hand_six_samples_three_bins() -> None:
    # Class 0 is always predicted, with confidence p; the label says whether it is right.
    # Input order is shuffled; sorted by confidence the 3 bins of 2 are:
    #   bin 1: 0.6 (right), 0.6 (wrong)  -> acc 0.5, conf 0.60 -> |0.5 - 0.60| = 0.10
    #   bin 2: 0.7 (right), 0.8 (right)  -> acc 1.0, conf 0.75 -> |1.0 - 0.75| = 0.25
    #   bin 3: 0.9 (wrong), 0.9 (right)  -> acc 0.5, conf 0.90 -> |0.5 - 0.90| = 0.40
    # ECE = 2/6 · (0.10 + 0.25 + 0.40) = 0.75 / 3 = 0.25.
    logits = binary_logits([0.9, 0.6, 0.8, 0.6, 0.9, 0.7])
    labels = torch.tensor([1, 0, 0, 1, 0, 0])
    assert adaptive_ece(logits, labels, n_bins=3) == pytest.approx(0.25, abs=1e-12)


def test_adaptive_ece_uneven_split_puts_extra_samples_first() -> None:
    # N = 7, 3 bins -> sizes 3, 2, 2 (numpy.array_split), not 2, 2, 3 or 3, 3, 1.
    #   bin 1: 0.6, 0.6, 0.6 all right -> 3/7 · 0.4 = 1.2/7
    #   bin 2: 0.8, 0.8 both wrong     -> 2/7 · 0.8 = 1.6/7
    #   bin 3: 0.9, 0.9 both right     -> 2/7 · 0.1 = 0.2/7
    # ECE = 3/7. (Sizes 2, 2, 3 would give 1.8/7.)
    logits = binary_logits([0.8, 0.6, 0.9, 0.6, 0.8, 0.9, 0.6])
    labels = torch.tensor([1, 0, 0, 0, 1, 0, 0])
    assert adaptive_ece(logits, labels, n_bins=3) == pytest.approx(3 / 7, abs=1e-12)


def test_adaptive_ece_ties_are_split_in_input_order() -> None:
    # Four identical confidences of 0.7; the stable sort keeps input order, so two bins hold
    # the first two and the last two inputs.
    logits = binary_logits([0.7, 0.7, 0.7, 0.7])
    # right, right | wrong, wrong -> 0.5 · |1 - 0.7| + 0.5 · |0 - 0.7| = 0.5
    assert adaptive_ece(logits, torch.tensor([0, 0, 1, 1]), n_bins=2) == pytest.approx(0.5)
    # right, wrong | right, wrong -> both bins have acc 0.5: 0.5 · 0.2 + 0.5 · 0.2 = 0.2
    assert adaptive_ece(logits, torch.tensor([0, 1, 0, 1]), n_bins=2) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("seed", "n", "n_bins"), [(0, 1000, 15), (1, 997, 15), (2, 101, 10), (3, 50, 7), (4, 29, 4)]
)
def test_adaptive_ece_matches_loop_reference(seed: int, n: int, n_bins: int) -> None:
    logits, labels = random_problem(seed, n=n, k=5)
    expected = reference_adaptive_ece(logits.numpy(), labels.numpy(), n_bins)
    assert adaptive_ece(logits, labels, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaptive_ece_with_one_bin_equals_equal_width_ece(seed: int) -> None:
    logits, labels = random_problem(seed, n=333, k=4)
    probs = torch.softmax(logits.double(), dim=1)
    gap = abs((probs.argmax(dim=1) == labels).double().mean() - probs.max(dim=1).values.mean())
    assert adaptive_ece(logits, labels, n_bins=1) == pytest.approx(gap.item(), abs=1e-12)
    assert adaptive_ece(logits, labels, n_bins=1) == pytest.approx(
        ece(logits, labels, n_bins=1), abs=1e-12
    )


def test_adaptive_ece_fewer_samples_than_bins() -> None:
    # N = 4 < 15 bins -> 4 bins of one: mean |correct - confidence|
    #   0.6 right 0.4, 0.9 wrong 0.9, 0.8 right 0.2, 0.7 right 0.3 -> 1.8 / 4 = 0.45
    logits = binary_logits([0.6, 0.9, 0.8, 0.7])
    labels = torch.tensor([0, 1, 0, 0])
    assert adaptive_ece(logits, labels) == pytest.approx(0.45, abs=1e-12)
    assert adaptive_ece(logits, labels, n_bins=4) == pytest.approx(0.45, abs=1e-12)
    # Fewer bins than samples really does change it: 2 bins -> |1 - 0.65| / 2 + |0.5 - 0.85| / 2
    assert adaptive_ece(logits, labels, n_bins=2) == pytest.approx(0.35, abs=1e-12)


def test_adaptive_ece_single_sample() -> None:
    logits = binary_logits([0.75])
    assert adaptive_ece(logits, torch.tensor([0])) == pytest.approx(0.25, abs=1e-12)
    assert adaptive_ece(logits, torch.tensor([1])) == pytest.approx(0.75, abs=1e-12)


def test_adaptive_ece_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        adaptive_ece(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError):
        adaptive_ece(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]), n_bins=0)


def test_adaptive_ece_differs_from_equal_width_on_skewed_confidences() -> None:
    # All confidences sit in one equal-width bin of 15 (0.9 < c <= 0.9333...), so equal-width
    # ECE sees one bin (|acc - mean conf|), while equal-mass bins separate them.
    logits = binary_logits([0.91, 0.92, 0.93, 0.925])
    labels = torch.tensor([0, 0, 1, 1])
    # Sorted: 0.91 right, 0.92 right | 0.925 wrong, 0.93 wrong.
    expected = 0.5 * abs(1 - 0.915) + 0.5 * abs(0 - 0.9275)
    assert adaptive_ece(logits, labels, n_bins=2) == pytest.approx(expected, abs=1e-12)
    assert ece(logits, labels) == pytest.approx(abs(0.5 - 0.92125), abs=1e-12)
    assert not math.isclose(adaptive_ece(logits, labels, n_bins=2), ece(logits, labels))
