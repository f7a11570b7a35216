"""The catalog: every name lsearch writes into a storage, defined once.

Study attrs, trial user attrs and system attrs are stable, documented names (see
docs/study-files.md and docs/operations.md): optuna-dashboard, the `optuna` CLI and
`optuna.load_study` read them without lsearch. Everything that reads or writes one imports it
from here. So do the study kinds and the functions that find studies (by name, by kind, the
only search): a storage holds the user's studies and nothing else, and the one study lsearch
0.1.0 added to every storage (WORKERS_STUDY) is kept but never listed.

>>> SPEC_ATTR
'lsearch_spec'
>>> [state.name for state in FINISHED]
['COMPLETE', 'PRUNED']
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.study import Study, StudySummary
from optuna.trial import TrialState

from lsearch.errors import UserError

# Trial states a search counts as done: a pruned trial is a finished answer, not a failure.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# The states `lsearch status` counts, in the order it shows them.
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

# ---- study user attrs: what a study is and where it came from
SPEC_ATTR = "lsearch_spec"  # the study file as resolved, JSON
FINGERPRINT_ATTR = "lsearch_spec_fingerprint"  # what must match for a worker to join
PRODUCED_BY_ATTR = "lsearch_produced_by"  # lsearch, torch and optuna versions
KIND_ATTR = "lsearch_kind"  # SEARCH or COMPARISON (below); absent on a search of 0.1.0
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
FINAL_CHECKPOINT_ATTR = "final_checkpoint"  # the model kept after the trial (keep_final)
# what a trial trained and measured (the metrics beside them: see lsearch.search.objective)
CONFIG_ATTR = "config"  # the configuration trained, fixed values included
SEEDS_RUN_ATTR = "seeds"  # the seeds it trained, in the order of the *_per_seed lists
CHOSEN_EPOCH_ATTR = "chosen_epoch"  # the epoch whose metrics the trial reports
EPOCHS_RUN_ATTR = "epochs_run"  # the epochs it trained before it finished or was pruned

# what the trial's run was: where, how, how long, and what it resumed from
DEVICE_ATTR = "device"  # the device that trained it (a GPU by physical index and UUID)
THREADS_ATTR = "threads"  # torch threads per trial on the CPU
PRECISION_ATTR = "precision"  # float32, bfloat16 or float16
SEEDS_TOGETHER_ATTR = "seeds_together"  # whether the trial's seeds trained as one model
CHOSEN_BY_ATTR = "chosen_by"  # the metric the chosen epoch maximises ("val_acc")
BEST_EPOCH_ATTR = "best_epoch"  # the epoch of the best mean validation accuracy
EPOCHS_TRAINED_ATTR = "epochs_trained"  # epochs this trial trained itself (not resumed ones)
PRUNED_AT_EPOCH_ATTR = "pruned_at_epoch"  # the epoch the pruner stopped it at, or None
TRAIN_SECONDS_ATTR = "train_seconds"  # wall time of its training
RESUMED_FROM_TRIAL_ATTR = "resumed_from_trial"  # the trial whose checkpoint it continued
RESUMED_FROM_EPOCH_ATTR = "resumed_from_epoch"  # the epoch that checkpoint held
RESUMED_ON_OTHER_DEVICE_ATTR = "resumed_on_other_device"  # e.g. "cuda -> cpu"
CHECKPOINT_ERROR_ATTR = "checkpoint_error"  # why a checkpoint was not used (trained anew)
# a comparison's seed-run: the epoch counts read from it on the test set, and their results
TEST_AT_ATTR = "test_at"
HELD_OUT_ATTR = "held_out"
# metrics: the mean over seeds is the metric's name (`val_acc`, `test_ece`, ...); beside it
PER_SEED_SUFFIX = "_per_seed"  # `val_acc_per_seed`: one value per seed, in SEEDS_RUN_ATTR order
CURVE_PREFIX = "curve_"  # `curve_val_acc`: one list per seed, one value per epoch


def per_seed_attr(metric: str) -> str:
    """The user attr of a metric's per-seed values.

    >>> per_seed_attr("test_acc")
    'test_acc_per_seed'
    """
    return metric + PER_SEED_SUFFIX


def curve_attr(metric: str) -> str:
    """The user attr of a metric's curves (one list per seed, one value per epoch).

    >>> curve_attr("val_acc")
    'curve_val_acc'
    """
    return CURVE_PREFIX + metric


# ---- trial system attrs
RETRIED_FROM_SYSTEM_ATTR = "failed_trial"  # Optuna's: the trial a retry replaces
TOKEN_ATTR = "lsearch_create_token"  # marks a trial creation, to find it after a lost reply

# ---- written by lsearch 0.1.0 and earlier, kept (lsearch deletes nothing of the user's)
WORKERS_STUDY = "lsearch:workers"  # the registry study they added to every storage

# ---- study kinds (KIND_ATTR); a study without one is a search (0.1.0 wrote none)
SEARCH = "search"
COMPARISON = "comparison"
KINDS = (SEARCH, COMPARISON)


def study_kind(summary: StudySummary | Study) -> str:
    """SEARCH or COMPARISON, from the study's user attr `lsearch_kind`."""
    return COMPARISON if summary.user_attrs.get(KIND_ATTR) == COMPARISON else SEARCH


