"""Two configurations compared seed by seed: the interval, the tests, the win rate and the
seeds a study would need, from the per-seed differences ``a[i] − b[i]``.

Depends on numpy and scipy only (never on torch or optuna).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

from lsearch.analysis.design import seeds_for_power
from lsearch.analysis.summary import (
    CONFIDENCE,
    FloatArray,
    Interval,
    check_confidence,
    paired_arrays,
    rounding_tolerance,
    t_interval,
)

BOOTSTRAP_RESAMPLES = 10_000
"""Default number of bootstrap resamples."""

BOOTSTRAP_SEED = 0
"""Default seed of the bootstrap's ``numpy.random.Generator``: the intervals are deterministic."""

WILCOXON_MIN_N = 6
"""Fewest nonzero differences for which the exact two-sided Wilcoxon test can give p < 0.05.

With ``n`` nonzero differences the smallest exact two-sided p-value is ``2 / 2**n``:
0.0625 for ``n = 5`` and 0.03125 for ``n = 6``.
"""

# Bootstrap resamples are drawn in chunks of at most this many indices to bound memory.
_BOOTSTRAP_CHUNK = 1_000_000


@dataclass(frozen=True)
class PairedDifference:
    """The difference ``a − b`` of two configurations, paired by seed.

    See :func:`paired_difference` for the rule behind every field and its edge cases.
    """

    n: int
    mean: float
    std: float | None
    identical: bool
    ci: Interval | None
    bootstrap_ci: Interval | None
    t_pvalue: float | None
    t_note: str | None
    wilcoxon_pvalue: float | None
    wilcoxon_note: str | None
    wins: float
    seeds_needed: int | None
    seeds_needed_note: str | None


