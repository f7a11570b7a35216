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
(two configurations: :func:`paired_difference`), :mod:`lsearch.analysis.design` (power,
Holm's correction, 2×2 effects) and :mod:`lsearch.analysis.sequential` (the anytime-valid
interval for racing seeds: :func:`sequential_interval`).

Values within floating rounding of each other count as equal: the rule is in
:mod:`lsearch.analysis.summary`.
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
from lsearch.analysis.sequential import far_seeds as far_seeds
from lsearch.analysis.sequential import fewest_deciding_seeds as fewest_deciding_seeds
from lsearch.analysis.sequential import seeds_to_decide as seeds_to_decide
from lsearch.analysis.sequential import sequential_interval as sequential_interval
from lsearch.analysis.sequential import sequential_multiplier as sequential_multiplier
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
    "far_seeds",
    "fewest_deciding_seeds",
    "holm",
    "paired_difference",
    "seeds_for_power",
    "seeds_to_decide",
    "sequential_interval",
    "sequential_multiplier",
    "summarize",
    "two_by_two",
]
