"""End to end on the real PostgreSQL server (a fresh database per test)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from tests.conftest import TINY, run_lsearch


def with_password(url: str, password: str) -> str:
    # The test server trusts loopback connections, so any password is accepted: it is here
    # only to check that lsearch never prints it.
    return sqlalchemy.make_url(url).set(password=password).render_as_string(hide_password=False)


def test_run_status_best_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    url = with_password(postgres_url, "pg-s3cret")
    result = run_lsearch("run", "--trials", "3", *TINY, "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pg-s3cret" not in result.stdout + result.stderr
    assert "***@" in result.stderr
    assert not (tmp_path / "lsearch.db").exists(), "nothing went to the default SQLite file"

    study = optuna.load_study(study_name="digits", storage=postgres_url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 3
    assert all(len(t.user_attrs["val_acc_per_seed"]) == 3 for t in finished)

    resumed = run_lsearch("run", "--trials", "4", *TINY, "--storage", url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len(optuna.load_study(study_name="digits", storage=postgres_url).trials) == 4

    status = run_lsearch("status", cwd=tmp_path, env={"LSEARCH_STORAGE": url})
    assert status.returncode == 0, status.stderr
    assert "digits" in status.stdout and "pg-s3cret" not in status.stdout
    best = run_lsearch("best", "--json", "--storage", url, cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["best"]["number"] == study.best_trial.number


def test_a_missing_postgresql_database_is_a_user_error(tmp_path: Path, postgres_url: str) -> None:
    missing = sqlalchemy.make_url(postgres_url).set(database="lsearch_no_such_db", password="pw9")
    url = missing.render_as_string(hide_password=False)
    result = run_lsearch("run", *TINY, "--storage", url, cwd=tmp_path)
    assert result.returncode == 2
    assert 'database "lsearch_no_such_db" does not exist' in result.stderr
    assert "pw9" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
