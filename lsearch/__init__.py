"""lsearch: hyperparameter search for label smoothing, as an Optuna study.

The Python API: what each `lsearch` command does, as a function (the CLI is a thin layer
over these). Importing lsearch imports neither torch nor Optuna; each function imports what
it needs when called. (`lsearch bench` is `bench_speed`, `bench_seeds` and `bench_pruning`
here: the name `lsearch.bench` is the package that measures.)

>>> import lsearch
>>> lsearch.load_study_file("digits", {"train.batch_size": 64}).train.batch_size
64
"""

from lsearch.api import (
    BestTrials,
    ComparisonResult,
    Interrupted,
    StorageUnavailable,
    UserError,
    bench_pruning,
    bench_seeds,
    bench_speed,
    best,
    compare,
    doctor,
    evaluate,
    export,
    load_study_file,
    report,
    run,
    status,
)

__version__ = "0.1.0"

__all__ = [
    "BestTrials",
    "ComparisonResult",
    "Interrupted",
    "StorageUnavailable",
    "UserError",
    "__version__",
    "bench_pruning",
    "bench_seeds",
    "bench_speed",
    "best",
    "compare",
    "doctor",
    "evaluate",
    "export",
    "load_study_file",
    "report",
    "run",
    "status",
]
