"""Anytime-valid intervals for racing seeds: look after every seed, stop whenever you like.

The ordinary 95 % t interval is 95 % only when the number of seeds was fixed in advance.
Looked at after every seed, and the race stopped as soon as it excludes zero, it declares a
difference that is not there far more often (about 26 % of races over looks at n = 3..30).
The t confidence sequence here (Lai 1976; Wang & Ramdas 2023, "Anytime-valid t-tests and
confidence sequences for Gaussian means with unknown variance", arXiv:2310.03722; Grünwald,
de Heide & Koolen 2024, the "safe t-test") covers the mean at every n at once, so it holds
under any stopping rule. The price is a wider interval: about 1.7 times the fixed-n one.

The rule, with ``n`` differences, mean ``m``, sample standard deviation ``s`` (``ddof=1``),
level ``alpha`` and prior scale ``g``::

    a = 1 + n·g,   r = (alpha² / a)^(1/n),   q = √((n − 1)(1 − r) / (r − 1/a)),
    interval = m ± q · s / √n,   (−inf, inf) when r ≤ 1/a or n < 2.

It is the boundary of the mixture e-value ``a^(−1/2) · ((1 + T²/ν) / (1 + T²/(ν·a)))^(n/2)``
(``T = √n·m/s`` the t statistic, ``ν = n − 1``; a N(0, g) prior on the standardized effect
and the scale-invariant prior on the standard deviation) at ``1/alpha``: by Ville's
inequality it exceeds ``1/alpha`` at some n with probability at most ``alpha``.

Depends on numpy only (and :mod:`lsearch.analysis.summary` for the shared input checks and
rounding rule); never on torch or optuna.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lsearch.analysis.summary import FloatArray, as_values, rounding_tolerance

SEQUENTIAL_ALPHA = 0.05
"""Default level: the interval misses the true mean at some look with probability <= 5 %."""

PRIOR_SCALE = 2.0
"""Default prior scale ``g`` (variance of the standardized effect under the mixture)."""

FIRST_LOOK = 5
"""Default fewest seeds before a race may decide (``q`` is finite from n = 4 at 0.05)."""

FAR_CUTOFF = 5.0
"""Default robust z-score above which :func:`far_seeds` flags a difference."""

# Consistency constant of the median absolute deviation for the Gaussian standard deviation.
_MAD_SCALE = 1.4826


def _check_level(alpha: float, prior_scale: float) -> None:
    """ValueError unless ``alpha`` is in (0, 1) and ``prior_scale`` is finite and positive."""
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if not (isinstance(prior_scale, int | float) and math.isfinite(prior_scale)):
        raise ValueError(f"prior_scale must be a finite number, got {prior_scale!r}")
    if prior_scale <= 0.0:
        raise ValueError(f"prior_scale must be greater than 0, got {prior_scale!r}")


def _multipliers(
    n: npt.NDArray[np.int64], alpha: float, prior_scale: float
) -> npt.NDArray[np.float64]:
    """``q`` for every count in ``n`` (inf where not finite), in logs.

    With ``ln r = (2 ln alpha − ln a) / n``: ``1 − r = −expm1(ln r)`` and
    ``r − 1/a = expm1(ln r + ln a) / a``, so neither difference loses digits when r is near 1
    or near 1/a; ``r ≤ 1/a`` is ``ln r + ln a ≤ 0``.
    """
    counts = np.asarray(n, dtype=np.float64)
    q = np.full(counts.shape, math.inf)
    ok = counts >= 2
    if not np.any(ok):
        return q
    m = counts[ok]
    log_a = np.log1p(m * prior_scale)
    log_r = (2.0 * math.log(alpha) - log_a) / m
    excess = log_r + log_a  # ln(r·a): positive exactly when r > 1/a
    finite = excess > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = -np.expm1(log_r) * np.exp(log_a) / np.expm1(excess)
        values = np.sqrt((m - 1.0) * ratio)
    q[ok] = np.where(finite, values, math.inf)
    return q


def sequential_multiplier(
    n: int, alpha: float = SEQUENTIAL_ALPHA, prior_scale: float = PRIOR_SCALE
) -> float:
    """The multiplier ``q`` of :func:`sequential_interval` at ``n`` differences.

    ``a = 1 + n·g``, ``r = (alpha² / a)^(1/n)``, ``q = √((n − 1)(1 − r) / (r − 1/a))``;
    ``math.inf`` when ``r ≤ 1/a`` or ``n < 2`` (the interval is then the whole line).

    Example:
        >>> round(sequential_multiplier(5), 3), round(sequential_multiplier(30), 3)
        (5.825, 3.447)
        >>> sequential_multiplier(3)
        inf

    Raises:
        ValueError: ``n`` is negative or not an integer, ``alpha`` is not in (0, 1), or
            ``prior_scale`` is not finite and positive.
    """
    _check_level(alpha, prior_scale)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return float(_multipliers(np.array([int(n)]), alpha, prior_scale)[0])


def sequential_interval(
    differences: Sequence[float],
    alpha: float = SEQUENTIAL_ALPHA,
    prior_scale: float = PRIOR_SCALE,
) -> tuple[float, float]:
    """Anytime-valid interval of the mean difference: valid however many looks, any stopping.

    The rule: with ``n`` differences, mean ``m``, sample standard deviation ``s`` (``ddof=1``)
    and ``g = prior_scale``: ``a = 1 + n·g``, ``r = (alpha² / a)^(1/n)`` (computed as
    ``exp((2 ln alpha − ln a) / n)``), ``q = √((n − 1)(1 − r) / (r − 1/a))``, and the interval
    is ``m ± q · s / √n``. It is the t confidence sequence of Lai (1976), Wang & Ramdas (2023,
    "Anytime-valid t-tests and confidence sequences for Gaussian means with unknown
    variance") and Grünwald, de Heide & Koolen (2024, the safe t-test): for Gaussian
    differences, the chance that it misses the true mean at *any* n is at most ``alpha``, so
    a race may look after every seed and stop when it likes. At ``alpha = 0.05``, ``g = 2``:
    ``q`` is 12.05 at n = 4, 5.825 at n = 5, 3.870 at n = 10 and 3.447 at n = 30 (the fixed-n
    t quantile is 2.776, 2.262, 2.045).

    Edge cases:
        - ``n < 2``, or ``r ≤ 1/a`` (n ≤ 3 at the defaults): ``(-inf, inf)``; nothing can
          be decided yet.
        - Identical differences (zero spread, up to floating rounding as in
          :mod:`lsearch.analysis.summary`): ``(m, m)`` where ``q`` is finite and
          ``(-inf, inf)`` where it is not; when exactly equal, ``m`` is that value. The
          tolerance is taken relative to the differences themselves (the metric values are
          not seen), so a spread of a few ulps of the metric gives a sliver (width ~1e-16)
          rather than a point; either way nothing is decided by rounding.

    Example:
        >>> d = [0.012, 0.008, 0.015, 0.010, 0.011, 0.009]
        >>> low, high = sequential_interval(d)
        >>> round(low, 4), round(high, 4)
        (0.0059, 0.0157)
        >>> sequential_interval([0.01, 0.02, 0.03])
        (-inf, inf)
        >>> sequential_interval([0.01] * 5)
        (0.01, 0.01)

    Args:
        differences: The per-seed differences ``a[i] − b[i]``.
        alpha: Chance of ever missing the mean, strictly between 0 and 1.
        prior_scale: The mixture's prior scale ``g``, finite and > 0; 2 keeps the seeds
            needed near their minimum over the effects that matter.

    Returns:
        ``(low, high)``, with infinite ends where nothing can be excluded yet.

    Raises:
        ValueError: ``differences`` is empty or holds NaN or infinity, ``alpha`` is not in
            (0, 1), or ``prior_scale`` is not finite and positive.
    """
    _check_level(alpha, prior_scale)
    array = as_values(differences, "differences")
    n = int(array.size)
    q = sequential_multiplier(n, alpha, prior_scale)
    if math.isinf(q):
        return (-math.inf, math.inf)
    if bool(np.all(array == array[0])):
        return (float(array[0]), float(array[0]))
    mean = float(np.mean(array))
    if float(np.ptp(array)) <= rounding_tolerance(array):
        return (mean, mean)
    half = q * float(np.std(array, ddof=1)) / math.sqrt(n)
    return (mean - half, mean + half)


def fewest_deciding_seeds(
    alpha: float = SEQUENTIAL_ALPHA, prior_scale: float = PRIOR_SCALE, at_least: int = FIRST_LOOK
) -> int:
    """The smallest ``n >= at_least`` at which ``q`` is finite: the interval can exclude a value.

    ``q`` is finite exactly when ``(n − 1) · ln(1 + n·g) > 2 ln(1/alpha)``, which grows with
    ``n``; a race should not decide before this many seeds. At ``alpha = 0.05`` ``q`` is finite
    from n = 4, so the answer is ``at_least`` = 5; at ``0.05 / 8`` (eight comparisons) it is 6.

    Example:
        >>> fewest_deciding_seeds(0.05), fewest_deciding_seeds(0.05 / 8)
        (5, 6)
        >>> fewest_deciding_seeds(0.05, at_least=2)
        4

    Raises:
        ValueError: ``alpha`` or ``prior_scale`` out of range (see
            :func:`sequential_interval`), or ``at_least`` is not a positive integer.
    """
    _check_level(alpha, prior_scale)
    if isinstance(at_least, bool) or not isinstance(at_least, int) or at_least < 1:
        raise ValueError(f"at_least must be a positive integer, got {at_least!r}")
    n = max(at_least, 2)
    while math.isinf(sequential_multiplier(n, alpha, prior_scale)):
        n += 1
    return n


def seeds_to_decide(
    mean: float,
    std: float,
    threshold: float,
    alpha: float = SEQUENTIAL_ALPHA,
    prior_scale: float = PRIOR_SCALE,
    limit: int = 10_000,
) -> int | None:
    """The fewest seeds at which the interval's half-width drops below ``threshold``.

    The smallest ``n >= 2`` with ``q_n · std / √n < threshold``: how many seeds a race needs
    before a difference of size ``threshold`` can be decided, if the observed spread stayed
    ``std``. Pass ``threshold = abs(mean)`` to ask when the observed difference itself would
    be decided. ``mean`` is checked (finite) but the rule uses only ``std`` and ``threshold``.

    Edge cases: ``None`` when ``threshold <= 0`` or when not reached by ``limit`` seeds; at
    ``std == 0`` the fewest ``n`` at which ``q`` is finite (4 at the defaults).

    Example:
        >>> seeds_to_decide(0.01, 0.01, 0.01)
        14
        >>> seeds_to_decide(0.0, 0.0, 0.01)
        4
        >>> seeds_to_decide(0.0, 1.0, 0.001) is None
        True

    Raises:
        ValueError: ``mean``, ``std`` or ``threshold`` is not finite, ``std`` is negative,
            ``limit`` is below 2, or ``alpha`` or ``prior_scale`` is out of range.
    """
    _check_level(alpha, prior_scale)
    for name, value in (("mean", mean), ("std", std), ("threshold", threshold)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if std < 0.0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise ValueError(f"limit must be an integer >= 2, got {limit!r}")
    if threshold <= 0.0:
        return None
    counts = np.arange(2, limit + 1, dtype=np.int64)
    q = _multipliers(counts, alpha, prior_scale)
    with np.errstate(invalid="ignore"):  # inf · 0 where q is infinite and std is 0
        decided = np.isfinite(q) if std == 0.0 else q * std / np.sqrt(counts) < threshold
    hits = np.flatnonzero(decided)
    return int(counts[hits[0]]) if hits.size else None


def far_seeds(differences: Sequence[float], cutoff: float = FAR_CUTOFF) -> list[int]:
    """Indices of differences far from the rest: robust z-score ``|d − median| / (1.4826·MAD)``.

    The t interval (fixed-n or anytime) assumes roughly Gaussian differences. A rare seed
    that failed badly in one arm (a diverged run, a NaN-rescued checkpoint) inflates the
    standard deviation and moves the mean, and the interval does not say so: simulated with
    5 % of one arm's seeds failing, the anytime interval misses in about 6 % of races
    instead of 2.4 %. Flag such seeds and look at them before trusting a decision. The median
    and the median absolute deviation (MAD, scaled by 1.4826 to match the standard deviation
    of Gaussian data) are not moved by a few far values, unlike the mean and ``s``.

    Edge cases: ``[]`` when ``n < 5`` (too few to call one seed unusual) or when the MAD is 0
    up to floating rounding (more than half the differences are equal: no scale to measure
    by).

    Example:
        >>> far_seeds([0.010, 0.012, 0.008, 0.011, 0.009, -0.30, 0.010])
        [5]
        >>> far_seeds([0.010, 0.012, 0.008, 0.011])
        []

    Raises:
        ValueError: ``differences`` is empty or not finite, or ``cutoff`` is not finite and
            positive.
    """
    if not (math.isfinite(cutoff) and cutoff > 0.0):
        raise ValueError(f"cutoff must be a finite number > 0, got {cutoff!r}")
    array: FloatArray = as_values(differences, "differences")
    if array.size < 5:
        return []
    deviation = np.abs(array - np.median(array))
    mad = float(np.median(deviation))
    if mad <= rounding_tolerance(array):
        return []
    return [int(i) for i in np.flatnonzero(deviation / (_MAD_SCALE * mad) > cutoff)]