def _bootstrap_interval(
    differences: FloatArray, confidence: float, resamples: int, seed: int
) -> Interval:
    """Percentile interval of the mean of ``differences`` resampled with replacement.

    The indices are exactly those of ``numpy.random.default_rng(seed).integers(0, n,
    size=(resamples, n))`` (row ``r`` is resample ``r``); they are drawn in chunks of rows,
    which gives the same stream. The bounds are ``numpy.percentile`` (linear interpolation)
    of the resample means at ``50 − 50·confidence`` and ``50 + 50·confidence`` (2.5, 97.5).
    """
    n = differences.size
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CHUNK // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        index = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = differences[index].mean(axis=1)
    low, high = np.percentile(means, [50.0 - 50.0 * confidence, 50.0 + 50.0 * confidence])
    return Interval(float(low), float(high))


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    higher_is_better: bool,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedDifference:
    """Compare configuration ``a`` with ``b`` on the per-seed differences ``a[i] − b[i]``.

    ``a[i]`` and ``b[i]`` must come from the same seed. With ``d = a − b``:

    - ``mean``, ``std``: mean and sample std (``ddof=1``) of ``d``.
    - ``ci``: Student-t interval of the mean difference, ``n − 1`` degrees of freedom.
    - ``bootstrap_ci``: percentile interval of the mean difference. Seeds are resampled with
      replacement, ``resamples`` times, with indices from
      ``numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))`` (one row per
      resample); the bounds are ``numpy.percentile`` (linear) of the resample means at
      ``50 − 50·confidence`` and ``50 + 50·confidence``. This is the resampling that
      ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` does, so both agree
      when given the same seed.
    - ``t_pvalue``: two-sided paired t-test, ``scipy.stats.ttest_rel(a, b)``.
    - ``wilcoxon_pvalue``: two-sided Wilcoxon signed-rank test on ``d`` with the exact null
      distribution (``scipy.stats.wilcoxon(d, method="exact")``); zero differences are
      dropped (``zero_method="wilcox"``), and tied ``|d|`` get average ranks, for which the
      exact distribution is only approximate.
    - ``wins``: fraction of seeds on which ``a`` is better than ``b`` (greater when
      ``higher_is_better``, smaller otherwise), a tie counting as half a win.
    - ``seeds_needed``: :func:`seeds_for_power` of the observed ``mean`` and ``std``: the
      number of seeds for 80 % power at alpha 0.05 to detect a true difference of the observed
      size with a two-sided paired t-test. The observed effect of a configuration picked as the
      best is biased upward, so read it as a rough planning figure.

    Edge cases (no field is ever NaN; ``None`` comes with a note in words):
        - ``n < 2``: ``std``, ``ci``, ``bootstrap_ci``, ``t_pvalue`` and ``seeds_needed``
          are ``None``; ``identical`` is ``False`` (one difference says nothing about spread).
        - Identical differences (every seed's difference is the same number ``c``, up to
          floating rounding, see the module docstring; this includes all zero):
          ``identical`` is ``True``, ``std`` is ``0.0``, ``ci`` and ``bootstrap_ci`` are
          ``[c, c]``, and ``seeds_needed`` is ``None``. ``t_pvalue`` is ``1.0`` when ``c == 0``
          (no evidence of a difference) and ``None`` otherwise (zero spread: t is undefined;
          scipy would answer t = ±inf, p = 0).
        - Wilcoxon: ``None`` when ``n < WILCOXON_MIN_N`` (the exact test cannot reach
          p < 0.05) or when every difference is 0. When some differences are 0 the note
          says how many were dropped.
        - Ties: a difference within floating rounding of 0 counts as a tie (half a win, and
          a zero for the Wilcoxon test).
        - ``seeds_needed`` is ``None`` when the mean difference is 0, when the differences are
          identical (zero std), when ``n < 2``, or when more than 100 000 seeds would be needed.

    Example:
        >>> a = [0.912, 0.905, 0.921, 0.899, 0.910, 0.915]
        >>> b = [0.901, 0.899, 0.915, 0.902, 0.897, 0.906]
        >>> d = paired_difference(a, b, higher_is_better=True)
        >>> d.n, round(d.mean, 4), d.identical, round(d.wins, 3)
        (6, 0.007, False, 0.833)
        >>> round(d.ci.low, 4), round(d.ci.high, 4)
        (0.0011, 0.0129)
        >>> round(d.bootstrap_ci.low, 4), round(d.bootstrap_ci.high, 4)
        (0.0025, 0.0105)
        >>> round(d.t_pvalue, 4), round(d.wilcoxon_pvalue, 4), d.seeds_needed
        (0.0284, 0.0625, 8)
        >>> short = paired_difference([0.91, 0.88, 0.93], [0.90, 0.87, 0.92], True)
        >>> short.identical, round(short.ci.low, 4), round(short.ci.high, 4)
        (True, 0.01, 0.01)
        >>> short.t_pvalue is None, short.t_note
        (True, "every seed's difference is 0.01: with zero spread the t statistic is undefined")
        >>> short.wilcoxon_pvalue is None
        True
        >>> short.wilcoxon_note
        'needs at least 6 seeds (have 3): with fewer the exact test cannot reach p < 0.05'

    Args:
        a: The metric of the first configuration on each seed.
        b: The metric of the second configuration on the same seeds, in the same order.
        higher_is_better: Direction of the metric (``True`` for accuracy, ``False`` for
            loss or calibration error); it only affects ``wins``.
        confidence: Coverage of both intervals, strictly between 0 and 1.
        resamples: Number of bootstrap resamples, at least 1.
        seed: Seed of the bootstrap's random generator.

    Returns:
        A :class:`PairedDifference`.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, are empty, or hold NaN or infinity;
            ``a − b`` overflows float64; or ``confidence`` or ``resamples`` is out of range.
    """
    check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples!r}")
    a_arr, b_arr = paired_arrays({"a": a, "b": b})
    n = int(a_arr.size)
    with np.errstate(over="ignore"):
        diff = a_arr - b_arr
    if not np.all(np.isfinite(diff)):
        raise ValueError("a − b overflows float64")
    tol = rounding_tolerance(a_arr, b_arr)
    is_zero = np.abs(diff) <= tol
    all_zero = bool(np.all(is_zero))

    # wins: a better than b in the metric's direction, ties half.
    better = diff > 0 if higher_is_better else diff < 0
    wins = float((np.sum(better & ~is_zero) + 0.5 * np.sum(is_zero)) / n)
    wilcoxon_pvalue, wilcoxon_note = _wilcoxon(diff, is_zero)
    tests = {"wins": wins, "wilcoxon_pvalue": wilcoxon_pvalue, "wilcoxon_note": wilcoxon_note}
    if n < 2:
        few = f"needs at least 2 seeds (have {n})"
        return PairedDifference(
            n=n,
            mean=0.0 if all_zero else float(diff[0]),
            std=None,
            identical=False,
            ci=None,
            bootstrap_ci=None,
            t_pvalue=None,
            t_note=few,
            seeds_needed=None,
            seeds_needed_note=few,
            **tests,
        )
    if all_zero or float(np.ptp(diff)) <= tol:
        return _identical(diff, all_zero, tests)
    mean = float(np.mean(diff))
    std = float(np.std(diff, ddof=1))
    t_pvalue: float | None = float(_st.ttest_rel(a_arr, b_arr).pvalue)
    t_note = None
    if not math.isfinite(t_pvalue):  # not expected once identical differences are handled
        t_pvalue = None
        t_note = "scipy.stats.ttest_rel returned NaN"
    seeds_needed, seeds_needed_note = _seeds_needed(mean, std)
    return PairedDifference(
        n=n,
        mean=mean,
        std=std,
        identical=False,
        ci=t_interval(mean, std, n, confidence),
        bootstrap_ci=_bootstrap_interval(diff, confidence, resamples, seed),
        t_pvalue=t_pvalue,
        t_note=t_note,
        seeds_needed=seeds_needed,
        seeds_needed_note=seeds_needed_note,
        **tests,
    )


