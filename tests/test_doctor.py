"""`lsearch doctor`: every check reports, nothing is created, secrets stay hidden."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
import torch
from typer.testing import CliRunner

from lsearch import checks as checkup
from lsearch.cli import app
from lsearch.training.devices import autocast_precision
from tests.conftest import run_lsearch

CHECKS = {"torch", "device", "cpu", "storage", "data", "weights", "training"}


def by_name(payload: dict) -> dict[str, dict]:
    return {check["name"]: check for check in payload["checks"]}


def doctor_json(*args: str, cwd: Path) -> tuple[int, dict, str]:
    result = run_lsearch("doctor", "--json", *args, cwd=cwd)
    return result.returncode, json.loads(result.stdout), result.stdout + result.stderr


def test_digits_on_a_fresh_folder_checks_everything_and_creates_nothing(tmp_path: Path) -> None:
    code, payload, _ = doctor_json("--storage", f"sqlite:///{tmp_path}/x.db", cwd=tmp_path)
    assert code == 0, payload
    assert payload["ok"] is True
    checks = by_name(payload)
    assert set(checks) >= CHECKS
    assert "cuda" in checks or "cuda:0" in checks
    assert all(c["status"] in ("ok", "warn", "fail") and c["detail"] for c in payload["checks"])
    assert checks["cpu"]["precision"] == "float32"
    assert checks["storage"]["status"] == "ok"
    assert checks["storage"]["exists"] is False
    assert "not created yet" in checks["storage"]["detail"]
    assert checks["data"]["status"] == "ok"
    training = checks["training"]
    assert training["status"] == "ok"
    assert training["train_images_per_s"] > 0
    assert training["bench"]["train_images_per_s"] == training["train_images_per_s"]
    assert training["per_worker_mb"] == training["bench"]["trial_memory"]["per_worker_mb"] > 0
    assert f"needs {training['per_worker_mb']:,.0f} MB per worker" in training["detail"]
    assert list(tmp_path.iterdir()) == []  # no x.db, no artifacts/, nothing


def test_an_existing_sqlite_file_is_reported_writable_and_left_byte_identical(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.db"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")  # as lsearch leaves its databases
    connection.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, name TEXT)")
    connection.execute("INSERT INTO studies (name) VALUES ('digits')")
    connection.commit()
    connection.close()
    before = path.read_bytes()
    check = checkup.check_storage(f"sqlite:///{path}")
    assert check.status == "ok", check.detail
    assert check.figures["exists"] is True and check.figures["writable"] is True
    assert check.figures["studies"] == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("studies",)]


def test_unreachable_postgres_fails_without_showing_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://user:s3cret@127.0.0.1:1/db"
    code, payload, text = doctor_json("--storage", url, "--no-train", cwd=tmp_path)
    assert code == 1
    assert payload["ok"] is False
    storage = by_name(payload)["storage"]
    assert storage["status"] == "fail"
    assert "user:***@127.0.0.1:1/db" in storage["detail"]
    assert "s3cret" not in text
    human = run_lsearch("doctor", "--storage", url, "--no-train", cwd=tmp_path)
    assert human.returncode == 1
    assert "fail" in human.stdout
    assert "s3cret" not in human.stdout + human.stderr
    assert list(tmp_path.iterdir()) == []


def test_reachable_postgres_is_writable_and_left_without_tables(postgres_url: str) -> None:
    result = CliRunner().invoke(
        app, ["doctor", "--json", "--no-train", "--storage", postgres_url, "--device", "cpu"]
    )
    payload = json.loads(result.stdout)
    storage = by_name(payload)["storage"]
    assert storage["status"] == "ok", storage["detail"]
    assert storage["writable"] is True
    assert result.exit_code == 0, result.output
    engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


@pytest.fixture
def fake_t4(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One CUDA device of compute capability 7.5 (a T4), 16 GiB with 10 GiB free."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (10 * 2**30, 16 * 2**30))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    autocast_precision.cache_clear()
    yield
    autocast_precision.cache_clear()


def test_a_gpu_without_bfloat16_reports_float16_and_why(fake_t4: None) -> None:
    [check] = checkup.check_cuda("auto", "auto")
    assert check.name == "cuda:0"
    assert check.status == "ok", check.detail
    assert check.figures["gpu"] == "Tesla T4"
    assert check.figures["capability"] == "7.5"
    assert check.figures["total_memory_mb"] == 16 * 1024
    assert check.figures["free_memory_mb"] == 10 * 1024
    assert check.figures["precision"] == "float16"
    assert "capability 7.5" in check.figures["precision_reason"]
    assert "float16" in check.detail and "Tesla T4" in check.detail
    # An impossible precision there is a failed check, not a crash.
    [forced] = checkup.check_cuda("auto", "bfloat16")
    assert forced.status == "fail"
    assert "7.5" in forced.detail


def test_no_cuda_warns_unless_cuda_was_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [c.status for c in checkup.check_cuda("auto")] == ["warn"]
    assert [c.status for c in checkup.check_cuda("cuda:0")] == ["fail"]
    assert checkup.check_device("auto").figures["device"] == "cpu"
    assert checkup.check_device("cuda").status == "fail"
    assert checkup.check_cpu(True, "float16").status == "fail"  # the CPU has no float16


def test_a_bad_device_name_is_a_one_line_user_error(tmp_path: Path) -> None:
    result = run_lsearch("doctor", "--device", "tpu", "--no-train", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--device 'tpu'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_cifar10_data_is_a_warning_and_nothing_is_downloaded(tmp_path: Path) -> None:
    weights = checkup.imagenet_weights_file()
    cached = weights.is_file()
    code, payload, _ = doctor_json(
        "--study", "cifar10-resnet18", "--set", f"data.root={tmp_path}/nodata", "--no-train",
        "--storage", f"sqlite:///{tmp_path}/x.db", "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, payload
    checks = by_name(payload)
    data = checks["data"]
    assert data["status"] == "warn"
    assert data["present"] is False
    assert "cifar-10-python.tar.gz" in data["detail"]
    assert checks["weights"]["status"] == ("ok" if cached else "warn")
    assert "training" not in checks
    assert not (tmp_path / "nodata").exists()
    assert list(tmp_path.iterdir()) == []
    assert weights.is_file() == cached


def test_the_training_check_uses_random_weights_when_the_study_s_are_not_here(
    tmp_path: Path,
) -> None:
    from lsearch.spec import load_spec

    spec = load_spec(
        "digits",
        [f"model.weights={tmp_path / 'missing.pth'}", "data.train_per_class=10",
         "data.val_per_class=10"],
    )  # fmt: skip
    assert checkup.check_weights(spec).status == "fail"
    check = checkup.check_training(spec, torch.device("cpu"), weights_present=False)
    assert check.status == "ok", check.detail
    assert check.figures["random_weights"] is True
    assert "random weights" in check.detail
    assert check.figures["bench"]["train_images"] == 100
