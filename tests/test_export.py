"""`lsearch export`: the row builder on hand-made trials, and the real command end to end."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from lsearch.errors import UserError
from lsearch.outputs.export import (
    FIXED_COLUMNS,
    check_format,
    export_rows,
    render,
    to_csv,
    to_json,
    trial_rows,
    write_atomic,
)
from tests.conftest import TINY, run_lsearch

CONFIG = {"label_smoothing": 0.1, "epochs": 20, "lr": 0.003, "trainable_layers": 3}
RELIABILITY = {"counts": [0, 4], "confidence": [None, 0.9], "accuracy": [None, 0.75]}


def make_trial(
    number: int, state: TrialState, attrs: dict[str, Any], value: float | None = None
) -> FrozenTrial:
    trial = optuna.trial.create_trial(
        state=state,
        value=value,
        params={"label_smoothing": 0.1, "lr": 0.003},
        distributions={
            "label_smoothing": FloatDistribution(0.0, 0.3),
            "lr": FloatDistribution(1e-4, 1e-2, log=True),
        },
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def search_trial() -> FrozenTrial:
    return make_trial(
        0,
        TrialState.COMPLETE,
        {
            "config": CONFIG,
            "seeds": [0, 1, 2],
            "val_acc": 0.9,
            "val_acc_per_seed": [0.9, 0.8, 1.0],
            "val_ece_per_seed": [0.1, 0.2, 0.30000000000000004],
            "val_nll_per_seed": [0.3, 0.4, 0.5],
            "temperature_per_seed": [1.5, 1.25, 2],
            "val_ece_temperature_scaled_per_seed": [0.01, 0.02, 0.03],
            "chosen_epoch": 7,
            "epochs_run": 10,
            "curve_val_acc": [[0.5, 0.9], [0.4, 0.8], [0.6, 1.0]],
        },
        value=0.9,
    )


def pruned_trial() -> FrozenTrial:
    return make_trial(
        1,
        TrialState.PRUNED,
        {
            "config": {**CONFIG, "label_smoothing": 0.2},
            "seeds": [0, 1, 2],
            "val_acc_per_seed": [0.5, 0.6, 0.7],
            "chosen_epoch": 2,
            "epochs_run": 3,
            "pruned_at_epoch": 3,
        },
    )


def comparison_trial() -> FrozenTrial:
    trial = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=0.95,
        params={"label_smoothing": 0.15, "epochs": 60, "seed": 7},
        distributions={
            "label_smoothing": FloatDistribution(0.0, 1.0),
            "epochs": IntDistribution(1, 100),
            "seed": IntDistribution(0, 100),
        },
        user_attrs={
            "config": {**CONFIG, "label_smoothing": 0.15, "epochs": 60},
            "seeds": [7],
            "val_acc_per_seed": [0.96],
            "test_acc_per_seed": [0.95],
            "test_ece_ts_per_seed": [0.012],
            "test_temperature_per_seed": [1.7],
            "test_reliability_per_seed": [RELIABILITY],
            "test_reliability_ts_per_seed": [RELIABILITY],
            "held_out": {"60": {"test_acc_per_seed": [0.95]}},
            "chosen_epoch": 40,
            "epochs_run": 60,
        },
    )
    trial.number = 4
    return trial


def failed_trial() -> FrozenTrial:
    return make_trial(2, TrialState.FAIL, {"fail_reason": "worker died"})


def test_a_search_trial_gives_one_row_per_seed_with_its_per_seed_metrics() -> None:
    rows = trial_rows("digits", search_trial())
    assert [row["seed"] for row in rows] == [0, 1, 2]
    for i, row in enumerate(rows):
        assert row["study"] == "digits" and row["trial"] == 0 and row["state"] == "COMPLETE"
        assert {k: row[k] for k in CONFIG} == CONFIG, "the config attr, fixed params included"
        assert (row["chosen_epoch"], row["epochs_run"]) == (7, 10)
        attrs = search_trial().user_attrs
        assert row["val_acc"] == attrs["val_acc_per_seed"][i]
        assert row["val_ece_temperature_scaled"] == attrs["val_ece_temperature_scaled_per_seed"][i]
        assert row["temperature"] == attrs["temperature_per_seed"][i]
    assert "curve_val_acc" not in rows[0] and "val_acc_per_seed" not in rows[0]


def test_a_pruned_trial_exports_its_state_and_lacks_what_it_did_not_record() -> None:
    columns, rows = export_rows("digits", [pruned_trial(), search_trial()])
    assert [(row["trial"], row["seed"]) for row in rows] == [
        (t, s) for t in (0, 1) for s in (0, 1, 2)
    ]
    pruned = [row for row in rows if row["trial"] == 1]
    assert {row["state"] for row in pruned} == {"PRUNED"}
    assert [row["val_acc"] for row in pruned] == [0.5, 0.6, 0.7]
    assert all(row["val_ece"] is None and row["temperature"] is None for row in pruned)
    assert all(list(row) == columns for row in rows), "every row has every column, in order"


def test_a_comparison_trial_exports_test_metrics_and_skips_reliability_data() -> None:
    (row,) = trial_rows("digits compare label_smoothing=0.15", comparison_trial())
    assert row["seed"] == 7 and row["trial"] == 4
    assert row["label_smoothing"] == 0.15 and row["epochs"] == 60 and row["lr"] == 0.003
    assert row["test_acc"] == 0.95 and row["test_ece_ts"] == 0.012
    assert row["test_temperature"] == 1.7 and row["val_acc"] == 0.96
    assert not {"test_reliability", "test_reliability_ts", "held_out"} & set(row)


def test_a_trial_without_seeds_gives_no_rows() -> None:
    assert trial_rows("digits", failed_trial()) == []
    columns, rows = export_rows("digits", [failed_trial()])
    assert rows == [] and columns == list(FIXED_COLUMNS)
    assert to_csv(columns, rows) == ",".join(FIXED_COLUMNS) + "\n"
    assert to_json(rows) == "[]\n"


def test_columns_are_the_fixed_ones_then_metrics_sorted() -> None:
    trials = [failed_trial(), comparison_trial(), pruned_trial(), search_trial()]
    columns, rows = export_rows("s", trials)
    assert columns == [
        "study", "trial", "state", "label_smoothing", "epochs", "lr", "trainable_layers",
        "seed", "chosen_epoch", "epochs_run",
        "temperature", "test_acc", "test_ece_ts", "test_temperature", "val_acc", "val_ece",
        "val_ece_temperature_scaled", "val_nll",
    ]  # fmt: skip
    assert [row["trial"] for row in rows] == [0, 0, 0, 1, 1, 1, 4], "trials in number order"


def test_csv_and_json_hold_the_same_exact_values() -> None:
    trials = [comparison_trial(), pruned_trial(), search_trial()]
    columns, rows = export_rows("s", trials)
    read = list(csv.DictReader(io.StringIO(render("csv", columns, rows))))
    assert json.loads(render("json", columns, rows)) == rows
    assert len(read) == len(rows)
    for text_row, row in zip(read, rows, strict=True):
        assert list(text_row) == columns
        for column, value in row.items():
            if value is None:
                assert text_row[column] == ""
            elif isinstance(value, str):
                assert text_row[column] == value
            else:
                assert float(text_row[column]) == value, column


def test_non_finite_numbers_are_nan_in_csv_and_null_in_json() -> None:
    trial = make_trial(0, TrialState.PRUNED, {"seeds": [0], "val_nll_per_seed": [math.inf]})
    columns, rows = export_rows("s", [trial])
    assert to_csv(columns, rows).splitlines()[1].endswith(",inf")
    assert json.loads(to_json(rows))[0]["val_nll"] is None


def test_unknown_or_missing_format_is_a_one_line_user_error() -> None:
    assert check_format("CSV") == "csv"
    for fmt in ("xml", None):
        with pytest.raises(UserError) as caught:
            check_format(fmt)
        assert "\n" not in str(caught.value) and "--format csv" in str(caught.value)


def test_write_atomic_replaces_the_file_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"], "no temporary file left"
    with pytest.raises(UserError, match="cannot write"):
        write_atomic(tmp_path / "missing" / "out.csv", "x")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(UserError, match="cannot write"):
        write_atomic(folder, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "out.csv"]
    assert list(folder.iterdir()) == []


# End to end: one real search, shared by the tests below (each CLI run costs seconds).


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    result = run_lsearch("run", "--trials", "3", *TINY, cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def number(text: str) -> float | None:
    return None if text == "" else float(text)


def test_export_csv_has_one_row_per_trial_and_seed_equal_to_the_attrs(searched: Path) -> None:
    result = run_lsearch("export", "--format", "csv", cwd=searched)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{searched / 'lsearch.db'}")
    trials = {t.number: t for t in study.trials}
    assert len(trials) == 3
    assert [(int(r["trial"]), int(r["seed"])) for r in rows] == [
        (t, s) for t in sorted(trials) for s in (0, 1, 2)
    ]
    metrics = [c for c in rows[0] if c not in FIXED_COLUMNS]
    assert metrics == sorted(metrics) and "val_acc" in metrics and "temperature" in metrics
    for row in rows:
        trial = trials[int(row["trial"])]
        attrs = trial.user_attrs
        index = attrs["seeds"].index(int(row["seed"]))
        assert row["study"] == "digits" and row["state"] == trial.state.name
        for name, value in attrs["config"].items():
            assert float(row[name]) == value, name
        for name in ("chosen_epoch", "epochs_run"):
            assert number(row[name]) == attrs[name], name
        for name in metrics:
            assert number(row[name]) == attrs[f"{name}_per_seed"][index], name

    written = run_lsearch("export", "--format", "json", "-o", "out.json", cwd=searched)
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    exported = json.loads((searched / "out.json").read_text())
    assert [list(row) for row in exported] == [list(rows[0])] * len(rows)
    for row, text_row in zip(exported, rows, strict=True):
        assert {k: "" if v is None else str(v) for k, v in row.items()} == text_row


def test_export_errors_are_one_line_with_exit_code_2(searched: Path, tmp_path: Path) -> None:
    for args, cwd, words in (
        (("--study", "nope", "--format", "csv"), searched, "no study named 'nope'"),
        (("--format", "xml"), searched, "unknown export format"),
        (("--format", "csv"), tmp_path, "no study database"),
    ):
        result = run_lsearch("export", *args, cwd=cwd)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert words in result.stderr
    assert list(tmp_path.iterdir()) == [], "a missing storage is not created"
