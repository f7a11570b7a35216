"""The names `lsearch.comparison.compare` had before it was split by job, re-exported for
importers not yet moved to `lsearch.comparison` (the CLI, the HTML report, bench). New code
imports from `lsearch.comparison`; this module goes once nothing imports it."""

from lsearch.analysis.verdict import describe as describe
from lsearch.comparison import *  # noqa: F403
from lsearch.comparison import __all__ as __all__
