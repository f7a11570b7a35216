"""Paired statistics over seeds, for comparing configurations.

Every configuration of a study is trained on the same list of seeds, so two configurations
are compared seed by seed: the difference ``a[i] − b[i]`` of the two values measured with
seed ``i`` removes the part of the seed-to-seed noise that the two runs share. This module
turns such per-seed values into intervals, p-values, win rates and a power estimate.

Plain numbers in, plain numbers out: it depends on numpy and scipy only (never on torch or
optuna), takes sequences of floats and returns frozen dataclasses of ``float``/``int``/``None``.
No field is ever NaN: where a quantity is undefined it is ``None``, and a ``*_note`` field
says why in words.

This module is the one place to import them from; they live by concept in
:mod:`lsearch.analysis.summary` (one cell: :func:`summarize`), :mod:`lsearch.analysis.paired`
(two configurations: :func:`paired_difference`) and :mod:`lsearch.analysis.design` (power,
Holm's correction, 2×2 effects).

Floating-point rounding: differences of metric values such as ``0.91 − 0.90`` and
``0.51 − 0.50`` are not bit-for-bit equal in binary floating point. Values (or differences)
whose spread is within floating rounding of the inputs, ``8 · eps · max|input|`` with
``eps`` the float64 machine epsilon, are therefore treated as equal: they count as
"identical"/"zero variance", and a difference that small counts as a tie. Without this,
two configurations that differ by exactly one percentage point on every seed would get a
standard deviation of ``1e-18`` and a t-test p-value of ``1e-30``.
"""

from __future__ import annotations

from lsearch.analysis.design import Effect as Effect
from lsearch.analysis.design import TwoByTwo as TwoByTwo
from lsearch.analysis.design import holm as holm
from lsearch.analysis.design import seeds_for_power as seeds_for_power
from lsearch.analysis.design import two_by_two as two_by_two
from lsearch.analysis.paired import BOOTSTRAP_RESAMPLES as BOOTSTRAP_RESAMPLES
from lsearch.analysis.paired import BOOTSTRAP_SEED as BOOTSTRAP_SEED
from lsearch.analysis.paired import WILCOXON_MIN_N as WILCOXON_MIN_N
from lsearch.analysis.paired import PairedDifference as PairedDifference
from lsearch.analysis.paired import paired_difference as paired_difference
from lsearch.analysis.summary import CONFIDENCE as CONFIDENCE
from lsearch.analysis.summary import Interval as Interval
from lsearch.analysis.summary import Summary as Summary
from lsearch.analysis.summary import summarize as summarize

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
