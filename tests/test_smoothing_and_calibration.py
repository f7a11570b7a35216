"""The label-smoothed loss and the calibration metrics, against numbers worked out by hand and
against independent implementations (a plain per-sample loop, torchmetrics, dense targets)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from lsearch.training.augment import prepare, random_crop, random_flip
from lsearch.training.metrics import (
    accuracy,
    ece,
    fit_temperature,
    nll,
    reliability_bins,
    reliability_bins_from_confidences,
)
from lsearch.training.seed_run import smoothed_cross_entropy

# context.md's worked example: K = 3, true class 0, p = [0.7, 0.2, 0.1].
P = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
LOGITS = P.log()
TARGET = torch.tensor([0])


def test_the_worked_example_in_both_conventions() -> None:
    plain = smoothed_cross_entropy(LOGITS, TARGET, 0.0).item()
    assert plain == pytest.approx(-math.log(0.7)) and plain == pytest.approx(0.3567, abs=1e-4)
    # `others`: targets [0.9, 0.05, 0.05].
    others = smoothed_cross_entropy(LOGITS, TARGET, 0.1, "others").item()
    by_hand = -(0.9 * math.log(0.7) + 0.05 * math.log(0.2) + 0.05 * math.log(0.1))
    assert others == pytest.approx(by_hand, abs=1e-12)
    assert others == pytest.approx(0.5166, abs=1e-4)
    assert abs(others - 0.513) > 0.003, "the blog post's 0.513 was an arithmetic slip"
    # `uniform` (PyTorch's): (1 − ε)·onehot + ε/K = [0.9 + 0.1/3, 0.1/3, 0.1/3].
    uniform = smoothed_cross_entropy(LOGITS, TARGET, 0.1, "uniform").item()
    q = [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]
    assert uniform == pytest.approx(
        -sum(qi * math.log(pi) for qi, pi in zip(q, [0.7, 0.2, 0.1], strict=True))
    )


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.1, 0.3])
def test_conventions_match_independent_dense_targets(epsilon: float) -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (64,), generator=generator)
    onehot = F.one_hot(labels, 10).double()
    log_p = logits.log_softmax(-1)
    uniform_targets = (1 - epsilon) * onehot + epsilon / 10
    others_targets = onehot * (1 - epsilon) + (1 - onehot) * epsilon / 9
    for convention, targets in (("uniform", uniform_targets), ("others", others_targets)):
        expected = -(targets * log_p).sum(-1).mean().item()
        got = smoothed_cross_entropy(logits, labels, epsilon, convention).item()
        assert got == pytest.approx(expected, abs=1e-12), convention
    assert smoothed_cross_entropy(logits, labels, epsilon).item() == pytest.approx(
        F.cross_entropy(logits, labels, label_smoothing=epsilon).item(), abs=1e-12
    )


def test_the_smoothed_loss_has_a_floor_at_the_target_entropy() -> None:
    epsilon = 0.1
    target = torch.tensor([0.9, 0.05, 0.05], dtype=torch.float64)
    entropy = -(target * target.log()).sum().item()
    best = smoothed_cross_entropy(target.log()[None], TARGET, epsilon, "others").item()
    assert best == pytest.approx(entropy, abs=1e-12) and best > 0.39
    for shift in ([0.5, 0, 0], [0, 0.3, -0.3], [-1, 0, 0]):
        moved = target.log() + torch.tensor(shift, dtype=torch.float64)
        assert smoothed_cross_entropy(moved[None], TARGET, epsilon, "others").item() > best
    with pytest.raises(ValueError, match="convention"):
        smoothed_cross_entropy(LOGITS, TARGET, 0.1, "bogus")


def test_ece_by_hand() -> None:
    # Two bins, (0, 0.5] and (0.5, 1]. Bin 0: confidences 0.1, 0.3 (mean 0.2), one right of
    # two (0.5): |0.5 − 0.2| = 0.3. Bin 1: 0.6, 0.9 (mean 0.75), one right (0.5): 0.25.
    # ECE = 2/4 · 0.3 + 2/4 · 0.25 = 0.275.
    bins = reliability_bins_from_confidences(
        torch.tensor([0.1, 0.3, 0.6, 0.9]), torch.tensor([0, 1, 1, 0]), n_bins=2
    )
    assert bins.counts == [2, 2]
    assert bins.accuracy == [0.5, 0.5]
    assert bins.confidence == pytest.approx([0.2, 0.75])
    assert bins.ece == pytest.approx(0.275)


def test_bin_edges_belong_to_the_bin_below_and_one_to_the_last() -> None:
    confidences = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 0.26])
    bins = reliability_bins_from_confidences(confidences, torch.ones(6), n_bins=4)
    # (0, .25] holds 0 and 0.25; (.25, .5] holds 0.26 and 0.5; (.5, .75] 0.75; (.75, 1] 1.0.
    assert bins.counts == [2, 2, 1, 1]
    assert bins.edges == [0.0, 0.25, 0.5, 0.75, 1.0]
    empty = reliability_bins_from_confidences(torch.tensor([0.9]), torch.ones(1), n_bins=4)
    assert math.isnan(empty.accuracy[0]) and math.isnan(empty.confidence[0])
    assert sum(empty.counts) == 1


def test_ece_from_logits_with_known_softmax() -> None:
    # Logits [0, 0]: confidence exactly 0.5 for class 0 (argmax takes the first).
    logits = torch.zeros(4, 2)
    labels = torch.tensor([0, 0, 0, 1])  # 3 of 4 right at confidence 0.5: ECE = 0.25
    assert ece(logits, labels) == pytest.approx(0.25)
    bins = reliability_bins(logits, labels, n_bins=15)
    assert bins.counts[7] == 4  # 0.5 lies in (7/15, 8/15]


def test_saturated_confidences_count_in_the_last_bin() -> None:
    logits = torch.tensor([[200.0, 0.0]] * 5, dtype=torch.float32)
    assert torch.softmax(logits, -1).max().item() == 1.0  # float32 saturates
    assert ece(logits, torch.zeros(5, dtype=torch.long)) == 0.0
    assert ece(logits, torch.ones(5, dtype=torch.long)) == pytest.approx(1.0)


def loop_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """An independent ECE: a per-sample loop over (lower, upper] intervals."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    total = 0.0
    for b in range(n_bins):
        lower, upper = b / n_bins, (b + 1) / n_bins
        members = [
            i
            for i in range(len(labels))
            if (lower < probs[i].max() <= upper) or (b == 0 and probs[i].max() == 0.0)
        ]
        if members:
            acc = np.mean([probs[i].argmax() == labels[i] for i in members])
            conf = np.mean([probs[i].max() for i in members])
            total += len(members) / len(labels) * abs(acc - conf)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_agrees_with_a_loop_and_with_torchmetrics(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1000, 10, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (1000,), generator=generator)
    ours = ece(logits, labels)
    assert ours == pytest.approx(loop_ece(logits.numpy(), labels.numpy()), abs=1e-12)
    probs = torch.softmax(logits, -1).float()
    theirs = multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15, norm="l1")
    assert ours == pytest.approx(theirs.item(), abs=1e-5)