def _wilcoxon(diff: FloatArray, is_zero: npt.NDArray[np.bool_]) -> tuple[float | None, str | None]:
    """The exact two-sided signed-rank test of ``diff`` (``is_zero`` marks ties), and its note."""
    n = int(diff.size)
    n_zero = int(np.sum(is_zero))
    if n < WILCOXON_MIN_N:
        return None, (
            f"needs at least {WILCOXON_MIN_N} seeds (have {n}): "
            "with fewer the exact test cannot reach p < 0.05"
        )
    if n_zero == n:
        return None, "every difference is 0: the signed-rank test has nothing to rank"
    cleaned = np.where(is_zero, 0.0, diff)
    pvalue = float(_st.wilcoxon(cleaned, method="exact").pvalue)
    if not n_zero:
        return pvalue, None
    left = n - n_zero
    note = f"{n_zero} of {n} differences are 0 and were dropped, leaving {left}"
    if left < WILCOXON_MIN_N:
        note += f": with fewer than {WILCOXON_MIN_N} the exact test cannot reach p < 0.05"
    return pvalue, note


def _identical(diff: FloatArray, all_zero: bool, tests: dict[str, Any]) -> PairedDifference:
    """The result for differences that are the same on every seed (up to rounding)."""
    mean = 0.0 if all_zero else float(np.mean(diff))
    point = Interval(mean, mean)
    if all_zero:
        t_pvalue: float | None = 1.0
        t_note = "every difference is 0: no evidence of a difference, p = 1"
    else:
        t_pvalue = None
        t_note = (
            f"every seed's difference is {mean:.6g}: with zero spread the t statistic is undefined"
        )
    return PairedDifference(
        n=int(diff.size),
        mean=mean,
        std=0.0,
        identical=True,
        ci=point,
        bootstrap_ci=point,
        t_pvalue=t_pvalue,
        t_note=t_note,
        seeds_needed=None,
        seeds_needed_note="the differences have zero spread: no power analysis needed",
        **tests,
    )


def _seeds_needed(mean: float, std: float) -> tuple[int | None, str | None]:
    """:func:`seeds_for_power` of the observed difference, or why there is no such number."""
    if mean == 0.0:
        return None, "the mean difference is 0: no number of seeds detects it"
    seeds_needed = seeds_for_power(mean, std)
    if seeds_needed is None:
        return None, "more than 100000 seeds would be needed for 80 % power at alpha 0.05"
    return seeds_needed, None
