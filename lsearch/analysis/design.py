"""Planning and reading a comparison: seeds needed for a given power, Holm's correction for
many tests, and the effects of a 2×2 design per seed.

Depends on numpy and scipy only (never on torch or optuna).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from lsearch.analysis.summary import (
    CONFIDENCE,
    FloatArray,
    Summary,
    paired_arrays,
    rounding_tolerance,
    summarize_array,
)

# Spread allowed between 2×2 effects that are equal up to floating rounding, in units of
# eps * max|input|: they combine up to four cells (three roundings), so twice a difference's.
_EFFECT_ROUNDING_ULPS = 16.0


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
        per_seed=[float(v) for v in per_seed], summary=summarize_array(per_seed, CONFIDENCE, tol)
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
    a_arr, b_arr, c_arr, d_arr = paired_arrays({"a": a, "b": b, "c": c, "d": d})
    # The effects combine up to four cells, so they carry more rounding than one difference.
    tol = rounding_tolerance(a_arr, b_arr, c_arr, d_arr, ulps=_EFFECT_ROUNDING_ULPS)
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
