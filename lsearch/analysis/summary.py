"""One cell's values over seeds, and the checks and rounding rule every statistic shares.

Floating-point rounding: differences of metric values such as ``0.91 − 0.90`` and
``0.51 − 0.50`` are not bit-for-bit equal in binary floating point. Values (or differences)
whose spread is within floating rounding of the inputs, ``8 · eps · max|input|`` with
``eps`` the float64 machine epsilon, are therefore treated as equal: they count as
"identical"/"zero variance", and a difference that small counts as a tie. Without this,
two configurations that differ by exactly one percentage point on every seed would get a
standard deviation of ``1e-18`` and a t-test p-value of ``1e-30``.

Depends on numpy and scipy only (never on torch or optuna).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

CONFIDENCE = 0.95
"""Default coverage of every confidence interval."""

# Spread allowed between values that are equal up to floating rounding, in units of
# eps * max|input|. Differences k/N − (k − s)/N of exactly representable-looking metric
# values spread by at most ~1.4 eps * max|input| in practice; 8 leaves a margin.
ROUNDING_ULPS = 8.0

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


def as_values(values: Sequence[float], name: str) -> FloatArray:
    """``values`` as a 1-D float64 array; ValueError when empty, not 1-D or not finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: need at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains a non-finite value (NaN or infinity): {values!r}")
    return array


def paired_arrays(arrays: dict[str, Sequence[float]]) -> list[FloatArray]:
    """Validate several per-seed sequences and check they have one value per seed each."""
    out = [as_values(values, name) for name, values in arrays.items()]
    lengths = {name: len(array) for name, array in zip(arrays, out, strict=True)}
    if len(set(lengths.values())) != 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"paired values need one value per seed each; {described}")
    return out


def check_confidence(confidence: float) -> None:
    """ValueError unless ``confidence`` lies strictly between 0 and 1."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def rounding_tolerance(*arrays: FloatArray, ulps: float = ROUNDING_ULPS) -> float:
    """How far apart values derived from ``arrays`` may be and still count as equal."""
    scale = max(float(np.max(np.abs(array))) for array in arrays)
    return ulps * float(np.finfo(np.float64).eps) * scale


def t_interval(mean: float, std: float, n: int, confidence: float) -> Interval:
    """Student-t interval ``mean ± t · std / √n`` with ``n − 1`` df; ``[mean, mean]`` at std 0."""
    if std == 0.0:
        return Interval(mean, mean)
    half = float(_st.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return Interval(mean - half, mean + half)


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
    check_confidence(confidence)
    array = as_values(values, "values")
    return summarize_array(array, confidence, rounding_tolerance(array))


def summarize_array(array: FloatArray, confidence: float, tol: float) -> Summary:
    """:func:`summarize` of a validated array; a spread within ``tol`` counts as zero."""
    n = int(array.size)
    # Exactly equal values: their mean is that value, not a rounded average of copies of it.
    constant = bool(np.all(array == array[0]))
    mean = float(array[0]) if constant else float(np.mean(array))
    if n < 2:
        return Summary(n=n, mean=mean, std=None, ci=None)
    std = 0.0 if float(np.ptp(array)) <= tol else float(np.std(array, ddof=1))
    return Summary(n=n, mean=mean, std=std, ci=t_interval(mean, std, n, confidence))
