"""`lsearch dashboard`: a real server in a real process, read over HTTP while workers write."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from optuna_dashboard import save_note, save_plotly_graph_object

from lsearch.outputs.dashboard import is_loopback
from lsearch.store.storage import open_storage
from tests.conftest import LSEARCH, TINY, run_lsearch
from tests.test_workers import finish, free_port, start_worker

NOTE = "# verdict\nε = 0.10 and 0.15 are indistinguishable on these seeds."
FIGURE_ID = "lsearch-test"


def start_dashboard(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    """The dashboard as a user starts it; stderr goes to `log` (a pipe could fill up)."""
    env = {k: v for k, v in os.environ.items() if k != "LSEARCH_STORAGE"}
    with log.open("w") as stderr:
        return subprocess.Popen(
            [LSEARCH, "dashboard", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # A shell's background job ignores SIGINT; the child must see Ctrl-C as a user's does.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def stop(process: subprocess.Popen) -> int:
    """Ctrl-C, then a kill if it did not exit; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
    return process.returncode


def get(port: int, path: str, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def get_json(port: int, path: str) -> Any:
    status, body = get(port, path)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def wait_until_serving(
    process: subprocess.Popen, port: int, log: Path, within_s: float = 60
) -> None:
    deadline = time.monotonic() + within_s
    for _ in range(1000):
        if process.poll() is not None:
            raise AssertionError(f"the dashboard exited {process.returncode}: {log.read_text()}")
        try:
            get_json(port, "/api/meta")
            return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"the dashboard did not answer within {within_s} s: {log.read_text()}")


def check_study_detail(detail: dict[str, Any]) -> None:
    """What `lsearch compare`/`report` store is there, and so are lsearch's per-seed attrs."""
    assert FIGURE_ID in [g["id"] for g in detail["plotly_graph_objects"]]
    (figure,) = [g for g in detail["plotly_graph_objects"] if g["id"] == FIGURE_ID]
    assert json.loads(figure["graph_object"])["data"][0]["type"] == "scatter"
    assert detail["note"]["body"] == NOTE
    finished = [t for t in detail["trials"] if t["state"] in ("Complete", "Pruned")]
    assert len(finished) >= 2
    for trial in finished:
        keys = {a["key"] for a in trial["user_attrs"]}
        assert {"val_acc_per_seed", "val_ece_per_seed", "seeds"} <= keys, keys
    assert not [t for t in detail["trials"] if t["state"] == "Fail"]


