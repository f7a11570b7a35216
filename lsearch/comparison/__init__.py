"""Comparisons of configurations over shared seeds, on the held-out test set
(`lsearch compare`, `lsearch evaluate`).

One job per module: `request` (grid and seeds text, checked, as a Request), `plan` (cells,
results found in the study, the seed-runs still to train), `race` (`--seeds auto`: the
seed-runs a race wants, its identity and cost), `run` (the comparison study, the
seed-run objective, training in the one trial loop), `results` (the numbers, test-set use,
a comparison's request from its study).
"""

from lsearch.comparison.plan import (
    OUT_OF_MEMORY_TRIES,
    Cell,
    Found,
    Key,
    Plan,
    build_cells,
    collect,
    failed_keys,
    fresh_seeds,
    key_of,
    pending_plans,
    plan_runs,
)
from lsearch.comparison.request import (
    ADVISED_SEEDS,
    ALL_METRICS,
    DEFAULT_METRICS,
    FEWEST_SEEDS,
    Request,
    check_metrics,
    check_seeds,
    comparison_name,
    comparison_request,
    evaluation_request,
    parse_grid,
    parse_seeds,
)
from lsearch.comparison.results import (
    existing_comparison,
    record_test_use,
    request_from_study,
    seconds_per_seed_epoch,
    summarise,
)
from lsearch.comparison.run import (
    NothingLeft,
    SeedRunObjective,
    SeedRunsLeft,
    open_comparison,
    run_plans,
    train_pending,
)

__all__ = [
    "ADVISED_SEEDS",
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "FEWEST_SEEDS",
    "OUT_OF_MEMORY_TRIES",
    "Cell",
    "Found",
    "Key",
    "NothingLeft",
    "Plan",
    "Request",
    "SeedRunObjective",
    "SeedRunsLeft",
    "build_cells",
    "check_metrics",
    "check_seeds",
    "collect",
    "comparison_name",
    "comparison_request",
    "evaluation_request",
    "existing_comparison",
    "failed_keys",
    "fresh_seeds",
    "key_of",
    "open_comparison",
    "parse_grid",
    "parse_seeds",
    "pending_plans",
    "plan_runs",
    "record_test_use",
    "request_from_study",
    "run_plans",
    "seconds_per_seed_epoch",
    "summarise",
    "train_pending",
]
