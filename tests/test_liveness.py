"""Storage resilience, liveness and the trial loop, in-process: retried writes that had
committed, the short deadline of a stopping worker, the sweep of stale trials on an
observer's clock, a trial taken over by another worker, hand-backs, duplicate draws and a
storage that holds the user's studies only. The same paths run with real processes and databases in
test_workers.py and test_interrupts.py."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from lsearch import interrupts
from lsearch.search.liveness import HEARTBEAT_ATTR, StaleTrialSweeper
from lsearch.search.study import DuplicateConfiguration, check_new, open_study
from lsearch.search.trial_group import run_one
from lsearch.spec import StudySpec
from lsearch.store import resilient as resilient_module
from lsearch.store import storage as storage_module
from lsearch.store.catalog import TOKEN_ATTR, WORKERS_STUDY
from lsearch.store.catalog import user_studies as lsearch_studies
from lsearch.store.resilient import ResilientStorage


def lost_connection() -> OperationalError:
    return OperationalError("UPDATE trials ...", {}, Exception("server closed the connection"))


class Flaky:
    """A storage whose next call of `method` commits and then loses the connection (the
    reply never arrives), or loses it before committing (`commits=False`)."""

    def __init__(self, inner: InMemoryStorage, method: str, commits: bool = True) -> None:
        self.inner, self.method, self.commits = inner, method, commits
        self.calls = 0
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.inner, name)
        if name != self.method:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.armed:
                self.armed = False
                if self.commits:
                    real(*args, **kwargs)
                raise lost_connection()
            return real(*args, **kwargs)

        return call


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """A fake clock for the retry loop: sleeping advances it, and nothing waits."""
    now = [0.0]
    monkeypatch.setattr(storage_module.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(storage_module.time, "monotonic", lambda: now[0])
    interrupts.reset()
    yield now
    interrupts.reset()


def resilient(method: str, commits: bool = True) -> tuple[ResilientStorage, Flaky]:
    flaky = Flaky(InMemoryStorage(), method, commits)
    return ResilientStorage(flaky), flaky  # type: ignore[arg-type]


def test_a_trial_creation_that_committed_before_the_connection_was_lost_is_not_repeated() -> None:
    store, flaky = resilient("create_new_trial")
    study_id = store.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    trial_id = store.create_new_trial(study_id)
    (only,) = store.get_all_trials(study_id)
    assert only._trial_id == trial_id and only.state == TrialState.RUNNING
    assert only.system_attrs[TOKEN_ATTR]
    assert flaky.calls == 1, "found by its token, not created again"
    assert store.losses == 1


def test_a_trial_creation_lost_before_it_committed_is_made_once() -> None:
    store, flaky = resilient("create_new_trial", commits=False)
    study_id = store.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    store.create_new_trial(study_id)
    assert len(store.get_all_trials(study_id)) == 1 and flaky.calls == 2


def test_a_retry_of_a_template_trial_keeps_its_attrs_and_gets_a_fresh_token() -> None:
    store, _ = resilient("create_new_trial")
    study = optuna.create_study(storage=store)
    study.enqueue_trial({"x": 1.0}, user_attrs={"why": "queued"})
    (queued,) = study.trials
    assert queued.state == TrialState.WAITING and queued.user_attrs == {"why": "queued"}
    assert queued.system_attrs["fixed_params"] == {"x": 1.0}
    assert queued.system_attrs[TOKEN_ATTR]


@pytest.mark.parametrize("commits", [True, False])
def test_a_finishing_write_is_safe_to_repeat(commits: bool) -> None:
    store, _ = resilient("set_trial_state_values", commits)
    study_id = store.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    trial_id = store.create_new_trial(study_id)
    assert store.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5]) is True
    finished = store.get_trial(trial_id)
    assert finished.state == TrialState.COMPLETE and finished.values == [0.5]


def test_a_new_study_that_committed_is_found_by_name() -> None:
    store, flaky = resilient("create_new_study")
    study_id = store.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    assert store.get_study_id_from_name("s") == study_id and flaky.calls == 1


def test_a_parameter_that_committed_is_not_set_again() -> None:
    store, flaky = resilient("set_trial_param")
    study = optuna.create_study(storage=store)
    trial = study.ask()
    assert trial.suggest_float("x", 0, 1) == study.trials[0].params["x"]
    assert flaky.calls == 1


def test_every_public_storage_method_goes_through_the_retry() -> None:
    public = {
        name
        for name, member in vars(optuna.storages.BaseStorage).items()
        if callable(member) and not name.startswith("_")
    }
    assert public <= set(vars(ResilientStorage))
    assert not ResilientStorage.__abstractmethods__


class Down:
    """A storage that is unreachable for every call."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise lost_connection()

        return call


def test_a_lost_database_is_waited_for_up_to_the_reconnect_window(no_sleep: list[float]) -> None:
    store = ResilientStorage(Down(), reconnect_timeout=30)  # type: ignore[arg-type]
    with pytest.raises(OperationalError):
        store.get_all_studies()
    assert 30 <= no_sleep[0] <= 30 + resilient_module.MAX_RETRY_DELAY_S


