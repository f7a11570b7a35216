"""Paired statistics over seeds, for comparing configurations.

Every configuration of a study is trained on the same list of seeds, so two configurations
are compared seed by seed: the difference ``a[i] − b[i]`` of the two values measured with
seed ``i`` removes the part of the seed-to-seed noise that the two runs share. This module
turns such per-seed values into intervals, p-values, win rates and a power estimate.

Plain numbers in, plain numbers out: it depends on numpy and scipy only (never on torch or
optuna), takes sequences of floats and returns frozen dataclasses of ``float``/``int``/``None``.
No field is ever NaN: where a quantity is undefined it is ``None``, and a ``*_note`` field
says why in words.

Floating-point rounding: differences of metric values such as ``0.91 − 0.90`` and
``0.51 − 0.50`` are not bit-for-bit equal in binary floating point. Values (or differences)
whose spread is within floating rounding of the inputs, ``8 · eps · max|input|`` with
``eps`` the float64 machine epsilon, are therefore treated as equal: they count as
"identical"/"zero variance", and a difference that small counts as a tie. Without this,
two configurations that differ by exactly one percentage point on every seed would get a
standard deviation of ``1e-18`` and a t-test p-value of ``1e-30``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "WILCOXON_MIN_N",
    "Effect",
    "Interval",
    "PairedDifference",
    "Summary",
    "TwoByTwo",
    "holm",
    "paired_difference",
    "seeds_for_power",
    "summarize",
    "two_by_two",
]

CONFIDENCE = 0.95
"""Default coverage of every confidence interval."""

BOOTSTRAP_RESAMPLES = 10_000
"""Default number of bootstrap resamples."""

BOOTSTRAP_SEED = 0
"""Default seed of the bootstrap's ``numpy.random.Generator``: the intervals are deterministic."""

WILCOXON_MIN_N = 6
"""Fewest nonzero differences for which the exact two-sided Wilcoxon test can give p < 0.05.

With ``n`` nonzero differences the smallest exact two-sided p-value is ``2 / 2**n``:
0.0625 for ``n = 5`` and 0.03125 for ``n = 6``.
"""

# Spread allowed between values that are equal up to floating rounding, in units of
# eps * max|input|. Differences k/N − (k − s)/N of exactly representable-looking metric
# values spread by at most ~1.4 eps * max|input| in practice; 8 leaves a margin.
_ROUNDING_ULPS = 8.0
# The same for the 2×2 effects, which combine up to four cells (three roundings).
_EFFECT_ROUNDING_ULPS = 16.0

# Bootstrap resamples are drawn in chunks of at most this many indices to bound memory.
_BOOTSTRAP_CHUNK = 1_000_000

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Interval:
    """A closed interval ``[low, high]``."""

    low: float
    high: float


@dataclass(frozen=True)
class Summary:
    """One cell's values over seeds: count, mean, sample standard deviation and t interval."""

    n: int
    mean: float
    std: float | None  # sample std (ddof=1); None when n < 2
    ci: Interval | None  # t interval with n − 1 df; None when n < 2; [mean, mean] when std == 0


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


@dataclass(frozen=True)
class Effect:
    """One effect of a 2×2 comparison: its value on every seed and their summary."""

    per_seed: list[float]
    summary: Summary


@dataclass(frozen=True)
class TwoByTwo:
    """Main effects, interaction and simple effects of two factors, per seed.

    Cells: ``a`` = base, ``b`` = first factor changed, ``c`` = second factor changed,
    ``d`` = both changed. ``total`` equals ``first_simple + second_simple + interaction``
    on every seed (up to float rounding).
    """

    first_main: Effect  # per seed (b + d − a − c) / 2
    second_main: Effect  # per seed (c + d − a − b) / 2
    interaction: Effect  # per seed (d − c) − (b − a)
    first_simple: Effect  # per seed b − a: the first factor at the second's base level
    second_simple: Effect  # per seed c − a: the second factor at the first's base level
    total: Effect  # per seed d − a


# --------------------------------------------------------------------------- helpers