def test_dashboard_serves_a_live_sqlite_study_without_locking_out_its_workers(
    tmp_path: Path,
) -> None:
    storage = f"sqlite:///{tmp_path / 'live.db'}"
    # The workers below continue this study: they must run it with the same study values.
    # Kept final checkpoints give the dashboard artifacts to list.
    common = (
        *TINY, "--set", "space.epochs=6", "--set", "checkpoint.keep_final=true",
        "--storage", storage,
    )  # fmt: skip
    created = run_lsearch("run", "--trials", "2", *common, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    study = optuna.load_study(study_name="digits", storage=open_storage(storage))
    figure = go.Figure(data=[go.Scatter(x=[0.0, 0.1, 0.15], y=[0.91, 0.93, 0.92])])
    save_plotly_graph_object(study, figure, graph_object_id=FIGURE_ID)
    save_note(study, NOTE)

    port = free_port()
    log = tmp_path / "dashboard.err"
    started = time.monotonic()
    server = start_dashboard("--port", str(port), "--storage", storage, cwd=tmp_path, log=log)
    workers: list[subprocess.Popen] = []
    stalled = None
    details: list[dict[str, Any]] = []
    polls_while_running = 0
    try:
        wait_until_serving(server, port, log)
        meta = get_json(port, "/api/meta")
        assert meta["artifact_is_available"] is True

        # A client that connects and never sends a request: a one-thread server would wait
        # on it forever, and every request below would time out.
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)

        workers = [
            start_worker("--trials", "8", *common, "--quiet", cwd=tmp_path) for i in range(2)
        ]
        deadline = time.monotonic() + 300
        for _ in range(2000):
            running = all(w.poll() is None for w in workers)
            summaries = get_json(port, "/api/studies")["study_summaries"]
            (summary,) = [s for s in summaries if s["study_name"] == "digits"]
            detail = get_json(port, f"/api/studies/{summary['study_id']}")
            check_study_detail(detail)
            details.append(detail)
            if running and all(w.poll() is None for w in workers):
                polls_while_running += 1
            if all(w.poll() is not None for w in workers) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for worker in workers:
            code, stderr = finish(worker, timeout=300)
            assert code == 0, stderr
            assert "database is locked" not in stderr
        assert polls_while_running >= 3, f"only {polls_while_running} polls while both ran"
        # The dashboard saw the study grow under it.
        assert len(details[-1]["trials"]) > len(details[0]["trials"])

        final = optuna.load_study(study_name="digits", storage=open_storage(storage))
        states = [t.state for t in final.trials]
        assert TrialState.FAIL not in states, states
        assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) >= 8

        # After the workers: the API shows every trial, and serves a kept checkpoint.
        (summary,) = [
            s for s in get_json(port, "/api/studies")["study_summaries"]
            if s["study_name"] == "digits"
        ]  # fmt: skip
        summary_id = summary["study_id"]
        detail = get_json(port, f"/api/studies/{summary_id}")
        check_study_detail(detail)
        assert len(detail["trials"]) == len(final.trials)
        kept = [(t, a) for t in detail["trials"] for a in t["artifacts"]]
        assert kept, "the checkpoints kept by the first run are listed"
        trial, artifact = kept[0]
        assert artifact["filename"].endswith(".pt")
        status, body = get(
            port, f"/artifacts/{summary_id}/{trial['trial_id']}/{artifact['artifact_id']}"
        )
        assert status == 200 and len(body) > 1000
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
        if stalled is not None:
            stalled.close()
        code = stop(server)
    print(
        f"dashboard: {len(details)} polls, {polls_while_running} while both workers ran, "
        f"{time.monotonic() - started:.1f} s with the server up"
    )
    assert code == 0, log.read_text()
    lines = log.read_text().strip().splitlines()
    assert lines == [f"serving {storage} on http://127.0.0.1:{port}/ (Ctrl-C to stop)"], lines


def test_a_non_loopback_host_prints_the_no_login_warning(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(storage)  # an empty but existing storage
    port = free_port()
    log = tmp_path / "dashboard.err"
    server = start_dashboard(
        "--host", "0.0.0.0", "--port", str(port), "--storage", storage, cwd=tmp_path, log=log
    )
    try:
        wait_until_serving(server, port, log)
        assert get_json(port, "/api/studies") == {"study_summaries": []}
    finally:
        stop(server)
    warning, serving = log.read_text().strip().splitlines()
    assert warning.startswith("warning: the dashboard has no login"), warning
    assert f"anyone who can reach 0.0.0.0:{port} can read, edit and delete the studies" in warning
    assert f"on http://0.0.0.0:{port}/" in serving


def test_the_default_host_is_loopback_and_prints_no_warning(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(storage)
    port = free_port()
    log = tmp_path / "dashboard.err"
    server = start_dashboard("--port", str(port), "--storage", storage, cwd=tmp_path, log=log)
    try:
        wait_until_serving(server, port, log)
        # The single-page app itself is served too (not only the API).
        status, body = get(port, "/dashboard")
        assert status == 200 and b"<html" in body.lower()
    finally:
        stop(server)
    assert "warning" not in log.read_text()
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")


def test_a_missing_sqlite_storage_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    result = run_lsearch(
        "dashboard", "--storage", f"sqlite:///{missing}", "--port", str(free_port()),
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no study database" in result.stderr
    assert not missing.exists()


def test_a_port_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(storage)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_lsearch(
            "dashboard", "--storage", storage, "--port", str(port), cwd=tmp_path, timeout=120
        )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"port {port}" in result.stderr and "--port" in result.stderr
