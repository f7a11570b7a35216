"""The use cases behind every `lsearch` command, as functions a notebook can call: the CLI
parses its options, calls these, and prints what they return.

One module per group: `search` (run, status, best, proxy), `comparison` (compare, evaluate),
`outputs` (report, export, dashboard), `machine` (bench, doctor), `studyfile` (study files
with overrides as a dict), `results` (what they return), `common` (range checks, worker
command lines). Importing this package imports neither torch nor Optuna.
"""

from lsearch.api.common import DEFAULT_STUDY, at_least, interrupt_message, worker_args
from lsearch.api.comparison import (
    Job,
    carry_out,
    compare,
    comparison_job,
    evaluate,
    evaluation_job,
    plan,
)
from lsearch.api.machine import (
    Checkup,
    Speed,
    bench_pruning,
    bench_seeds,
    bench_speed,
    doctor,
)
from lsearch.api.outputs import Dashboard, Export, Report, dashboard, export, report, write_atomic
from lsearch.api.results import (
    BestTrials,
    ComparisonPlan,
    ComparisonResult,
    StatusReport,
    TableData,
    top_trials,
)
from lsearch.api.search import best, count_finished, run, serve_proxy, status
from lsearch.api.studyfile import load_study_file
from lsearch.errors import StorageUnavailable, UserError
from lsearch.interrupts import Interrupted

__all__ = [
    "DEFAULT_STUDY",
    "BestTrials",
    "Checkup",
    "ComparisonPlan",
    "ComparisonResult",
    "Dashboard",
    "Export",
    "Interrupted",
    "Job",
    "Report",
    "Speed",
    "StatusReport",
    "StorageUnavailable",
    "TableData",
    "UserError",
    "at_least",
    "bench_pruning",
    "bench_seeds",
    "bench_speed",
    "best",
    "carry_out",
    "compare",
    "comparison_job",
    "count_finished",
    "dashboard",
    "doctor",
    "evaluate",
    "evaluation_job",
    "export",
    "interrupt_message",
    "load_study_file",
    "plan",
    "report",
    "run",
    "serve_proxy",
    "status",
    "top_trials",
    "worker_args",
    "write_atomic",
]