def _as_values(values: Sequence[float], name: str) -> FloatArray:
    """``values`` as a 1-D float64 array; ValueError when empty, not 1-D or not finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: need at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains a non-finite value (NaN or infinity): {values!r}")
    return array


def _paired(arrays: dict[str, Sequence[float]]) -> list[FloatArray]:
    """Validate several per-seed sequences and check they have one value per seed each."""
    out = [_as_values(values, name) for name, values in arrays.items()]
    lengths = {name: len(array) for name, array in zip(arrays, out, strict=True)}
    if len(set(lengths.values())) != 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"paired values need one value per seed each; {described}")
    return out


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _rounding_tolerance(*arrays: FloatArray, ulps: float = _ROUNDING_ULPS) -> float:
    """How far apart values derived from ``arrays`` may be and still count as equal."""
    scale = max(float(np.max(np.abs(array))) for array in arrays)
    return ulps * float(np.finfo(np.float64).eps) * scale


def _t_interval(mean: float, std: float, n: int, confidence: float) -> Interval:
    if std == 0.0:
        return Interval(mean, mean)
    half = float(_st.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return Interval(mean - half, mean + half)


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


def _power(n: int, effect_size: float, alpha: float) -> float:
    """Power of the two-sided one-sample t-test with ``n`` observations (effect_size >= 0)."""
    df = n - 1
    t_crit = float(_st.t.ppf(1.0 - alpha / 2.0, df))
    nc = math.sqrt(n) * effect_size
    upper = float(_st.nct.sf(t_crit, df, nc))
    lower = float(_st.nct.cdf(-t_crit, df, nc))
    if not math.isfinite(lower):
        # scipy returns NaN for this far tail when nc is large (seen for nc > 6.3 only).
        # P(T < −t_crit) <= P(Z < −nc) = Φ(−nc) < 2e-10 there, so it is taken as 0.
        lower = 0.0
    if not math.isfinite(upper):  # not seen in scipy 1.17; never let NaN reach a comparison
        raise ArithmeticError(f"noncentral t tail is not finite for n={n}, nc={nc}")
    return upper + lower


# --------------------------------------------------------------------------- public API


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Summarize one cell's values over seeds: mean, sample std and Student-t interval.

    The rule: ``mean`` is the arithmetic mean, ``std`` the sample standard deviation
    (``ddof=1``), and ``ci`` the two-sided Student-t interval
    ``mean ± t_{(1+confidence)/2, n−1} · std / √n``, the same as
    ``scipy.stats.t.interval(confidence, n − 1, loc=mean, scale=std / √n)``.

    Edge cases:
        - ``n < 2``: ``std`` and ``ci`` are ``None`` (one value says nothing about spread).
        - Zero variance (all values equal, up to floating rounding as described in the module
          docstring): ``std`` is ``0.0`` and ``ci`` is ``[mean, mean]``; when the values are
          exactly equal, ``mean`` is that value (not a rounded average of copies of it).

    Example:
        >>> s = summarize([1.0, 2.0, 3.0, 4.0])
        >>> s.n, s.mean, round(s.std, 4)
        (4, 2.5, 1.291)
        >>> round(s.ci.low, 4), round(s.ci.high, 4)
        (0.4457, 4.5543)
        >>> summarize([0.7]).std is None
        True
        >>> summarize([0.1, 0.1, 0.1]).ci
        Interval(low=0.1, high=0.1)

    Args:
        values: The metric on each seed.
        confidence: Coverage of the interval, strictly between 0 and 1.

    Returns:
        A :class:`Summary`; no field is NaN.

    Raises:
        ValueError: ``values`` is empty or holds NaN or infinity, or ``confidence`` is not
            in (0, 1).
    """
    _check_confidence(confidence)
    array = _as_values(values, "values")
    return _summarize(array, confidence, _rounding_tolerance(array))


