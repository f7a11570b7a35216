"""Paired statistics over seeds and the verdicts they give, as plain data.

The anytime-valid interval for racing seeds is importable from here directly
(``from lsearch.analysis import sequential_interval``); the rest lives in
:mod:`lsearch.analysis.stats`.
"""

from __future__ import annotations

from lsearch.analysis.sequential import far_seeds as far_seeds
from lsearch.analysis.sequential import fewest_deciding_seeds as fewest_deciding_seeds
from lsearch.analysis.sequential import seeds_to_decide as seeds_to_decide
from lsearch.analysis.sequential import sequential_interval as sequential_interval
from lsearch.analysis.sequential import sequential_multiplier as sequential_multiplier

__all__ = [
    "far_seeds",
    "fewest_deciding_seeds",
    "seeds_to_decide",
    "sequential_interval",
    "sequential_multiplier",
]
