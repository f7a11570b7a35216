"""The anytime-valid t interval for racing seeds (lsearch.analysis.sequential).

Checked against the worked values, by hand, against the e-value it is the boundary of (solved
with scipy's brentq), by its invariances, and by simulating races that look after every seed.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import optimize
from scipy import stats as st

from lsearch.analysis import sequential_interval as from_package
from lsearch.analysis.sequential import (
    _multipliers,
    far_seeds,
    fewest_deciding_seeds,
    seeds_to_decide,
    sequential_interval,
    sequential_multiplier,
)
from lsearch.analysis.stats import sequential_interval as from_facade

INF = (-math.inf, math.inf)

# --------------------------------------------------------------------------- the multiplier


@pytest.mark.parametrize(
    ("n", "expected", "digits"), [(4, 12.05, 2), (5, 5.825, 3), (10, 3.870, 3), (30, 3.447, 3)]
)
def test_worked_multipliers(n: int, expected: float, digits: int) -> None:
    assert round(sequential_multiplier(n, 0.05, 2.0), digits) == expected


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_multiplier_infinite_below_four_seeds(n: int) -> None:
    assert sequential_multiplier(n) == math.inf


def test_multiplier_stays_above_the_fixed_t_quantile_and_the_width_falls() -> None:
    """q falls to its least at n = 50 (3.42), then grows without bound but slowly: for large n
    q → √(ln((1 + g·n)/α²)) (with r = (α²/a)^(1/n) ≈ 1 − ln(a/α²)/n), so like √(ln n), within
    0.5 % from n = 1000 on. q/√n always falls."""
    n = np.arange(4, 400)
    q = _multipliers(n, 0.05, 2.0)
    assert np.all(np.diff(q[n <= 50]) < 0) and np.all(np.diff(q[n >= 50]) > 0)
    assert round(float(q[n == 50][0]), 2) == 3.42
    for large in (1_000, 10_000, 100_000):
        limit = math.sqrt(math.log((1 + 2.0 * large) / 0.05**2))
        assert sequential_multiplier(large) == pytest.approx(limit, rel=5e-3)
    assert np.all(np.diff(q / np.sqrt(n)) < 0)
    assert np.all(q > st.t.ppf(0.975, n - 1))
    assert [sequential_multiplier(int(k)) for k in n[:5]] == pytest.approx(list(q[:5]), rel=0)


def _log_e_value(t: float, n: int, prior_scale: float) -> float:
    """ln of the mixture e-value a^(−1/2) · ((1 + T²/ν) / (1 + T²/(ν·a)))^(n/2)."""
    a = 1.0 + n * prior_scale
    nu = n - 1.0
    return -0.5 * math.log(a) + 0.5 * n * (math.log1p(t * t / nu) - math.log1p(t * t / (nu * a)))


@pytest.mark.parametrize(
    ("n", "alpha", "prior_scale"),
    [(4, 0.05, 2.0), (5, 0.05, 2.0), (12, 0.01, 0.5), (30, 0.05, 2.0), (50, 0.00625, 4.0)],
)
def test_multiplier_is_the_e_value_boundary(n: int, alpha: float, prior_scale: float) -> None:
    """The closed form q solves e-value(T = q) = 1/alpha; brentq finds the same root."""
    q = sequential_multiplier(n, alpha, prior_scale)
    target = -math.log(alpha)
    assert _log_e_value(q, n, prior_scale) == pytest.approx(target, rel=1e-12)

    def gap(t: float) -> float:
        return _log_e_value(t, n, prior_scale) - target

    high = 1.0
    while gap(high) < 0:
        high *= 2.0
    root = optimize.brentq(gap, 0.0, high, xtol=1e-14, rtol=1e-15)
    assert q == pytest.approx(root, rel=1e-9)


def test_multiplier_infinite_exactly_where_the_e_value_cannot_reach_one_over_alpha() -> None:
    """As T → ∞ the e-value tends to a^((n−1)/2); q is finite exactly when that exceeds 1/α."""
    for alpha in (0.05, 0.01, 0.00625, 1e-6):
        for n in range(2, 40):
            reachable = 0.5 * (n - 1) * math.log1p(2.0 * n) > -math.log(alpha)
            assert math.isfinite(sequential_multiplier(n, alpha)) == reachable


# --------------------------------------------------------------------------- the interval


def test_interval_by_hand() -> None:
    d = [0.4, -0.1, 0.7, 0.2, 0.3, 0.5]
    n, m, s = 6, float(np.mean(d)), float(np.std(d, ddof=1))
    a = 1 + n * 2.0
    r = (0.05**2 / a) ** (1 / n)
    q = math.sqrt((n - 1) * (1 - r) / (r - 1 / a))
    low, high = sequential_interval(d)
    assert low == pytest.approx(m - q * s / math.sqrt(n), rel=1e-12)
    assert high == pytest.approx(m + q * s / math.sqrt(n), rel=1e-12)
    assert from_package(d) == from_facade(d) == (low, high)


@pytest.mark.parametrize("d", [[0.3], [0.1, 0.2], [0.1, 0.2, 0.4]])
def test_interval_infinite_below_four_seeds(d: list[float]) -> None:
    assert sequential_interval(d) == INF


def test_identical_differences() -> None:
    assert sequential_interval([0.01] * 5) == (0.01, 0.01)
    assert sequential_interval([0.01] * 3) == INF
    # Equal up to floating rounding only: 0.91 − 0.90 and 0.51 − 0.50 are not bit-equal.
    rounded = [0.91 - 0.90, 0.02 - 0.01, 0.51 - 0.50, 0.02 - 0.01, 0.76 - 0.75]
    assert len(set(rounded)) > 1
    low, high = sequential_interval(rounded)
    assert low == high
    assert low == pytest.approx(0.01, rel=1e-12)
    assert sequential_interval(rounded[:3]) == INF
    # The tolerance is relative to the differences (the only inputs seen), 8 ulps of 0.01:
    # 0.21 − 0.20 is 3 ulps of 0.91 below 0.01, beyond it, and gives a sliver, not a point.
    wider = [0.91 - 0.90, 0.21 - 0.20, 0.02 - 0.01, 0.51 - 0.50, 0.21 - 0.20]
    low, high = sequential_interval(wider)
    assert 0.0 < high - low < 1e-15


def test_permutation_changes_nothing() -> None:
    rng = np.random.default_rng(7)
    d = rng.normal(0.01, 0.02, size=11)
    expected = sequential_interval(list(d))
    for _ in range(5):
        got = sequential_interval(list(rng.permutation(d)))
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 3.0), (5.0, 1.0), (-2.5, 0.01), (1e3, 7.0)])
def test_affine_map_maps_the_interval(shift: float, scale: float) -> None:
    d = np.array([0.4, -0.1, 0.7, 0.2, 0.3, 0.5, 0.05])
    low, high = sequential_interval(list(d))
    mapped = sequential_interval(list(shift + scale * d))
    tol = 1e-12 * max(1.0, abs(shift))
    assert mapped[0] == pytest.approx(shift + scale * low, abs=tol, rel=1e-12)
    assert mapped[1] == pytest.approx(shift + scale * high, abs=tol, rel=1e-12)


# --------------------------------------------------------------------------- coverage


def _missed_at_some_look(paths: npt.NDArray[np.float64], q: npt.NDArray[np.float64]) -> float:
    """Fraction of paths (true mean 0) whose interval after n = 2..N misses 0 at some n."""
    n = np.arange(1, paths.shape[1] + 1, dtype=np.float64)
    mean = np.cumsum(paths, axis=1) / n
    var = (np.cumsum(paths * paths, axis=1) - n * mean * mean) / np.maximum(n - 1.0, 1.0)
    sd = np.sqrt(np.maximum(var, 0.0))
    half = q[None, :] * sd[:, 1:] / np.sqrt(n[1:])
    with np.errstate(invalid="ignore"):  # inf · 0 never happens: sd > 0 for Gaussian paths
        missed = np.abs(mean[:, 1:]) > half
    return float(np.mean(missed.any(axis=1)))


def test_time_uniform_coverage_by_simulation() -> None:
    """20,000 Gaussian races, each looked at after every seed n = 2..30.

    The anytime interval misses the true mean at some look in about 2.4 % of races (at most
    5 % is what it promises). The ordinary 95 % t interval looked at the same way misses in
    about 29 % (26 % over n = 3..30): a race that stops the first time it excludes zero would
    declare a difference that is not there in more than one race in four. With t (5 df)
    differences the anytime interval still misses in only about 2 %.
    """
    rng = np.random.default_rng(2024)
    looks = np.arange(2, 31)
    q = _multipliers(looks, 0.05, 2.0)
    fixed_t = st.t.ppf(0.975, looks - 1)
    gaussian = rng.standard_normal((20_000, 30))
    anytime_miss = _missed_at_some_look(gaussian, q)
    fixed_miss = _missed_at_some_look(gaussian, fixed_t)
    heavy_miss = _missed_at_some_look(rng.standard_t(5, (20_000, 30)), q)
    print(f"missed: anytime {anytime_miss:.4f}, fixed-n t {fixed_miss:.4f}, t5 {heavy_miss:.4f}")
    assert 0.01 < anytime_miss <= 0.05
    assert fixed_miss > 0.15
    assert heavy_miss <= 0.06


def test_simulated_intervals_match_the_function() -> None:
    """The vectorised prefixes of the coverage test are the function's own intervals."""
    rng = np.random.default_rng(3)
    path = rng.standard_normal(12)
    n = np.arange(1, 13, dtype=np.float64)
    mean = np.cumsum(path) / n
    sd = np.sqrt((np.cumsum(path * path) - n * mean * mean) / np.maximum(n - 1, 1))
    q = _multipliers(np.arange(1, 13), 0.05, 2.0)
    for k in range(4, 12):
        low, high = sequential_interval(list(path[: k + 1]))
        half = q[k] * sd[k] / math.sqrt(k + 1)
        assert (low, high) == pytest.approx((mean[k] - half, mean[k] + half), rel=1e-9)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"differences": []}, "empty"),
        ({"differences": [0.1, float("nan"), 0.2]}, "non-finite"),
        ({"differences": [0.1, math.inf, 0.2]}, "non-finite"),
        ({"differences": [0.1, 0.2], "alpha": 0.0}, "alpha"),
        ({"differences": [0.1, 0.2], "alpha": 1.0}, "alpha"),
        ({"differences": [0.1, 0.2], "alpha": float("nan")}, "alpha"),
        ({"differences": [0.1, 0.2], "prior_scale": 0.0}, "prior_scale"),
        ({"differences": [0.1, 0.2], "prior_scale": -1.0}, "prior_scale"),
        ({"differences": [0.1, 0.2], "prior_scale": math.inf}, "prior_scale"),
        ({"differences": [0.1, 0.2], "prior_scale": float("nan")}, "prior_scale"),
    ],
)
def test_interval_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sequential_interval(**kwargs)  # type: ignore[arg-type]