def is_comparison(summary: StudySummary | Study) -> bool:
    """Whether the study is a comparison's (not a search)."""
    return study_kind(summary) == COMPARISON


def user_studies(storage: BaseStorage) -> list[StudySummary]:
    """The studies of a storage in creation order, less the registry of workers a storage
    written by lsearch 0.1.0 holds (`lsearch:workers`: kept, since lsearch deletes nothing
    of the user's, but never listed, picked or counted)."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return [summary for summary in summaries if summary.study_name != WORKERS_STUDY]


def study_names(storage: BaseStorage) -> list[str]:
    """The names of the user's studies (see user_studies)."""
    return [summary.study_name for summary in user_studies(storage)]


def find_study(storage: BaseStorage, name: str) -> StudySummary | None:
    """The summary of the study named `name`, or None where there is none."""
    return next((s for s in user_studies(storage) if s.study_name == name), None)


def studies_of_kind(storage: BaseStorage, kind: str) -> list[StudySummary]:
    """The user's studies of one kind (SEARCH or COMPARISON)."""
    return [summary for summary in user_studies(storage) if study_kind(summary) == kind]


def comparisons_of(storage: BaseStorage, search_study: str) -> list[StudySummary]:
    """The comparison studies made from the search `search_study`, in name order."""
    found = [
        summary
        for summary in studies_of_kind(storage, COMPARISON)
        if summary.user_attrs.get(SEARCH_STUDY_ATTR) == search_study
    ]
    return sorted(found, key=lambda summary: summary.study_name)


def pick_study(storage: BaseStorage, name: str | None, search_only: bool = False) -> Study:
    """The named study, or, with no name, the only search study in the storage (comparison
    studies beside it do not count, so `lsearch best` keeps working after a compare).
    `search_only` refuses a comparison study even by name. Anything else is a UserError."""
    summaries = user_studies(storage)
    names = [s.study_name for s in summaries]
    searches = [s.study_name for s in summaries if not is_comparison(s)]
    if name is None:
        if len(searches) == 1:
            name = searches[0]
        elif not searches:
            raise UserError("this storage holds no search study yet; run `lsearch run` first")
        else:
            raise UserError(
                f"this storage holds several search studies ({', '.join(searches)}); "
                "pick one with --study"
            )
    if name not in names:
        known = ", ".join(names) or "none"
        raise UserError(
            f"no study named '{name}' in this storage (studies: {known}); check --study"
        )
    if search_only and name not in searches:
        raise UserError(
            f"study '{name}' is a comparison, not a search; name a search study "
            f"({', '.join(searches) or 'none'})"
        )
    return optuna.load_study(study_name=name, storage=storage)


def report_studies(storage: BaseStorage, name: str | None) -> tuple[str | None, list[str]]:
    """What `lsearch report` draws: `(search, [])` for a search study (its comparisons come
    with it), or `(None, comparisons)` for comparison studies without their search: the one
    named, or, with no name and no search in the storage, every comparison. With no name, a
    storage with several searches or no study at all is a UserError, as is an unknown name.

    A storage with only comparisons (a lone `lsearch compare`) is reported whole; with a
    search beside them, the search is (see pick_study).
    """
    summaries = user_studies(storage)
    if name is None:
        searches = [s for s in summaries if not is_comparison(s)]
        if not summaries:
            raise UserError(
                "this storage holds no study yet; run `lsearch run` or `lsearch compare` first"
            )
        if not searches:
            return None, [s.study_name for s in summaries]
        return pick_study(storage, None).study_name, []
    found = find_study(storage, name)
    if found is None:
        known = ", ".join(s.study_name for s in summaries) or "none"
        raise UserError(
            f"no study named '{name}' in this storage (studies: {known}); check --study"
        )
    return (None, [name]) if is_comparison(found) else (name, [])
