"""The catalog: every name lsearch writes into a storage, defined once.

Study attrs, trial user attrs and system attrs are stable, documented names (see
docs/study-files.md and docs/operations.md): optuna-dashboard, the `optuna` CLI and
`optuna.load_study` read them without lsearch. Everything that reads or writes one imports it
from here.

>>> SPEC_ATTR
'lsearch_spec'
>>> [state.name for state in FINISHED]
['COMPLETE', 'PRUNED']
"""

from __future__ import annotations

from optuna.trial import TrialState

# Trial states a search counts as done: a pruned trial is a finished answer, not a failure.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# The states `lsearch status` counts, in the order it shows them.
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

# ---- study user attrs: what a study is and where it came from
SPEC_ATTR = "lsearch_spec"  # the study file as resolved, JSON
FINGERPRINT_ATTR = "lsearch_spec_fingerprint"  # what must match for a worker to join
PRODUCED_BY_ATTR = "lsearch_produced_by"  # lsearch, torch and optuna versions
KIND_ATTR = "lsearch_kind"  # "search" or "comparison"; absent on a search of 0.1.0
# a comparison's request: the search it came from, its grid, base configuration, seeds, metrics
SEARCH_STUDY_ATTR = "lsearch_search_study"
TEST_COUNT_ATTR = "lsearch_test_configurations"  # configurations measured on the test set
GRID_ATTR = "lsearch_grid"
BASE_ATTR = "lsearch_base"
SEEDS_ATTR = "lsearch_seeds"
METRICS_ATTR = "lsearch_metrics"

# ---- trial user attrs written by the search loop and its helpers
FAIL_REASON_ATTR = "fail_reason"  # one line: why the trial failed
OUT_OF_MEMORY_ATTR = "out_of_memory"  # True on a trial that failed out of device memory
DUPLICATE_ATTR = "duplicate_of"  # the trial number that already has this configuration
HEARTBEAT_ATTR = "lsearch_heartbeat"  # liveness stamp, read on each observer's own clock
CHECKPOINT_ATTR = "checkpoint"  # pointer to the last verified checkpoint
CHECKPOINT_PENDING_ATTR = "checkpoint_pending"  # the file being written, named before it exists
CHECKPOINT_WARNING_ATTR = "checkpoint_warning"  # why a checkpoint could not be written

# ---- written by lsearch 0.1.0 and still read (lsearch deletes nothing of the user's)
WORKERS_STUDY = "lsearch:workers"  # the registry study 0.1.0 added to every storage
TOKEN_ATTR = "lsearch_create_token"  # marks the process that created a study