def test_a_stopping_worker_waits_only_the_short_stop_deadline(no_sleep: list[float]) -> None:
    store = ResilientStorage(Down(), reconnect_timeout=600)  # type: ignore[arg-type]
    interrupts.request("SIGTERM")
    with pytest.raises(OperationalError):
        store.set_trial_state_values(1, TrialState.FAIL)
    assert no_sleep[0] <= resilient_module.STOP_WRITE_TIMEOUT_S + resilient_module.MAX_RETRY_DELAY_S


def test_a_bad_query_is_not_retried() -> None:
    store, flaky = resilient("get_study_id_from_name")
    flaky.armed = False
    with pytest.raises(KeyError):
        store.get_study_id_from_name("absent")
    assert flaky.calls == 1


def test_every_sqlite_connection_is_in_wal_mode_with_normal_sync(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL: readers never block the writers, and a commit costs no
    fsync (a killed worker still loses no committed write). The setting is per connection,
    so it is checked on a connection opened after the storage, from another thread too."""
    store = storage_module.open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    optuna.create_study(storage=store, study_name="s").ask()
    engine = store.inner._backend.engine  # the RDBStorage under Optuna's cache

    def pragmas() -> tuple[str, int]:
        with engine.connect() as connection:
            mode = connection.execute(text("PRAGMA journal_mode")).scalar()
            sync = connection.execute(text("PRAGMA synchronous")).scalar()
        return mode, sync

    assert pragmas() == ("wal", 1)  # 1 = NORMAL (FULL, the default, is 2)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(pragmas).result() == ("wal", 1)


# ----------------------------------------------------------------------------- liveness


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def running_trial(study: optuna.Study) -> int:
    return study.ask()._trial_id


def make_sweeper(
    study: optuna.Study, grace: float = 60
) -> tuple[StaleTrialSweeper, Clock, list[int]]:
    clock = Clock()
    requeued: list[int] = []

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        assert trial.state == TrialState.FAIL
        requeued.append(trial.number)

    return StaleTrialSweeper(study._storage, grace, on_stale, clock), clock, requeued


def test_a_trial_whose_beat_stands_still_for_the_grace_period_is_failed_and_requeued() -> None:
    study = optuna.create_study(storage=ResilientStorage(InMemoryStorage()))
    trial_id = running_trial(study)
    sweeper, clock, requeued = make_sweeper(study)
    assert sweeper.sweep(study) == []  # first seen now
    clock.now = 59.9
    assert sweeper.sweep(study) == []
    clock.now = 60.0
    assert sweeper.sweep(study) == [0] and requeued == [0]
    assert study._storage.get_trial(trial_id).state == TrialState.FAIL


def test_a_beating_trial_and_this_process_s_own_trial_are_never_stale() -> None:
    study = optuna.create_study(storage=ResilientStorage(InMemoryStorage()))
    beating, own = running_trial(study), running_trial(study)
    sweeper, clock, requeued = make_sweeper(study)
    sweeper.own.add(own)
    for beat in range(10):
        study._storage.set_trial_system_attr(beating, HEARTBEAT_ATTR, {"beat": beat})
        sweeper.sweep(study)
        clock.now += 30
    assert requeued == []


def test_a_lost_connection_voids_what_the_observer_saw_before_it() -> None:
    """After an outage longer than the grace period, the live workers' counters look old:
    they must get a full grace period to beat again."""
    storage = ResilientStorage(InMemoryStorage())
    study = optuna.create_study(storage=storage)
    running_trial(study)
    sweeper, clock, _ = make_sweeper(study)
    sweeper.sweep(study)
    clock.now = 600.0
    storage.losses += 1  # the database went away and came back meanwhile
    assert sweeper.sweep(study) == []
    clock.now = 659.0
    assert sweeper.sweep(study) == []
    clock.now = 660.0
    assert sweeper.sweep(study) == [0], "still silent a grace period after the outage"


def test_two_observers_re_queue_a_stale_trial_once() -> None:
    study = optuna.create_study(storage=ResilientStorage(InMemoryStorage()))
    running_trial(study)
    first, first_clock, first_requeued = make_sweeper(study)
    second, second_clock, second_requeued = make_sweeper(study)
    first.sweep(study), second.sweep(study)
    first_clock.now = second_clock.now = 100
    # The second observer read the trial as RUNNING before the first one failed it.
    running = study.get_trials(states=(TrialState.RUNNING,))
    first.sweep(study)
    assert second._fail(study, running[0]) is False
    assert first_requeued == [0] and second_requeued == []


# ----------------------------------------------------------------------------- the loop


def test_a_trial_failed_as_stale_meanwhile_is_dropped_quietly() -> None:
    study = optuna.create_study(storage=ResilientStorage(InMemoryStorage()))
    called: list[int] = []

    def slow_objective(trial: optuna.Trial) -> float:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # another
        trial.report(0.5, step=1)  # raises UpdateFinishedTrialError
        return 0.5

    assert run_one(study, slow_objective, [lambda s, t: called.append(t.number)], ()) == []
    assert called == []

    def finishes_anyway(trial: optuna.Trial) -> float:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return 0.5

    assert run_one(study, finishes_anyway, [], ()) == []
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


@pytest.mark.parametrize("stop", [interrupts.Interrupted("SIGINT"), KeyboardInterrupt()])
def test_an_interrupted_trial_is_handed_back_even_by_a_second_ctrl_c(
    stop: BaseException,
) -> None:
    study = optuna.create_study(storage=ResilientStorage(InMemoryStorage()))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("checkpoint", {"artifact_id": "a", "epoch": 2})
        raise stop

    with pytest.raises(type(stop)) as raised:
        run_one(study, objective, [], ())
    stopped, retry = study.trials
    assert stopped.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.params == stopped.params
    assert retry.user_attrs["checkpoint"] == {"artifact_id": "a", "epoch": 2}
    if isinstance(stop, interrupts.Interrupted):
        assert raised.value.trial_number == 0 and raised.value.handed_back_as == 1


def test_a_hand_back_during_an_outage_gives_up_and_the_worker_still_stops(
    no_sleep: list[float],
) -> None:
    storage = ResilientStorage(InMemoryStorage(), reconnect_timeout=600)
    study = optuna.create_study(storage=storage)

    def objective(trial: optuna.Trial) -> float:
        storage.inner = Down()  # type: ignore[assignment]  # the database goes away
        interrupts.request("SIGTERM")
        raise interrupts.Interrupted("SIGTERM")

    with pytest.raises(interrupts.Interrupted) as raised:
        run_one(study, objective, [], ())
    assert raised.value.handed_back_as is None
    assert no_sleep[0] <= resilient_module.STOP_WRITE_TIMEOUT_S + resilient_module.MAX_RETRY_DELAY_S


def test_a_configuration_the_study_holds_is_refused_but_a_retry_is_not() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    again = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(again, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.5})
    duplicate = study.ask()
    duplicate.suggest_float("x", 0, 1)
    with pytest.raises(DuplicateConfiguration, match="same configuration as trial 0"):
        check_new(duplicate)
    assert duplicate.user_attrs["fail_reason"] == "same configuration as trial 0"
    assert duplicate.user_attrs["duplicate_of"] == 0
    study.tell(duplicate, state=TrialState.FAIL)
    # A FAIL trial's retry has its parameters: not a duplicate of anything live.
    lone = optuna.create_study()
    failed = lone.ask()
    failed.suggest_float("x", 0, 1)
    lone.tell(failed, state=TrialState.FAIL)
    lone.enqueue_trial(failed.params)
    retry = lone.ask()
    retry.suggest_float("x", 0, 1)
    check_new(retry)


def test_opening_a_study_adds_no_other_study_and_old_registries_stay_hidden() -> None:
    """Workers need no registry of their own any more: the storage holds the user's studies.
    The one lsearch 0.1.0 added (`lsearch:workers`) stays where it is, unlisted."""
    inner = InMemoryStorage()
    optuna.create_study(storage=inner, study_name=WORKERS_STUDY)  # as 0.1.0 left it
    storage = ResilientStorage(inner)
    open_study(StudySpec(name="a"), storage)
    assert [s.study_name for s in lsearch_studies(storage)] == ["a"]
    assert optuna.load_study(study_name=None, storage=storage).study_name == "a"
    assert [s.study_name for s in optuna.get_all_study_summaries(inner)] == [WORKERS_STUDY, "a"]


def test_a_session_the_lost_connection_left_broken_is_reset_and_the_call_retried() -> None:
    """After a database restart, SQLAlchemy refuses this thread's session until it is rolled
    back (PendingRollbackError, wrapped by Optuna): the storage resets it and tries again."""
    from sqlalchemy.exc import PendingRollbackError

    inner = InMemoryStorage()
    resets: list[str] = []

    class BrokenSession:
        failed = False

        def __getattr__(self, name: str) -> Any:
            real = getattr(inner, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                if name == "get_all_studies" and not BrokenSession.failed:
                    BrokenSession.failed = True
                    try:
                        raise PendingRollbackError("Can't reconnect until invalid transaction")
                    except PendingRollbackError as exc:
                        raise optuna.exceptions.StorageInternalError("commit") from exc
                return real(*args, **kwargs)

            return call

    store = ResilientStorage(BrokenSession(), on_lost=lambda: resets.append("reset"))  # type: ignore[arg-type]
    assert store.get_all_studies() == []
    assert resets == ["reset"] and store.losses == 1


def test_a_sampler_that_only_draws_held_configurations_ends_the_run_with_a_user_error() -> None:
    from lsearch.errors import UserError
    from lsearch.search.loop import MAX_DUPLICATES_IN_A_ROW, run_until

    study = optuna.create_study(storage=ResilientStorage(InMemoryStorage()))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("x", [1])  # a space of one configuration
        check_new(trial)
        return 1.0

    with pytest.raises(UserError, match="search space looks exhausted"):
        run_until(study, objective, 5)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] + [TrialState.FAIL] * MAX_DUPLICATES_IN_A_ROW
