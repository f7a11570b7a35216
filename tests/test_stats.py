"""Paired statistics over seeds (lsearch.analysis.stats), checked against scipy and by hand."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as st

from lsearch.analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    WILCOXON_MIN_N,
    Interval,
    PairedDifference,
    Summary,
    holm,
    paired_difference,
    seeds_for_power,
    summarize,
    two_by_two,
)


def assert_no_nan(obj: Any, path: str = "result") -> None:
    """Fail if any float anywhere inside a (nested) dataclass or list is NaN."""
    if dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            assert_no_nan(getattr(obj, field.name), f"{path}.{field.name}")
    elif isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            assert_no_nan(item, f"{path}[{i}]")
    elif isinstance(obj, float):
        assert not math.isnan(obj), f"{path} is NaN"
    else:
        assert obj is None or isinstance(obj, bool | int | str), f"{path}: {type(obj)}"


def reference_bootstrap(
    d: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """The documented resampling: one (resamples, n) draw of indices, percentile bounds."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, d.size, size=(resamples, d.size))
    means = d[index].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def power_by_integration(n: int, effect_size: float, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample t-test, integrating over the chi-square of the std.

    T = (Z + nc) / sqrt(V / df) with V ~ chi2(df), so P(T > c) = E[Φ(nc − c·sqrt(V/df))]
    and P(T < −c) = E[Φ(−nc − c·sqrt(V/df))]; the expectation is taken over the quantile
    u of V, V = chi2.ppf(u, df), u uniform on (0, 1). Independent of scipy's noncentral t.
    """
    df = n - 1
    c = st.t.ppf(1 - alpha / 2, df)
    nc = math.sqrt(n) * effect_size

    def rejection(u: float) -> float:
        s = c * math.sqrt(st.chi2.ppf(u, df) / df)
        return float(st.norm.cdf(nc - s) + st.norm.cdf(-nc - s))

    value, _ = integrate.quad(rejection, 0.0, 1.0, limit=200, epsabs=1e-12)
    return value


# --------------------------------------------------------------------------- summarize


def test_summarize_matches_numpy_and_scipy() -> None:
    rng = np.random.default_rng(7)
    for n in (2, 3, 5, 12):
        values = rng.normal(0.9, 0.02, n)
        s = summarize(values.tolist())
        assert s.n == n
        assert s.mean == pytest.approx(np.mean(values), rel=1e-12)
        assert s.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        low, high = st.t.interval(0.95, n - 1, loc=np.mean(values), scale=st.sem(values))
        assert s.ci is not None
        assert (s.ci.low, s.ci.high) == pytest.approx((low, high), rel=1e-12)
    values = rng.normal(size=8)
    s = summarize(values, confidence=0.9)
    low, high = st.t.interval(0.9, 7, loc=np.mean(values), scale=st.sem(values))
    assert s.ci is not None
    assert (s.ci.low, s.ci.high) == pytest.approx((low, high), rel=1e-12)


def test_summarize_by_hand() -> None:
    s = summarize([1, 2, 3, 4])
    assert s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # squares 2.25+0.25+0.25+2.25 = 5 over 3
    assert s.std == pytest.approx(1.2910, abs=1e-4)
    half = 3.18245 * 1.2910 / 2  # t_{0.975, 3} · std / √4 = 2.05427
    assert s.ci is not None
    assert s.ci.low == pytest.approx(2.5 - half, abs=1e-4)
    assert s.ci.high == pytest.approx(2.5 + half, abs=1e-4)
    assert s.ci.low == pytest.approx(0.44574, abs=1e-4)


def test_summarize_single_value_and_zero_variance() -> None:
    one = summarize([0.93])
    assert one == Summary(n=1, mean=0.93, std=None, ci=None)
    flat = summarize([0.7, 0.7, 0.7, 0.7])
    assert flat.std == 0.0
    assert flat.ci == Interval(0.7, 0.7)
    # np.mean([0.1] * 3) is 0.10000000000000002 and np.std(..., ddof=1) is 1.7e-17.
    tenth = summarize([0.1, 0.1, 0.1])
    assert tenth.mean == 0.1
    assert tenth.std == 0.0
    assert tenth.ci == Interval(0.1, 0.1)
    for s in (one, flat, tenth):
        assert_no_nan(s)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf"), 1.0], [[1.0, 2.0]]])
def test_summarize_rejects_bad_values(bad: list[Any]) -> None:
    with pytest.raises(ValueError):
        summarize(bad)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95.0, -0.5])
def test_summarize_rejects_bad_confidence(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        summarize([1.0, 2.0], confidence=confidence)


# --------------------------------------------------------------------------- paired_difference


def test_paired_difference_matches_scipy() -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(0.9, 0.02, 10)
    a = base + rng.normal(0.004, 0.006, 10)
    b = base
    d = a - b
    r = paired_difference(a.tolist(), b.tolist(), higher_is_better=True)
    assert r.n == 10
    assert not r.identical
    assert r.mean == pytest.approx(np.mean(d), rel=1e-12)
    assert r.std == pytest.approx(np.std(d, ddof=1), rel=1e-12)
    low, high = st.t.interval(0.95, 9, loc=np.mean(d), scale=st.sem(d))
    assert r.ci is not None
    assert (r.ci.low, r.ci.high) == pytest.approx((low, high), rel=1e-12)
    assert r.t_pvalue == pytest.approx(st.ttest_rel(a, b).pvalue, rel=1e-12)
    assert r.t_note is None
    assert r.wilcoxon_pvalue == pytest.approx(st.wilcoxon(d, method="exact").pvalue, rel=1e-12)
    assert r.wilcoxon_note is None
    assert r.wins == np.mean(d > 0)
    assert r.seeds_needed == seeds_for_power(float(np.mean(d)), float(np.std(d, ddof=1)))
    assert r.seeds_needed is not None
    assert r.seeds_needed_note is None
    assert_no_nan(r)


def test_paired_difference_two_sided_and_confidence() -> None:
    a = [0.80, 0.83, 0.79, 0.85, 0.82, 0.81, 0.84]
    b = [0.82, 0.84, 0.83, 0.84, 0.85, 0.83, 0.86]
    r = paired_difference(a, b, higher_is_better=True, confidence=0.9)
    d = np.subtract(a, b)
    assert r.mean < 0
    assert r.t_pvalue == pytest.approx(st.ttest_rel(a, b).pvalue, rel=1e-12)
    assert r.wilcoxon_pvalue == pytest.approx(st.wilcoxon(d, method="exact").pvalue, rel=1e-12)
    low, high = st.t.interval(0.9, 6, loc=np.mean(d), scale=st.sem(d))
    assert r.ci is not None
    assert (r.ci.low, r.ci.high) == pytest.approx((low, high), rel=1e-12)
    assert r.bootstrap_ci is not None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = d[rng.integers(0, 7, size=(BOOTSTRAP_RESAMPLES, 7))].mean(axis=1)
    assert (r.bootstrap_ci.low, r.bootstrap_ci.high) == pytest.approx(
        tuple(np.percentile(means, [5.0, 95.0])), abs=1e-15
    )


def test_bootstrap_interval_is_the_documented_resampling() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(0.0, 1.0, 8)
    b = a - rng.normal(0.3, 0.5, 8)
    d = a - b
    r = paired_difference(a, b, higher_is_better=True)
    assert r.bootstrap_ci is not None
    expected = reference_bootstrap(d)
    assert (r.bootstrap_ci.low, r.bootstrap_ci.high) == pytest.approx(expected, abs=1e-14)
    # Deterministic, and the seed matters.
    again = paired_difference(a, b, higher_is_better=True)
    assert again.bootstrap_ci == r.bootstrap_ci
    other = paired_difference(a, b, higher_is_better=True, seed=1)
    assert other.bootstrap_ci != r.bootstrap_ci
    assert other.bootstrap_ci == Interval(*reference_bootstrap(d, seed=1))
    fewer = paired_difference(a, b, higher_is_better=True, resamples=500)
    assert fewer.bootstrap_ci == Interval(*reference_bootstrap(d, resamples=500))


def test_bootstrap_drawn_in_chunks_matches_one_draw() -> None:
    # 200 seeds: the implementation draws 10 000 × 200 indices in chunks of rows.
    rng = np.random.default_rng(9)
    a = rng.normal(1.0, 1.0, 200)
    b = rng.normal(0.8, 1.0, 200)
    r = paired_difference(a, b, higher_is_better=False)
    assert r.bootstrap_ci == Interval(*reference_bootstrap(a - b))


def test_bootstrap_agrees_with_scipy() -> None:
    a = np.array([0.912, 0.905, 0.921, 0.899, 0.910, 0.915, 0.903, 0.917, 0.908])
    b = np.array([0.901, 0.899, 0.915, 0.902, 0.897, 0.906, 0.900, 0.904, 0.909])
    r = paired_difference(a, b, higher_is_better=True)
    assert r.bootstrap_ci is not None
    width = r.bootstrap_ci.high - r.bootstrap_ci.low
    assert width > 0

    def scipy_ci(seed: int) -> tuple[float, float]:
        result = st.bootstrap(
            (a, b),
            statistic=lambda x, y: np.mean(x - y),
            paired=True,
            method="percentile",
            n_resamples=10_000,
            random_state=np.random.default_rng(seed),
        )
        return result.confidence_interval.low, result.confidence_interval.high

    # Seeded differently: agreement to sampling error.
    low, high = scipy_ci(12345)
    assert abs(low - r.bootstrap_ci.low) < 0.1 * width
    assert abs(high - r.bootstrap_ci.high) < 0.1 * width
    # Seeded the same: scipy resamples the seeds the same way, so the bounds coincide.
    low, high = scipy_ci(BOOTSTRAP_SEED)
    assert (low, high) == pytest.approx((r.bootstrap_ci.low, r.bootstrap_ci.high), abs=1e-12)
    # The t interval and the bootstrap interval describe the same thing.
    assert r.ci is not None
    assert r.ci.low < r.mean < r.ci.high
    assert r.bootstrap_ci.low < r.mean < r.bootstrap_ci.high


def test_wilcoxon_needs_six_seeds() -> None:
    assert WILCOXON_MIN_N == 6
    a = [0.91, 0.92, 0.95, 0.90, 0.93, 0.94]
    b = [0.90, 0.90, 0.92, 0.86, 0.88, 0.88]  # a better on every seed: exact p = 2 / 2**n
    for n in range(1, 6):
        r = paired_difference(a[:n], b[:n], higher_is_better=True)
        assert r.wilcoxon_pvalue is None
        assert r.wilcoxon_note is not None
        assert f"have {n}" in r.wilcoxon_note
        assert "6 seeds" in r.wilcoxon_note
        assert_no_nan(r)
    r = paired_difference(a, b, higher_is_better=True)
    assert r.wilcoxon_pvalue == pytest.approx(2 / 2**6)
    assert r.wilcoxon_pvalue < 0.05
    assert r.wilcoxon_note is None


def test_wilcoxon_zero_differences_are_dropped_with_a_note() -> None:
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    b = [0.5, 2.0, 2.0, 4.2, 4.0, 6.0, 5.5, 7.9]
    r = paired_difference(a, b, higher_is_better=True)
    d = np.subtract(a, b)
    assert r.wilcoxon_pvalue == pytest.approx(st.wilcoxon(d, method="exact").pvalue)
    assert r.wilcoxon_note is not None
    assert "2 of 8" in r.wilcoxon_note
    assert "leaving 6" in r.wilcoxon_note


def test_identical_nonzero_differences() -> None:
    # Accuracies on 360 validation images, a 4 images better on every seed: the differences
    # 4/360 are not bit-for-bit equal in floats.
    correct = np.array([330, 322, 341, 300, 317, 333, 325])
    a = (correct / 360).tolist()
    b = ((correct - 4) / 360).tolist()
    raw = np.subtract(a, b)
    assert np.ptp(raw) > 0  # the reason identical detection allows for rounding
    assert st.ttest_rel(a, b).pvalue < 1e-20  # what taking the spread at face value gives
    r = paired_difference(a, b, higher_is_better=True)
    assert r.identical
    assert r.mean == pytest.approx(4 / 360, abs=1e-15)
    assert r.std == 0.0
    assert r.ci == Interval(r.mean, r.mean)
    assert r.bootstrap_ci == Interval(r.mean, r.mean)
    assert r.t_pvalue is None
    assert r.t_note is not None and "undefined" in r.t_note
    assert r.wilcoxon_pvalue == pytest.approx(2 / 2**7)  # all 7 the same sign
    assert r.wins == 1.0
    assert r.seeds_needed is None
    assert r.seeds_needed_note is not None
    assert_no_nan(r)
    # Exactly equal differences too, and a is worse now.
    exact = paired_difference([1.0, 2.0, 3.0], [3.0, 4.0, 5.0], higher_is_better=True)
    assert exact.identical
    assert exact.mean == -2.0
    assert exact.ci == Interval(-2.0, -2.0)
    assert exact.bootstrap_ci == Interval(-2.0, -2.0)
    assert exact.t_pvalue is None
    assert exact.wins == 0.0
    assert_no_nan(exact)


def test_all_zero_differences() -> None:
    values = [0.91, 0.88, 0.93, 0.90, 0.87, 0.92]
    r = paired_difference(values, list(values), higher_is_better=True)
    assert r.identical
    assert r.mean == 0.0
    assert r.std == 0.0
    assert r.ci == Interval(0.0, 0.0)
    assert r.bootstrap_ci == Interval(0.0, 0.0)
    assert r.t_pvalue == 1.0
    assert r.t_note is not None
    assert r.wilcoxon_pvalue is None
    assert r.wilcoxon_note is not None and "0" in r.wilcoxon_note
    assert r.wins == 0.5
    assert r.seeds_needed is None
    assert_no_nan(r)
    # Zero only up to rounding: 0.1 + 0.2 != 0.3 in floats.
    near = paired_difference([0.1 + 0.2, 0.7], [0.3, 0.7], higher_is_better=False)
    assert near.identical
    assert near.mean == 0.0
    assert near.t_pvalue == 1.0
    assert near.wins == 0.5


def test_single_seed() -> None:
    r = paired_difference([0.9], [0.8], higher_is_better=True)
    assert r.n == 1
    assert r.mean == pytest.approx(0.1)
    assert not r.identical
    assert r.std is None
    assert r.ci is None
    assert r.bootstrap_ci is None
    assert r.t_pvalue is None
    assert r.t_note is not None and "2 seeds" in r.t_note
    assert r.wilcoxon_pvalue is None
    assert r.seeds_needed is None
    assert r.seeds_needed_note is not None
    assert r.wins == 1.0
    assert_no_nan(r)


def test_zero_mean_difference_has_no_seed_estimate() -> None:
    r = paired_difference([1.0, 2.0, 3.0, 4.0], [0.0, 3.0, 2.0, 5.0], higher_is_better=True)
    assert r.mean == 0.0
    assert not r.identical
    assert r.t_pvalue == pytest.approx(1.0)
    assert r.seeds_needed is None
    assert r.seeds_needed_note is not None and "0" in r.seeds_needed_note
    assert_no_nan(r)


def test_no_nan_anywhere() -> None:
    rng = np.random.default_rng(3)
    cases: list[tuple[list[float], list[float]]] = [
        ([0.5], [0.5]),
        ([0.5, 0.5], [0.5, 0.5]),
        ([0.5, 0.6], [0.4, 0.5]),
        ([0.5, 0.6], [0.6, 0.5]),
        ([1e-300, 2e-300], [0.0, 0.0]),
        ([1e300, -1e300], [1e300, -1e300]),
    ]
    for n in (2, 3, 6, 9):
        cases.append((rng.normal(size=n).tolist(), rng.normal(size=n).tolist()))
        cases.append((rng.integers(0, 3, n).tolist(), rng.integers(0, 3, n).tolist()))
    for a, b in cases:
        for higher in (True, False):
            r = paired_difference(a, b, higher_is_better=higher)
            assert isinstance(r, PairedDifference)
            assert_no_nan(r)
            assert 0.0 <= r.wins <= 1.0
            if r.t_pvalue is None:
                assert r.t_note
            if r.wilcoxon_pvalue is None:
                assert r.wilcoxon_note
            if r.seeds_needed is None:
                assert r.seeds_needed_note


def test_wins_are_direction_aware_with_half_ties() -> None:
    a = [1, 2, 3, 4]
    b = [0, 2, 5, 4]
    # higher: seed 0 win, seed 1 tie, seed 2 loss, seed 3 tie.
    assert paired_difference(a, b, higher_is_better=True).wins == (1 + 0.5 + 0 + 0.5) / 4
    # lower: seed 0 loss, seed 1 tie, seed 2 win, seed 3 tie.
    assert paired_difference(a, b, higher_is_better=False).wins == (0 + 0.5 + 1 + 0.5) / 4
    # Asymmetric: a ≥ b everywhere.
    a = [3.0, 3.0, 3.0]
    b = [1.0, 2.0, 3.0]
    assert paired_difference(a, b, higher_is_better=True).wins == pytest.approx(2.5 / 3)
    assert paired_difference(a, b, higher_is_better=False).wins == pytest.approx(0.5 / 3)
    # Ties up to rounding count as ties.
    assert paired_difference([0.1 + 0.2], [0.3], higher_is_better=True).wins == 0.5


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1.0, 2.0], [1.0]),
        ([], []),
        ([1.0, float("nan")], [1.0, 2.0]),
        ([1.0], [float("inf")]),
        ([1e308, 0.0], [-1e308, 0.0]),  # a − b overflows
    ],
)
def test_paired_difference_rejects_bad_input(a: list[float], b: list[float]) -> None:
    with pytest.raises(ValueError):
        paired_difference(a, b, higher_is_better=True)


def test_paired_difference_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [0.0, 0.0], True, confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_difference([1.0, 2.0], [0.0, 0.0], True, resamples=0)


def test_results_are_frozen() -> None:
    r = paired_difference([1.0, 2.0], [0.0, 0.5], True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mean = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        summarize([1.0]).n = 2  # type: ignore[misc]


# --------------------------------------------------------------------------- holm


def test_holm_by_hand() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max(0.06, 0.04).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Capped at 1: 0.6·2 = 1.2 → 1, 0.7·1 = 0.7 → max(1, 0.7) = 1.
    assert holm([0.7, 0.6]) == [1.0, 1.0]
    # Ties: 0.01·3 = 0.03, 0.01·2 = 0.02 → 0.03, 0.5·1 = 0.5.
    assert holm([0.01, 0.5, 0.01]) == pytest.approx([0.03, 0.5, 0.03])
    # Monotone step: 0.2·3 = 0.6, 0.3·2 = 0.6, 0.5·1 = 0.5 → 0.6.
    assert holm([0.3, 0.5, 0.2]) == pytest.approx([0.6, 0.6, 0.6])
    assert holm([0.0, 1.0]) == [0.0, 1.0]


def test_holm_keeps_none_out_of_m() -> None:
    # m = 2: 0.02·2 = 0.04, 0.5·1 = 0.5.
    assert holm([0.02, None, 0.5, None]) == pytest.approx([0.04, None, 0.5, None])
    assert holm([None, None]) == [None, None]
    assert holm([]) == []
    assert holm([0.03]) == [0.03]


def test_holm_against_statsmodels_algorithm() -> None:
    # statsmodels.stats.multitest.multipletests(method="holm"), written out:
    # sort, multiply the k-th smallest by m − k, running maximum, clip at 1, unsort.
    rng = np.random.default_rng(2)
    for m in (1, 2, 5, 17):
        for _ in range(20):
            p = rng.uniform(0, 0.3, m) ** 2
            order = np.argsort(p, kind="mergesort")
            scaled = (m - np.arange(m)) * p[order]
            adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
            expected = np.empty(m)
            expected[order] = adjusted
            got = holm(p.tolist())
            assert got == pytest.approx(expected.tolist(), rel=1e-12)
            # Adjusted p-values are at least the raw ones and keep their order.
            assert all(g is not None and g >= raw for g, raw in zip(got, p, strict=True))
            assert np.all(np.diff(np.asarray(got, dtype=float)[order]) >= 0)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_holm_rejects_bad_pvalues(bad: float) -> None:
    with pytest.raises(ValueError):
        holm([0.01, bad])


# --------------------------------------------------------------------------- seeds_for_power


def nct_power(n: int, effect_size: float, alpha: float = 0.05) -> float:
    t_crit = st.t.ppf(1 - alpha / 2, n - 1)
    nc = math.sqrt(n) * effect_size
    return float(st.nct.sf(t_crit, n - 1, nc) + st.nct.cdf(-t_crit, n - 1, nc))


def test_seeds_for_power_textbook_value() -> None:
    # Cohen's d = 0.5, alpha 0.05 two-sided, power 0.8, one-sample t: n = 34 (G*Power gives
    # 34, actual power 0.808); n = 33 gives 0.795.
    assert seeds_for_power(0.5, 1.0) == 34
    assert nct_power(34, 0.5) == pytest.approx(0.8078, abs=1e-4)
    assert nct_power(33, 0.5) == pytest.approx(0.7954, abs=1e-4)
    assert power_by_integration(34, 0.5) == pytest.approx(0.8078, abs=1e-4)
    assert power_by_integration(33, 0.5) == pytest.approx(0.7954, abs=1e-4)
    # Only the ratio matters, and the sign does not.
    assert seeds_for_power(0.005, 0.01) == 34
    assert seeds_for_power(-0.5, 1.0) == 34


@pytest.mark.parametrize(
    ("effect_size", "power", "alpha"),
    [(0.2, 0.8, 0.05), (0.8, 0.8, 0.05), (1.5, 0.8, 0.05), (3.0, 0.8, 0.05), (0.5, 0.9, 0.01)],
)
def test_seeds_for_power_is_the_smallest_n(effect_size: float, power: float, alpha: float) -> None:
    n = seeds_for_power(effect_size, 1.0, power=power, alpha=alpha)
    assert n is not None and n >= 2
    assert power_by_integration(n, effect_size, alpha) >= power - 1e-9
    if n > 2:
        assert power_by_integration(n - 1, effect_size, alpha) < power
    # A linear scan with the noncentral t agrees (scipy's nct is finite in this range).
    powers = [nct_power(k, effect_size, alpha) for k in range(2, n + 1)]
    assert all(math.isfinite(p) for p in powers)
    assert n == 2 + next(i for i, p in enumerate(powers) if p >= power)


def test_seeds_for_power_by_monte_carlo() -> None:
    # Simulate the paired t-test on 34 seeds with effect size 0.5: rejects about 80.8 %.
    rng = np.random.default_rng(0)
    trials, n = 20_000, 34
    d = rng.normal(0.5, 1.0, size=(trials, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rejected = np.mean(np.abs(t) > st.t.ppf(0.975, n - 1))
    assert rejected == pytest.approx(nct_power(n, 0.5), abs=0.015)  # SE ≈ 0.003
    assert rejected > 0.78


def test_seeds_for_power_edges() -> None:
    assert seeds_for_power(0.0, 1.0) is None
    assert seeds_for_power(0.5, 0.0) is None
    assert seeds_for_power(0.5, -1.0) is None
    assert seeds_for_power(0.5, 1.0, max_n=34) == 34
    assert seeds_for_power(0.5, 1.0, max_n=33) is None
    assert seeds_for_power(1e-3, 1.0) is None  # needs about 7.85 million
    # Huge effects: two seeds suffice. scipy 1.17's nct.cdf gives NaN for the far lower tail
    # here (n = 2, nc = 70.7); the implementation must still answer.
    for effect in (50.0, 1e3, 1e6):
        assert seeds_for_power(effect, 1.0) == 2
    assert power_by_integration(2, 50.0) > 0.8
    # With df = 1 even an effect of 8 standard deviations needs a third seed.
    for effect in (5.0, 8.0):
        assert seeds_for_power(effect, 1.0) == 3
        assert power_by_integration(2, effect) < 0.8 <= power_by_integration(3, effect)
    # Large n: close to the normal approximation ((z_.975 + z_.8) / es)² + z_.975² / 2.
    n = seeds_for_power(0.01, 1.0)
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    assert n is not None
    assert n == pytest.approx((z / 0.01) ** 2 + st.norm.ppf(0.975) ** 2 / 2, abs=3)


def test_seeds_for_power_rejects_bad_arguments() -> None:
    for kwargs in ({"power": 0.0}, {"power": 1.0}, {"alpha": 0.0}, {"alpha": 1.5}, {"max_n": 1}):
        with pytest.raises(ValueError):
            seeds_for_power(0.5, 1.0, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        seeds_for_power(float("nan"), 1.0)


# --------------------------------------------------------------------------- two_by_two


def test_two_by_two_by_hand() -> None:
    a = [1.0, 2.0]  # base
    b = [3.0, 5.0]  # first factor changed
    c = [2.0, 2.0]  # second factor changed
    d = [6.0, 9.0]  # both
    t = two_by_two(a, b, c, d)
    # seed 0: b−a = 2, c−a = 1, d−c = 4, d−b = 3; seed 1: 3, 0, 7, 4.
    assert t.first_simple.per_seed == [2.0, 3.0]
    assert t.second_simple.per_seed == [1.0, 0.0]
    assert t.first_main.per_seed == [3.0, 5.0]  # (3+6−1−2)/2, (5+9−2−2)/2
    assert t.second_main.per_seed == [2.0, 2.0]  # (2+6−1−3)/2, (2+9−2−5)/2
    assert t.interaction.per_seed == [2.0, 4.0]  # (6−2)−(3−1), (9−2)−(5−2)
    assert t.total.per_seed == [5.0, 7.0]
    assert t.first_main.summary.mean == 4.0
    assert t.first_main.summary.std == pytest.approx(math.sqrt(2))
    assert t.second_main.summary == Summary(n=2, mean=2.0, std=0.0, ci=Interval(2.0, 2.0))
    assert t.interaction.summary.ci is not None
    half = st.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2)  # 12.706
    assert t.interaction.summary.ci.low == pytest.approx(3.0 - half)
    assert t.interaction.summary.ci.high == pytest.approx(3.0 + half)
    assert_no_nan(t)


def test_two_by_two_decomposition() -> None:
    rng = np.random.default_rng(4)
    a, b, c, d = (rng.normal(0.9, 0.03, 7) for _ in range(4))
    t = two_by_two(a, b, c, d)
    parts = np.add(t.first_simple.per_seed, t.second_simple.per_seed)
    parts = parts + np.asarray(t.interaction.per_seed)
    assert t.total.per_seed == pytest.approx(parts.tolist(), abs=1e-14)
    assert t.first_main.per_seed == pytest.approx(((b + d - a - c) / 2).tolist(), abs=1e-14)
    assert t.second_main.per_seed == pytest.approx(((c + d - a - b) / 2).tolist(), abs=1e-14)
    assert t.interaction.per_seed == pytest.approx(((d - c) - (b - a)).tolist(), abs=1e-14)
    for effect in (t.first_main, t.second_main, t.interaction, t.total):
        values = np.asarray(effect.per_seed)
        assert effect.summary.n == 7
        assert effect.summary.mean == pytest.approx(values.mean(), rel=1e-12)
        assert effect.summary.std == pytest.approx(values.std(ddof=1), rel=1e-12)


def test_two_by_two_constant_effect_up_to_rounding() -> None:
    # Accuracies in hundredths: interaction exactly 0.04 and first main 0.07 on every seed.
    a = [0.80, 0.70, 0.60]
    b = [0.85, 0.75, 0.65]
    c = [0.81, 0.71, 0.61]
    d = [0.90, 0.80, 0.70]
    t = two_by_two(a, b, c, d)
    for effect, value in ((t.interaction, 0.04), (t.first_main, 0.07), (t.total, 0.10)):
        assert effect.per_seed == pytest.approx([value] * 3, abs=1e-15)
        assert effect.summary.std == 0.0
        assert effect.summary.ci is not None
        assert effect.summary.ci.low == effect.summary.ci.high == effect.summary.mean


def test_two_by_two_one_seed_and_bad_input() -> None:
    t = two_by_two([1.0], [2.0], [3.0], [5.0])
    assert t.interaction.per_seed == [1.0]
    assert t.interaction.summary.std is None
    assert t.interaction.summary.ci is None
    assert_no_nan(t)
    with pytest.raises(ValueError, match="one value per seed"):
        two_by_two([1.0, 2.0], [1.0, 2.0], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        two_by_two([1.0], [float("nan")], [1.0], [1.0])
    with pytest.raises(ValueError, match="overflows"):
        two_by_two([-1e308], [1e308], [0.0], [0.0])


# --------------------------------------------------------------------------- dependencies


def test_imports_neither_torch_nor_optuna() -> None:
    code = (
        "import sys, lsearch.analysis.stats, lsearch.analysis.summary, lsearch.analysis.paired, "
        "lsearch.analysis.design; "
        "print(sorted(m for m in ('torch', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
