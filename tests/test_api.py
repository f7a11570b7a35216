"""The Python API (issue 17): what each command does, as a function. The CLI is a thin layer
over it, so the API's results are exactly what the commands print, and overrides given as a
dict are the same as the same `--set` texts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

import lsearch
from lsearch import api
from lsearch.errors import UserError
from tests.conftest import TINY, run_lsearch

# tests/test_compare_cli.py's small comparison, as --set texts and as a dict.
SMALL = {
    "data.train_per_class": 15,
    "data.val_per_class": 15,
    "data.test_per_class": 20,
    "train.batch_size": 64,
    "model.width": 8,
    "train.schedule": "constant",
    "baseline.epochs": 2,
}
SMALL_SET = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value!r}")]
SMALL_SET = ["--study", "digits", *(text.replace("'", '"') for text in SMALL_SET)]
TINY_DICT = {"data.train_per_class": 20, "data.val_per_class": 20, "space.epochs": 3,
             "train.batch_size": 64}  # fmt: skip


def test_importing_lsearch_imports_neither_torch_nor_optuna() -> None:
    code = (
        "import sys, lsearch, lsearch.api, lsearch.cli; "
        "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy', 'numpy', 'scipy', 'plotly') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert set(lsearch.__all__) >= {"run", "compare", "evaluate", "report", "load_study_file"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"train.batch_size": 64, "space.epochs": {"low": 1, "high": 2}, "seeds": [0, 1]},
        {"train": {"batch_size": 64}, "space": {"epochs": {"low": 1, "high": 2}}, "seeds": [0, 1]},
    ],
)
def test_overrides_as_a_dict_equal_the_same_set_texts(overrides: dict[str, Any]) -> None:
    texts = ["train.batch_size=64", "space.epochs={low = 1, high = 2}", "seeds=[0, 1]"]
    assert lsearch.load_study_file("digits", overrides) == lsearch.load_study_file("digits", texts)
    # A plain value in the file is replaced by a table, as --set would.
    spec = lsearch.load_study_file("digits", {"space.label_smoothing": 0.1})
    assert spec.space.label_smoothing.fixed
    with pytest.raises(UserError, match=r"train\.batch_size: Input should be greater than 0"):
        lsearch.load_study_file("digits", {"train.batch_size": 0})


def test_a_dict_override_reaches_workers_as_set_texts_that_load_the_same_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker command lines come from one function; typed options travel as their own
    options, dict overrides as `--set` texts that load the same spec again."""
    from lsearch.search import workers

    monkeypatch.chdir(tmp_path)
    started: list[list[str]] = []
    monkeypatch.setattr(workers, "start_workers", lambda n, args, *rest, **kw: started.append(
        list(args)) or [])  # fmt: skip
    overrides = {**TINY_DICT, "space": {"lr": {"low": 1e-3, "high": 1e-2}}}
    lsearch.run(
        "digits", overrides, storage=f"sqlite:///{tmp_path}/w.db", trials=1, workers=2,
        device="cpu", heartbeat_interval=5, artifacts=str(tmp_path / "store"),
    )  # fmt: skip
    (args,) = started
    assert args[:2] == ["run", "--study"] and "--heartbeat-interval" in args
    assert args[args.index("--artifacts") + 1] == str(tmp_path / "store")
    texts = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    assert "space.lr.low=0.001" in texts
    assert lsearch.load_study_file("digits", texts) == lsearch.load_study_file("digits", overrides)


def test_run_returns_the_study_and_a_dict_gives_what_set_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cli = run_lsearch("run", "--trials", "2", *TINY, "--storage", "sqlite:///cli.db", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    study = lsearch.run(
        "digits", TINY_DICT, storage=f"sqlite:///{tmp_path}/api.db", trials=2, device="cpu",
        artifacts=str(tmp_path / "artifacts"),
    )  # fmt: skip
    assert isinstance(study, optuna.Study) and study.study_name == "digits"
    by_cli = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/cli.db")
    for ours, theirs in zip(study.trials, by_cli.trials, strict=True):
        assert ours.params == theirs.params
        assert ours.user_attrs["val_acc_per_seed"] == theirs.user_attrs["val_acc_per_seed"]
    assert api.count_finished(study) == 2
    best = lsearch.best(storage=f"sqlite:///{tmp_path}/api.db")
    assert best.to_dict()["best"]["number"] == study.best_trial.number


def test_compare_returns_what_compare_json_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/lsearch.db"
    grid = ["--grid", "label_smoothing=0,0.2"]
    cli = run_lsearch("compare", *grid, *SMALL_SET, "--seeds", "0-1", "--json", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    # The same command through the API on the same storage: nothing is left to train.
    again = lsearch.compare({"label_smoothing": [0, 0.2]}, "digits", SMALL, seeds=[0, 1],
                            storage=url, device="cpu")  # fmt: skip
    assert again.to_dict() == printed
    # On a fresh storage it trains the same seed-runs and gets the same numbers.
    fresh = lsearch.compare(
        {"label_smoothing": [0, 0.2]}, "digits", {**SMALL, "checkpoint.location": str(tmp_path)},
        seeds="0-1", storage=f"sqlite:///{tmp_path}/fresh.db", device="cpu",
    )  # fmt: skip
    assert json.loads(json.dumps(fresh.to_dict())) == printed
    header, rows = fresh.cell_table().header, fresh.cell_table().rows
    assert header[:2] == ["cell", "n"] and [row[0] for row in rows] == ["ε 0", "ε 0.2"]
    assert fresh.verdicts == printed["verdicts"] and "### Verdicts" in fresh.to_markdown()


def test_api_range_checks_are_the_cli_s_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^--trials must be at least 1 \(got 0\)"):
        lsearch.run(trials=0, storage=f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(UserError, match=r"^--workers must be at least 1 \(got 0\)"):
        api.comparison_job({"label_smoothing": [0, 0.1]}, workers=0)
    assert not (tmp_path / "x.db").exists()
    assert api.worker_args("evaluate", study="s", trial=None, seeds="3,4", dry_run=False) == [
        "evaluate", "--study", "s", "--seeds", "3,4",
    ]  # fmt: skip
