"""The store: a storage that pickles, a storage that holds only the user's studies (workers
draw apart through per-trial seeds, not a registry), a storage of 0.1.0 whose registry of
workers stays and stays hidden, and the catalog's ways of finding studies."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
import threading
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState
from sqlalchemy import text

from lsearch.errors import UserError
from lsearch.search.study import build_sampler
from lsearch.spec import StudySpec
from lsearch.store import catalog
from lsearch.store.storage import open_storage
from tests.conftest import TINY, run_lsearch

REPO = Path(__file__).resolve().parent.parent
REGISTRY_DB = REPO / "tests" / "data" / "workers-registry-0.1.0.db"
OLD_STUDY_FILE = str(REPO / "tests" / "data" / "study-0.1.0.toml")


# ----------------------------------------------------------------------------- pickling


def storage_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'lsearch.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_storage_pickles_and_the_unpickled_one_works(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """As Optuna's own storages do (its storage tests' test_pickle_storage)."""
    url = storage_url(backend, tmp_path, request)
    storage = open_storage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    first = storage.create_new_trial(study_id)
    storage.set_trial_user_attr(first, "note", "before")

    restored = pickle.loads(pickle.dumps(storage))
    assert restored.get_study_id_from_name("s") == study_id
    assert restored.get_trial(first).user_attrs == {"note": "before"}
    made = restored.create_new_trial(study_id)
    restored.set_trial_state_values(made, TrialState.COMPLETE, [0.5])
    assert storage.get_trial(made).values == [0.5]  # written through, seen by the original
    # The retry on a lost connection survives the trip (it resets the unpickled engine).
    restored._on_lost()
    assert restored.get_trial(made).number == 1


def test_an_unpickled_sqlite_storage_keeps_wal_and_normal_sync(tmp_path: Path) -> None:
    restored = pickle.loads(pickle.dumps(open_storage(f"sqlite:///{tmp_path / 'x.db'}")))
    with restored.inner._backend.engine.connect() as connection:
        mode = connection.execute(text("PRAGMA journal_mode")).scalar()
        sync = connection.execute(text("PRAGMA synchronous")).scalar()
    assert (mode, sync) == ("wal", 1)


def tell_one(study: optuna.Study) -> int:
    """Run in another process: one trial of the pickled study."""
    trial = study.ask()
    study.tell(trial, trial.suggest_float("x", 0, 1))
    return trial.number


def test_a_study_on_the_storage_goes_to_a_process_pool(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lsearch.db'}"
    spec = StudySpec(name="s")
    study = optuna.create_study(
        storage=open_storage(url), study_name="s", sampler=build_sampler(spec)
    )
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        numbers = sorted(pool.map(tell_one, [study, study]))
    assert numbers == [0, 1]
    finished = optuna.load_study(study_name="s", storage=url).get_trials(
        states=(TrialState.COMPLETE,)
    )
    assert len(finished) == 2
    assert finished[0].params != finished[1].params  # drawn apart, from their trial numbers


# ----------------------------------------------------------------------------- sampling


def draws(study: optuna.Study, count: int) -> list[float]:
    values = []
    for _ in range(count):
        trial = study.ask()
        value = trial.suggest_float("x", 0, 1)
        study.tell(trial, value)
        values.append(value)
    return values


@pytest.mark.parametrize("kind", ["random", "tpe", "gp"])
def test_one_worker_draws_the_same_trials_and_workers_started_alike_draw_apart(
    kind: str,
) -> None:
    spec = StudySpec.model_validate(
        {"name": "s", "sampler": {"type": kind, "seed": 3, "n_startup_trials": 2}}
    )

    def fresh() -> optuna.Study:
        return optuna.create_study(storage=InMemoryStorage(), sampler=build_sampler(spec))

    count = 4 if kind == "gp" else 6
    assert draws(fresh(), count) == draws(fresh(), count)  # same study file, same trials
    # Two workers with the same study file ask at the same moment: same history, same seed,
    # and still two different draws, since their trials have different numbers.
    storage = InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s")
    one, two = (
        optuna.load_study(study_name="s", storage=storage, sampler=build_sampler(spec))
        for _ in range(2)
    )
    for _ in range(3):
        first, second = one.ask(), two.ask()
        a, b = first.suggest_float("x", 0, 1), second.suggest_float("x", 0, 1)
        assert a != b
        one.tell(first, a)
        two.tell(second, b)


def test_a_grid_is_shared_by_workers_that_ask_at_the_same_moment() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "sampler": {"type": "grid"},
            "space": {"label_smoothing": {"choices": [0.0, 0.1, 0.2, 0.3]}},
        }
    )
    storage = InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s")
    one, two = (
        optuna.load_study(study_name="s", storage=storage, sampler=build_sampler(spec))
        for _ in range(2)
    )
    first, second = one.ask(), two.ask()
    a = first.suggest_float("label_smoothing", 0, 0.3)
    b = second.suggest_float("label_smoothing", 0, 0.3)
    assert a != b


# ----------------------------------------------------------------------------- only the user's


def test_after_lsearch_run_the_storage_holds_only_the_user_s_study_and_runs_repeat(
    tmp_path: Path,
) -> None:
    params = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        result = run_lsearch("run", "--trials", "3", *TINY, cwd=tmp_path / folder)
        assert result.returncode == 0, result.stderr
        url = f"sqlite:///{tmp_path / folder / 'lsearch.db'}"
        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["digits"]
        study = optuna.load_study(study_name=None, storage=url)  # Optuna's "the only study"
        params.append([t.params for t in study.trials])
    assert params[0] == params[1], "one worker's search draws the same trials every time"
    assert len({tuple(sorted(p.items())) for p in params[0]}) == 3


def listed_by_the_dashboard(url: str) -> list[str]:
    from lsearch.outputs.dashboard import open_dashboard, url_of

    server = open_dashboard(url, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(url_of(server) + "api/studies", timeout=30) as response:
            summaries = json.load(response)["study_summaries"]
    finally:
        server.shutdown()
        server.server_close()
    return [summary["study_name"] for summary in summaries]


def test_a_storage_of_0_1_0_keeps_its_registry_hidden_and_its_search_continues(
    tmp_path: Path,
) -> None:
    """tests/data/workers-registry-0.1.0.db was written by the version before this layout
    (commit a4fee80: `lsearch run --study tests/data/study-0.1.0.toml --trials 3`), which
    registered its worker in a study `lsearch:workers` of the user's storage."""
    db = tmp_path / "old.db"
    shutil.copy(REGISTRY_DB, db)
    url = f"sqlite:///{db}"
    before = optuna.load_study(study_name=catalog.WORKERS_STUDY, storage=url).trials
    storage = ["--storage", url]
    status = run_lsearch("status", *storage, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "made-by-0.1.0" in status.stdout and catalog.WORKERS_STUDY not in status.stdout
    best = run_lsearch("best", *storage, cwd=tmp_path)  # the only study, without --study
    assert best.returncode == 0, best.stderr
    exported = run_lsearch("export", "--format", "json", *storage, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert {row["study"] for row in json.loads(exported.stdout)} == {"made-by-0.1.0"}
    assert listed_by_the_dashboard(url) == ["made-by-0.1.0"]
    assert optuna.load_study(study_name=None, storage=open_storage(url)).study_name == (
        "made-by-0.1.0"
    )

    result = run_lsearch("run", "--study", OLD_STUDY_FILE, "--trials", "5", *storage, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="made-by-0.1.0", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    # lsearch deletes nothing of the user's: the registry is there as it was, and no new one.
    registry = optuna.load_study(study_name=catalog.WORKERS_STUDY, storage=url)
    assert len(before) == 1 and before[0].user_attrs["study"] == "made-by-0.1.0"
    assert registry.trials == before
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(url)) == [
        catalog.WORKERS_STUDY,
        "made-by-0.1.0",
    ]


# ----------------------------------------------------------------------------- the catalog


def storage_with_kinds() -> InMemoryStorage:
    storage = InMemoryStorage()
    optuna.create_study(storage=storage, study_name=catalog.WORKERS_STUDY)
    optuna.create_study(storage=storage, study_name="digits")
    for name, search in (("digits compare", "digits"), ("other compare", "other")):
        study = optuna.create_study(storage=storage, study_name=name)
        study.set_user_attr(catalog.KIND_ATTR, catalog.COMPARISON)
        study.set_user_attr(catalog.SEARCH_STUDY_ATTR, search)
    return storage


def test_the_catalog_finds_studies_by_kind_and_never_the_old_registry() -> None:
    storage = storage_with_kinds()
    assert catalog.study_names(storage) == ["digits", "digits compare", "other compare"]
    assert [s.study_name for s in catalog.studies_of_kind(storage, catalog.SEARCH)] == ["digits"]
    assert [s.study_name for s in catalog.comparisons_of(storage, "digits")] == ["digits compare"]
    assert catalog.find_study(storage, catalog.WORKERS_STUDY) is None
    found = catalog.find_study(storage, "digits compare")
    assert found is not None and catalog.is_comparison(found)
    assert catalog.study_kind(catalog.find_study(storage, "digits")) == catalog.SEARCH  # type: ignore[arg-type]
    assert catalog.pick_study(storage, None).study_name == "digits"  # comparisons do not count
    assert catalog.pick_study(storage, "other compare").study_name == "other compare"
    with pytest.raises(UserError, match="is a comparison, not a search"):
        catalog.pick_study(storage, "other compare", search_only=True)
    with pytest.raises(UserError, match="no study named 'lsearch:workers'"):
        catalog.pick_study(storage, catalog.WORKERS_STUDY)
    optuna.create_study(storage=storage, study_name="second")
    with pytest.raises(UserError, match="several search studies"):
        catalog.pick_study(storage, None)


def test_a_search_trial_writes_its_user_attrs_in_three_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """About 25 user attrs a trial, each its own transaction in Optuna, go in three: those
    known at the start, those known once the seeds are built, and the results. Fails if a
    later Optuna moves the internals the one-transaction write uses (it would fall back to
    one call each)."""
    from lsearch.search.loop import run_until
    from lsearch.search.objective import SearchObjective
    from lsearch.store import resilient
    from lsearch.training.data import load_pool
    from tests.test_held_out import CPU, tiny_spec

    batches: list[list[str]] = []
    real_write = resilient.write_user_attrs

    def counted(storage: object, trial_id: int, attrs: dict) -> None:
        batches.append(sorted(attrs))
        real_write(storage, trial_id, attrs)  # type: ignore[arg-type]

    single: list[str] = []
    real_single = optuna.storages.RDBStorage.set_trial_user_attr

    def one(self: object, trial_id: int, key: str, value: object) -> None:
        single.append(key)
        real_single(self, trial_id, key, value)  # type: ignore[arg-type]

    monkeypatch.setattr(resilient, "write_user_attrs", counted)
    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_user_attr", one)
    spec = tiny_spec(space={"epochs": {"value": 2}}, pruner={"type": "none"})
    storage = open_storage(f"sqlite:///{tmp_path / 'attrs.db'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    run_until(study, SearchObjective(spec, load_pool(spec.data, CPU), CPU), 1)
    (trial,) = study.trials
    assert single == [], "no user attr written on its own"
    assert len(batches) == 3 and batches[1] == ["precision", "seeds_together"]
    assert "config" in batches[0] and "curve_val_acc" in batches[2] and "val_acc" in batches[2]
    assert sorted(trial.user_attrs) == sorted(name for batch in batches for name in batch)
    assert trial.user_attrs["epochs_run"] == 2 and len(trial.user_attrs["curve_val_acc"]) == 2


def test_batched_user_attrs_let_other_threads_write_at_once_and_write_on_an_error(
    tmp_path: Path,
) -> None:
    """A checkpoint's pointer is written from the writer's thread and must land before its
    file: inside another thread's block it goes straight through. A block that raises still
    writes what it gathered; a nested block leaves the writing to the outer one."""
    from lsearch.store.resilient import batched_user_attrs

    storage = open_storage(f"sqlite:///{tmp_path / 'batch.db'}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    stored = lambda: study.trials[0].user_attrs  # noqa: E731
    with pytest.raises(RuntimeError, match="boom"), batched_user_attrs(trial):
        trial.set_user_attr("a", 1)
        with batched_user_attrs(trial):
            trial.set_user_attr("b", 2)
        assert stored() == {}, "the nested block wrote nothing"
        other = threading.Thread(target=trial.set_user_attr, args=("pointer", 3))
        other.start()
        other.join()
        assert stored() == {"pointer": 3}
        raise RuntimeError("boom")
    assert stored() == {"a": 1, "b": 2, "pointer": 3}
    assert trial.user_attrs == stored()