def _summarize(array: FloatArray, confidence: float, tol: float) -> Summary:
    """:func:`summarize` of a validated array; a spread within ``tol`` counts as zero."""
    n = int(array.size)
    # Exactly equal values: their mean is that value, not a rounded average of copies of it.
    constant = bool(np.all(array == array[0]))
    mean = float(array[0]) if constant else float(np.mean(array))
    if n < 2:
        return Summary(n=n, mean=mean, std=None, ci=None)
    std = 0.0 if float(np.ptp(array)) <= tol else float(np.std(array, ddof=1))
    return Summary(n=n, mean=mean, std=std, ci=_t_interval(mean, std, n, confidence))


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
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples!r}")
    a_arr, b_arr = _paired({"a": a, "b": b})
    n = int(a_arr.size)
    with np.errstate(over="ignore"):
        diff = a_arr - b_arr
    if not np.all(np.isfinite(diff)):
        raise ValueError("a − b overflows float64")
    tol = _rounding_tolerance(a_arr, b_arr)
    is_zero = np.abs(diff) <= tol
    all_zero = bool(np.all(is_zero))

    # wins: a better than b in the metric's direction, ties half.
    better = diff > 0 if higher_is_better else diff < 0
    wins = float((np.sum(better & ~is_zero) + 0.5 * np.sum(is_zero)) / n)

    # Wilcoxon signed-rank, exact.
    wilcoxon_pvalue: float | None = None
    wilcoxon_note: str | None = None
    n_zero = int(np.sum(is_zero))
    if n < WILCOXON_MIN_N:
        wilcoxon_note = (
            f"needs at least {WILCOXON_MIN_N} seeds (have {n}): "
            "with fewer the exact test cannot reach p < 0.05"
        )
    elif all_zero:
        wilcoxon_note = "every difference is 0: the signed-rank test has nothing to rank"
    else:
        cleaned = np.where(is_zero, 0.0, diff)
        result = _st.wilcoxon(cleaned, method="exact")
        wilcoxon_pvalue = float(result.pvalue)
        if n_zero:
            left = n - n_zero
            wilcoxon_note = (
                f"{n_zero} of {n} differences are 0 and were dropped, leaving {left}"
                + (
                    f": with fewer than {WILCOXON_MIN_N} the exact test cannot reach p < 0.05"
                    if left < WILCOXON_MIN_N
                    else ""
                )
            )

    if n < 2:
        mean = 0.0 if all_zero else float(diff[0])
        few = f"needs at least 2 seeds (have {n})"
        return PairedDifference(
            n=n,
            mean=mean,
            std=None,
            identical=False,
            ci=None,
            bootstrap_ci=None,
            t_pvalue=None,
            t_note=few,
            wilcoxon_pvalue=wilcoxon_pvalue,
            wilcoxon_note=wilcoxon_note,
            wins=wins,
            seeds_needed=None,
            seeds_needed_note=few,
        )

    identical = all_zero or float(np.ptp(diff)) <= tol
    if identical:
        mean = 0.0 if all_zero else float(np.mean(diff))
        point = Interval(mean, mean)
        if all_zero:
            t_pvalue: float | None = 1.0
            t_note: str | None = "every difference is 0: no evidence of a difference, p = 1"
        else:
            t_pvalue = None
            t_note = (
                f"every seed's difference is {mean:.6g}: with zero spread "
                "the t statistic is undefined"
            )
        return PairedDifference(
            n=n,
            mean=mean,
            std=0.0,
            identical=True,
            ci=point,
            bootstrap_ci=point,
            t_pvalue=t_pvalue,
            t_note=t_note,
            wilcoxon_pvalue=wilcoxon_pvalue,
            wilcoxon_note=wilcoxon_note,
            wins=wins,
            seeds_needed=None,
            seeds_needed_note="the differences have zero spread: no power analysis needed",
        )

    mean = float(np.mean(diff))
    std = float(np.std(diff, ddof=1))
    ci = _t_interval(mean, std, n, confidence)
    bootstrap_ci = _bootstrap_interval(diff, confidence, resamples, seed)

    t_pvalue = float(_st.ttest_rel(a_arr, b_arr).pvalue)
    t_note = None
    if not math.isfinite(t_pvalue):  # not expected once identical differences are handled
        t_pvalue = None
        t_note = "scipy.stats.ttest_rel returned NaN"

    seeds_needed: int | None = None
    seeds_needed_note: str | None = None
    if mean == 0.0:
        seeds_needed_note = "the mean difference is 0: no number of seeds detects it"
    else:
        seeds_needed = seeds_for_power(mean, std)
        if seeds_needed is None:
            seeds_needed_note = (
                "more than 100000 seeds would be needed for 80 % power at alpha 0.05"
            )

    return PairedDifference(
        n=n,
        mean=mean,
        std=std,
        identical=False,
        ci=ci,
        bootstrap_ci=bootstrap_ci,
        t_pvalue=t_pvalue,
        t_note=t_note,
        wilcoxon_pvalue=wilcoxon_pvalue,
        wilcoxon_note=wilcoxon_note,
        wins=wins,
        seeds_needed=seeds_needed,
        seeds_needed_note=seeds_needed_note,
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values.

    The rule: with the ``m`` p-values sorted ascending, ``p_(1) <= … <= p_(m)``, the adjusted
    value of ``p_(i)`` is ``min(1, max_{j <= i} (m − j + 1) · p_(j))``; results are returned
    in the original order. Rejecting every hypothesis whose adjusted p-value is below alpha
    controls the family-wise error rate at alpha. This is the algorithm of statsmodels'
    ``multipletests(method="holm")``.

    Edge cases:
        - ``None`` entries (tests that could not be run) stay ``None`` and are not counted
          in ``m``.
        - Equal p-values keep their input order in the sort (it does not change the result).
        - An empty input, or only ``None``, gives the same back.
        - The adjusted values are monotone in the raw ones and never exceed 1.

    Example:
        >>> [round(p, 4) for p in holm([0.01, 0.04, 0.03, 0.005])]
        [0.03, 0.06, 0.06, 0.02]
        >>> holm([0.02, None, 0.5])
        [0.04, None, 0.5]

    Args:
        pvalues: Raw p-values, each in [0, 1], or ``None``.

    Returns:
        The adjusted p-values, one per input, in the input order.

    Raises:
        ValueError: a p-value is NaN or outside [0, 1].
    """
    present = [(i, p) for i, p in enumerate(pvalues) if p is not None]
    for i, p in present:
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ValueError(f"p-value {i} must lie in [0, 1], got {p!r}")
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(present, key=lambda item: item[1])):
        running = max(running, min(1.0, (m - rank) * float(p)))
        adjusted[i] = running
    return adjusted


def seeds_for_power(
    mean_difference: float,
    std_difference: float,
    power: float = 0.8,
    alpha: float = 0.05,
    max_n: int = 100_000,
) -> int | None:
    """Seeds needed for a two-sided paired t-test to detect a difference with given power.

    The rule: the smallest ``n >= 2`` whose power reaches ``power``, where with
    ``t_crit = t.ppf(1 − alpha/2, n − 1)`` and the test statistic
    ``T ~ scipy.stats.nct(df=n − 1, nc=√n · mean_difference / std_difference)``,
    power is ``P(T > t_crit) + P(T < −t_crit)``. It is the same for ``±mean_difference``.
    Power grows with ``n``, so the search doubles ``n`` until the power is reached and then
    bisects: about ``2 · log2(n)`` evaluations.

    Edge cases:
        - ``None`` when ``mean_difference == 0`` (power never exceeds alpha), when
          ``std_difference <= 0`` (no spread: a power analysis means nothing), or when no
          ``n <= max_n`` reaches ``power``.
        - ``2`` when two seeds already suffice (very large effects; ``n = 1`` has no test).
        - Where scipy's noncentral t returns NaN for the far lower tail (large ``nc``), that
          tail, which is below ``Φ(−nc) < 2e-10`` there, is taken as 0.

    Example:
        >>> seeds_for_power(0.5, 1.0)
        34
        >>> seeds_for_power(-0.01, 0.01)
        10
        >>> seeds_for_power(0.0, 1.0) is None
        True

    Args:
        mean_difference: The true mean of the per-seed differences to detect.
        std_difference: The standard deviation of the per-seed differences.
        power: Target power, strictly between 0 and 1.
        alpha: Two-sided significance level, strictly between 0 and 1.
        max_n: Largest number of seeds considered, at least 2.

    Returns:
        The number of seeds, or ``None``.

    Raises:
        ValueError: an argument is out of range or not finite.
    """
    if not (math.isfinite(mean_difference) and math.isfinite(std_difference)):
        raise ValueError("mean_difference and std_difference must be finite")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie strictly between 0 and 1, got {power!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if max_n < 2:
        raise ValueError(f"max_n must be at least 2, got {max_n!r}")
    if mean_difference == 0.0 or std_difference <= 0.0:
        return None
    effect_size = abs(mean_difference) / std_difference

    def enough(n: int) -> bool:
        return _power(n, effect_size, alpha) >= power

    if enough(2):
        return 2
    low = 2  # power not reached
    high = 4
    while True:
        high = min(high, max_n)
        if enough(high):
            break
        if high == max_n:
            return None
        low, high = high, 2 * high
    while high - low > 1:  # enough(high) and not enough(low)
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle
    return high


def _effect(per_seed: FloatArray, tol: float) -> Effect:
    if not np.all(np.isfinite(per_seed)):
        raise ValueError("an effect of the 2×2 design overflows float64")
    return Effect(
        per_seed=[float(v) for v in per_seed], summary=_summarize(per_seed, CONFIDENCE, tol)
    )


def two_by_two(
    a: Sequence[float], b: Sequence[float], c: Sequence[float], d: Sequence[float]
) -> TwoByTwo:
    """Effects of two factors and their interaction from a 2×2 design, per seed.

    The cells are ``a`` = base, ``b`` = first factor changed, ``c`` = second factor changed,
    ``d`` = both changed, each the per-seed values of one metric, paired by seed. Per seed:

    - ``first_main = ((b − a) + (d − c)) / 2``: the first factor averaged over the second's
      levels (= ``(b + d − a − c) / 2``); ``second_main = ((c − a) + (d − b)) / 2``.
    - ``interaction = (d − c) − (b − a)``: how much more the first factor does when the
      second is changed (symmetric: also ``(d − b) − (c − a)``).
    - ``first_simple = b − a``, ``second_simple = c − a``: each factor alone, at the other's
      base level.
    - ``total = d − a``, which equals ``first_simple + second_simple + interaction``.

    Each effect carries its per-seed values and a :func:`summarize` of them (mean, std and
    t interval). For a paired test of an effect against 0, pass its ``per_seed`` and zeros to
    :func:`paired_difference`.

    Edge cases:
        - One seed: every summary has ``std`` and ``ci`` ``None``.
        - An effect that is the same on every seed (up to floating rounding): ``std`` 0 and
          ``ci`` ``[mean, mean]``.

    Example:
        >>> t = two_by_two([0.80, 0.82], [0.85, 0.86], [0.81, 0.83], [0.90, 0.91])
        >>> [round(v, 3) for v in t.first_main.per_seed]
        [0.07, 0.06]
        >>> [round(v, 3) for v in t.interaction.per_seed]
        [0.04, 0.04]
        >>> round(t.total.summary.mean, 3)
        0.095

    Args:
        a: Base cell, one value per seed.
        b: First factor changed.
        c: Second factor changed.
        d: Both changed.

    Returns:
        A :class:`TwoByTwo`.

    Raises:
        ValueError: the cells differ in length, are empty, or hold NaN or infinity, or an
            effect overflows float64.
    """
    a_arr, b_arr, c_arr, d_arr = _paired({"a": a, "b": b, "c": c, "d": d})
    # The effects combine up to four cells, so they carry more rounding than one difference.
    tol = _rounding_tolerance(a_arr, b_arr, c_arr, d_arr, ulps=_EFFECT_ROUNDING_ULPS)
    with np.errstate(over="ignore", invalid="ignore"):
        first_simple = b_arr - a_arr
        second_simple = c_arr - a_arr
        first_at_second = d_arr - c_arr
        second_at_first = d_arr - b_arr
        first_main = (first_simple + first_at_second) / 2.0
        second_main = (second_simple + second_at_first) / 2.0
        interaction = first_at_second - first_simple
        total = d_arr - a_arr
    return TwoByTwo(
        first_main=_effect(first_main, tol),
        second_main=_effect(second_main, tol),
        interaction=_effect(interaction, tol),
        first_simple=_effect(first_simple, tol),
        second_simple=_effect(second_simple, tol),
        total=_effect(total, tol),
    )