def test_accuracy_and_nll_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    p = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-3))]
    assert nll(logits, labels) == pytest.approx(-sum(math.log(x) for x in p) / 3)


def test_temperature_scaling_recovers_the_temperature_and_keeps_the_argmax() -> None:
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20000, 5, generator=generator, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=generator).squeeze(1)
    overconfident = true_logits * 2.5  # a model whose logits are 2.5 times too large
    fitted = fit_temperature(overconfident, labels)
    assert fitted == pytest.approx(2.5, abs=0.1)
    scaled = overconfident / fitted
    assert torch.equal(scaled.argmax(-1), overconfident.argmax(-1))
    at = nll(overconfident, labels, fitted)
    assert at <= nll(overconfident, labels) and at <= nll(overconfident, labels, fitted * 1.1)
    assert at <= nll(overconfident, labels, fitted / 1.1)
    assert ece(scaled, labels) < ece(overconfident, labels)


def test_random_crop_cuts_windows_of_the_padded_image() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=generator)
    assert torch.equal(random_crop(images, 0, generator), images)
    cropped = random_crop(images, 2, torch.Generator().manual_seed(3))
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        assert any(torch.equal(cropped[i], w) for w in windows)
    assert torch.equal(cropped, random_crop(images, 2, torch.Generator().manual_seed(3)))
    assert not torch.equal(cropped, random_crop(images, 2, torch.Generator().manual_seed(4)))


def test_random_flip_mirrors_about_half() -> None:
    images = torch.arange(2000 * 4, dtype=torch.uint8).reshape(2000, 1, 2, 2)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    same = (flipped == images).flatten(1).all(1)
    assert bool((mirrored | same).all())
    assert 0.4 < mirrored.double().mean().item() < 0.6


def test_prepare_normalises_resizes_and_widens_channels() -> None:
    images = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    mean, std = torch.tensor(0.5).view(1, 1, 1, 1), torch.tensor(0.25).view(1, 1, 1, 1)
    x = prepare(images, mean, std, None, 1)
    expected = (torch.tensor([[0.0, 1.0], [0.2, 0.4]]) - 0.5) / 0.25
    assert torch.allclose(x[0, 0], expected)
    big = prepare(images, mean, std, 6, 3)
    assert big.shape == (1, 3, 6, 6)
    assert torch.equal(big[:, 0], big[:, 1]) and torch.equal(big[:, 1], big[:, 2])