def test_other_functions_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="n must"):
        sequential_multiplier(-1)
    with pytest.raises(ValueError, match="n must"):
        sequential_multiplier(4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        fewest_deciding_seeds(1.5)
    with pytest.raises(ValueError, match="at_least"):
        fewest_deciding_seeds(at_least=0)
    with pytest.raises(ValueError, match="std"):
        seeds_to_decide(0.0, -1.0, 0.1)
    with pytest.raises(ValueError, match="threshold"):
        seeds_to_decide(0.0, 1.0, math.nan)
    with pytest.raises(ValueError, match="limit"):
        seeds_to_decide(0.0, 1.0, 0.1, limit=1)
    with pytest.raises(ValueError, match="cutoff"):
        far_seeds([0.1] * 6, cutoff=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        far_seeds([0.1, math.nan, 0.2, 0.3, 0.4])


# --------------------------------------------------------------------------- planning helpers


def test_fewest_deciding_seeds() -> None:
    assert fewest_deciding_seeds(0.05) == 5
    assert fewest_deciding_seeds(0.05, at_least=2) == 4
    assert fewest_deciding_seeds(0.05 / 8) == 6
    assert fewest_deciding_seeds(0.05 / 8, at_least=2) == 6
    assert fewest_deciding_seeds(0.05, at_least=9) == 9
    for alpha in (0.05, 0.01, 1e-4):
        n = fewest_deciding_seeds(alpha, at_least=2)
        assert math.isinf(sequential_multiplier(n - 1, alpha)) or n == 2
        assert math.isfinite(sequential_multiplier(n, alpha))


def test_seeds_to_decide_by_hand() -> None:
    # q_n / √n < 1 first at n = 14: q_13 / √13 ≥ 1 > q_14 / √14.
    assert sequential_multiplier(13) / math.sqrt(13) >= 1.0
    assert sequential_multiplier(14) / math.sqrt(14) < 1.0
    assert seeds_to_decide(0.01, 0.01, 0.01) == 14
    assert seeds_to_decide(0.5, 2.0, 2.0) == 14  # only std / threshold matters
    for std, threshold in [(1.0, 0.5), (0.3, 0.05), (2.0, 10.0)]:
        n = seeds_to_decide(0.0, std, threshold)
        assert n is not None
        assert sequential_multiplier(n) * std / math.sqrt(n) < threshold
        assert n == 2 or not sequential_multiplier(n - 1) * std / math.sqrt(n - 1) < threshold


def test_seeds_to_decide_edge_cases() -> None:
    assert seeds_to_decide(0.01, 0.0, 0.01) == 4
    assert seeds_to_decide(0.01, 0.0, 0.01, alpha=0.05 / 8) == 6
    assert seeds_to_decide(0.0, 1.0, 0.0) is None
    assert seeds_to_decide(0.0, 1.0, -0.1) is None
    assert seeds_to_decide(0.0, 1.0, 0.001) is None  # would need far more than 10,000 seeds
    assert seeds_to_decide(0.0, 1.0, 0.5, limit=20) is None
    assert seeds_to_decide(0.0, 1.0, 0.5, limit=100) is not None


def test_far_seeds() -> None:
    d = [0.010, 0.012, 0.008, 0.011, 0.009, -0.30, 0.010]
    assert far_seeds(d) == [5]
    assert far_seeds([*d[:4], -0.30]) == [4]
    assert far_seeds(d[:4]) == []  # fewer than 5
    assert far_seeds([0.01, 0.01, 0.01, 0.02, -0.5]) == []  # MAD 0
    assert far_seeds([0.91 - 0.90, 0.21 - 0.20, 0.02 - 0.01, 0.2, -0.5]) == []  # MAD ~ rounding
    rng = np.random.default_rng(11)
    assert far_seeds(list(rng.normal(0.0, 1.0, 30))) == []
    assert far_seeds([0.0, 1.0, 2.0, 3.0, 4.0, 10.0], cutoff=2.0) == [5]
