"""`lsearch compare` and `lsearch evaluate` end to end: the real command in a subprocess on
digits, a real SQLite file (and once PostgreSQL). Every number of `--json` is recomputed from
the per-seed user attrs in the storage with scipy."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats as st

from tests.conftest import TINY, run_lsearch, run_on_terminal

SMALL = [
    "--study", "digits",  # written for the from-scratch study (model.width=8 has no weights)
    "--set", "data.train_per_class=15",
    "--set", "data.val_per_class=15",
    "--set", "data.test_per_class=20",
    "--set", "train.batch_size=64",
    "--set", "model.width=8",
    "--set", 'train.schedule="constant"',
]  # fmt: skip
GRID = ["--grid", "label_smoothing=0,0.2", "--grid", "epochs=2,3"]
METRICS = ("val_acc", "val_ece", "test_acc", "test_ece", "test_ece_ts", "test_nll")


def compare(tmp_path: Path, *args: str, storage: str | None = None) -> Any:
    extra = ["--storage", storage] if storage else []
    result = run_lsearch("compare", *GRID, *SMALL, *extra, *args, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def comparison(tmp_path: Path, name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{tmp_path}/lsearch.db")


def per_seed_from_storage(study: optuna.Study, config: dict[str, Any]) -> dict[int, dict]:
    """A cell's results per seed, read straight from the trials' held_out attrs."""
    found: dict[int, dict] = {}
    for trial in sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        attrs = trial.user_attrs
        own = attrs["config"]
        same = all(own[k] == config[k] for k in ("label_smoothing", "lr", "trainable_layers"))
        results = attrs["held_out"].get(str(config["epochs"]))
        if same and results is not None and attrs["seeds"][0] not in found:
            found[attrs["seeds"][0]] = results
    return found


def test_a_2x2_grid_gives_every_number_and_they_match_the_storage(tmp_path: Path) -> None:
    report, _ = compare(tmp_path, "--seeds", "0-5")
    name = report["study"]
    study = comparison(tmp_path, name)
    assert study.user_attrs["lsearch_kind"] == "comparison"
    assert study.user_attrs["lsearch_search_study"] == "digits"
    assert study.user_attrs["lsearch_test_configurations"] == 4
    # The comparison stored its figures and verdicts for optuna-dashboard.
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    backend = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/lsearch.db")
    stored = backend.get_study_system_attrs(backend.get_study_id_from_name(name))
    assert any(key.startswith("lsearch-forest-") for key in get_plotly_graph_objects(stored))
    assert set(study.user_attrs["lsearch_produced_by"]) >= {"lsearch", "torch", "optuna", "device"}
    # Cells differing only in epochs train once under a constant schedule: 2 ε × 6 seeds.
    trials = study.get_trials()
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    assert any("read from the first 2 epochs" in note for note in report["notes"])
    assert [c["label"] for c in report["cells"]] == [
        "ε 0, 2 epochs", "ε 0, 3 epochs", "ε 0.2, 2 epochs", "ε 0.2, 3 epochs",
    ]  # fmt: skip
    per_cell = [per_seed_from_storage(study, cell["config"]) for cell in report["cells"]]
    for cell, stored in zip(report["cells"], per_cell, strict=True):
        assert cell["seeds"] == [0, 1, 2, 3, 4, 5] == sorted(stored)
        for metric in METRICS:
            values = [stored[s][metric] for s in range(6)]
            summary = cell["metrics"][metric]
            assert summary["per_seed"] == values
            assert summary["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert summary["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            low, high = st.t.interval(0.95, 5, loc=np.mean(values), scale=st.sem(values))
            assert (summary["ci"]["low"], summary["ci"]["high"]) == pytest.approx((low, high))
    for metric in METRICS:
        pairs = report["comparisons"][metric]
        assert len(pairs) == 4  # 2 ε pairs (one per epochs) + 2 epochs pairs (one per ε)
        raw = []
        for pair in pairs:
            a = [per_cell[pair["first"]][s][metric] for s in range(6)]
            b = [per_cell[pair["second"]][s][metric] for s in range(6)]
            d = np.subtract(a, b)
            assert pair["n"] == 6 and pair["mean"] == pytest.approx(d.mean(), abs=1e-12)
            if pair["identical"]:
                assert np.ptp(d) < 1e-12 and pair["t_pvalue"] in (None, 1.0)
                raw.append(pair["t_pvalue"])
                continue
            assert pair["t_pvalue"] == pytest.approx(st.ttest_rel(a, b).pvalue)
            lo, hi = st.t.interval(0.95, 5, loc=d.mean(), scale=st.sem(d))
            assert (pair["ci"]["low"], pair["ci"]["high"]) == pytest.approx((lo, hi))
            boot = st.bootstrap(
                (np.array(a), np.array(b)), lambda x, y: np.mean(x - y), paired=True,
                n_resamples=10_000, method="percentile", rng=np.random.default_rng(1),
            ).confidence_interval  # fmt: skip
            width = hi - lo
            assert pair["bootstrap_ci"]["low"] == pytest.approx(boot.low, abs=0.1 * width)
            assert pair["bootstrap_ci"]["high"] == pytest.approx(boot.high, abs=0.1 * width)
            if np.count_nonzero(np.abs(d) > 1e-12) >= 6:
                exact = st.wilcoxon(a, b, method="exact").pvalue
                assert pair["wilcoxon_pvalue"] == pytest.approx(exact)
            higher = metric.endswith("_acc")
            wins = np.mean([0.5 if abs(x) < 1e-12 else float((x > 0) == higher) for x in d])
            assert pair["wins"] == pytest.approx(wins)
            raw.append(pair["t_pvalue"])
        # Holm over this metric's pairs, by hand.
        present = sorted((p, i) for i, p in enumerate(raw) if p is not None)
        m, running = len(present), 0.0
        for rank, (p, i) in enumerate(present):
            running = max(running, min(1.0, (m - rank) * p))
            assert pairs[i]["t_pvalue_holm"] == pytest.approx(running)
        # The 2 × 2 decomposition per seed: a = (ε 0, 2), b = (ε 0.2, 2), c = (ε 0, 3), d = both.
        a, c, b, d = (np.array([per_cell[i][s][metric] for s in range(6)]) for i in range(4))
        fact = report["factorial"][metric]
        assert fact["first_main"]["per_seed"] == pytest.approx(list((b + d - a - c) / 2))
        assert fact["second_main"]["per_seed"] == pytest.approx(list((c + d - a - b) / 2))
        assert fact["interaction"]["per_seed"] == pytest.approx(list((d - c) - (b - a)))
        assert fact["total"]["mean"] == pytest.approx(
            fact["first_simple"]["mean"] + fact["second_simple"]["mean"]
            + fact["interaction"]["mean"]
        )  # fmt: skip
    assert len(report["verdicts"]) == 4 * len(METRICS) + len(METRICS)
    verdict = next(v for v in report["verdicts"] if v.startswith("test accuracy: ε 0.2 vs ε 0"))
    assert "over 6 seeds" in verdict and " pp [" in verdict
    decomposition = next(v for v in report["verdicts"] if v.startswith("test accuracy from"))
    assert "interaction" in decomposition and "ε 0 → ε 0.2" in decomposition
    # A rerun trains nothing and prints the same numbers.
    again, _ = compare(tmp_path, "--seeds", "0-5")
    assert len(comparison(tmp_path, name).get_trials()) == 12
    assert again["comparisons"] == report["comparisons"]
    # More seeds train only the new ones: 2 ε × 2 seeds.
    more, _ = compare(tmp_path, "--seeds", "0-7")
    assert len(comparison(tmp_path, name).get_trials()) == 16
    assert [len(c["seeds"]) for c in more["cells"]] == [8] * 4


def test_three_seeds_say_why_wilcoxon_is_unavailable_and_warn(tmp_path: Path) -> None:
    report, _ = compare(tmp_path, "--seeds", "0-2", "--metric", "test_acc")
    assert report["metrics"] == ["test_acc"]
    for pair in report["comparisons"]["test_acc"]:
        assert pair["wilcoxon_pvalue"] is None and "6" in pair["wilcoxon_note"]
    assert any("only 3 seeds" in note for note in report["notes"])


def test_markdown_and_dry_run(tmp_path: Path) -> None:
    dry = run_lsearch("compare", *GRID, *SMALL, "--seeds", "0-1", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "4 seed-runs to train" in dry.stdout and "also read at 2 epochs" in dry.stdout
    assert not (tmp_path / "lsearch.db").exists(), "a dry run writes nothing"
    md = run_lsearch("compare", *GRID, *SMALL, "--seeds", "0-1", "--markdown", cwd=tmp_path)
    assert md.returncode == 0, md.stderr
    assert "| cell | n |" in md.stdout and "### Verdicts" in md.stdout
    for label in ("ε 0, 2 epochs", "ε 0, 3 epochs", "ε 0.2, 2 epochs", "ε 0.2, 3 epochs"):
        assert f"| {label} | 2 |" in md.stdout
    dry = run_lsearch("compare", *GRID, *SMALL, "--seeds", "0-1", "--dry-run", cwd=tmp_path)
    assert "0 seed-runs to train" in dry.stdout and "s per seed-epoch" in dry.stdout


@pytest.mark.parametrize("together", [False, True])
def test_two_workers_share_a_grid(tmp_path: Path, together: bool) -> None:
    """Two workers train every seed-run once; with seeds together, each claims up to three
    of a cell's four seed-runs at a time (the digits study's seeds) and trains them as one."""
    setting = ["--set", f"train.seeds_together={str(together).lower()}"]
    report, _ = compare(tmp_path, "--seeds", "0-3", "--workers", "2", *setting)
    study = comparison(tmp_path, report["study"])
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    keys = [(t.params["label_smoothing"], t.params["seed"]) for t in complete]
    assert sorted(keys) == sorted(itertools.product([0.0, 0.2], range(4)))
    grouped = [t for t in complete if t.user_attrs["seeds_together"]]
    assert bool(grouped) is together
    for trial in study.get_trials(states=(TrialState.FAIL,)):
        assert "nothing trained" in trial.user_attrs["fail_reason"]
    assert all(len(cell["seeds"]) == 4 for cell in report["cells"])


def test_evaluate_and_from_best_use_fresh_seeds_and_best_still_works(tmp_path: Path) -> None:
    tiny = [*TINY, "--set", "data.test_per_class=20"]
    assert run_lsearch("run", "--trials", "2", *tiny, cwd=tmp_path).returncode == 0
    result = run_lsearch("evaluate", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["seeds"] == [3, 4, 5, 6, 7]
    assert any("fresh seeds" in note for note in report["notes"])
    (cell,) = report["cells"]
    assert cell["metrics"]["test_acc"]["n"] == 5 and report["comparisons"]["test_acc"] == []
    search = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/lsearch.db")
    assert cell["config"] == search.best_trial.user_attrs["config"]
    assert search.user_attrs["lsearch_test_configurations"] == 1
    # The read-only commands still default to the only search study; status tells them apart.
    status = run_lsearch("status", cwd=tmp_path)
    rows = {line.split("│")[1].strip(): line for line in status.stdout.splitlines() if "│" in line}
    evaluated = rows[f"digits evaluate trial {search.best_trial.number}"]
    assert "search" in rows["digits"] and "comparison" in evaluated
    best_column, checkpoints_column = evaluated.split("│")[-3:-1]
    assert best_column.strip() == "-", "a comparison has no best value to show"
    assert checkpoints_column.strip() == "0", "finished trials keep no checkpoint"
    best = run_lsearch("best", "--json", cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["study"] == "digits"
    from_best = run_lsearch(
        "compare", "--grid", "label_smoothing=0,0.1", "--from-best", *tiny, "--seeds", "0-1",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert from_best.returncode == 0, from_best.stderr
    base = json.loads(from_best.stdout)["base"]
    assert {k: v for k, v in base.items() if k != "label_smoothing"} == {
        k: v for k, v in cell["config"].items() if k != "label_smoothing"
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "momentum=0.9,0.99"], "not a parameter lsearch varies"),
        (["--grid", "label_smoothing=0.1,1.0"], "outside [0, 1)"),
        (["--grid", "epochs=0,5"], "below 1"),
        (["--grid", "trainable_layers=1,9"], "layer groups"),
        (["--grid", "label_smoothing=0.1"], "only one cell"),
        (["--grid", "label_smoothing=0.1,0.2", "--seeds", "3"], "at least 2 seeds"),
        (["--grid", "label_smoothing=0.1,0.2", "--metric", "accuracy"], "not a metric"),
        (["--grid", "label_smoothing=0.1,0.2", "--from-best"], "no study database"),
        (["--grid", "label_smoothing=0.1,0.2", "--set", "data.test_per_class=300"], "fewer"),
    ],
)
def test_bad_compare_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_lsearch("compare", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (tmp_path / "lsearch.db").exists()


def test_bad_evaluate_input(tmp_path: Path) -> None:
    assert run_lsearch("run", "--trials", "1", *TINY, cwd=tmp_path).returncode == 0
    for args, message in [
        (["--trial", "7"], "no complete trial 7"),
        (["--study", "nope"], "no study named 'nope'"),
    ]:
        result = run_lsearch("evaluate", *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # --from-best with a storage that holds no finished search of this study.
    result = run_lsearch(
        "compare", "--grid", "lr=0.001,0.01", "--from-best", "--study", "cifar10-resnet18",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "no search study named" in result.stderr


def test_compare_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    report, _ = compare(tmp_path, "--seeds", "0-1", "--metric", "test_acc", storage=postgres_url)
    study = comparison(tmp_path, report["study"], storage=postgres_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert [c["metrics"]["test_acc"]["n"] for c in report["cells"]] == [2] * 4


def test_progress_of_the_seed_runs_is_drawn_on_a_terminal(tmp_path: Path) -> None:
    text = run_on_terminal(
        "compare", "--grid", "label_smoothing=0,0.2", *SMALL, "--set", "baseline.epochs=2",
        "--seeds", "0-1", cwd=tmp_path,
    )  # fmt: skip
    assert "seed-runs" in text and "4/4" in text and "━" in text


@pytest.mark.parametrize("together", [False, True], ids=["alone", "together"])
def test_a_killed_compare_worker_s_seed_runs_resume_from_their_checkpoints(
    tmp_path: Path, together: bool
) -> None:
    """SIGKILL a worker in its first cell, run the same command again: every seed-run it held
    (one alone, the cell's two as a group together) is failed as stale, and its retry resumes
    from the checkpoint and gives the numbers of a comparison never interrupted (together, to
    float tolerance, 1e-4 relative seen: a retry resumes alone)."""
    import signal
    import subprocess
    import time

    from tests.conftest import LSEARCH

    args = [
        "compare", "--study", "digits", "--grid", "label_smoothing=0,0.2", "--seeds", "0-1",
        "--set", "data.train_per_class=50", "--set", "data.val_per_class=50",
        "--set", "baseline.epochs=20", "--set", "train.patience=100",
        "--set", "storage.heartbeat_interval=1", "--set", "storage.grace_period=3",
        "--set", "checkpoint.every_s=0",  # after every epoch, so the kill lands after one
        "--metric", "test_acc", "--metric", "test_ece",
        "--set", f"train.seeds_together={str(together).lower()}",
    ]  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'crash.db'}"
    victim = subprocess.Popen(
        [LSEARCH, *args, "--storage", storage], cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    name = "digits compare label_smoothing=0,0.2"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:  # not created yet
            trials = []
        held = trials[: 2 if together else 1]  # the group of cell 0's two seed-runs, or one
        pointers = [t.user_attrs.get("checkpoint") for t in held]
        if len(held) == (2 if together else 1) and all(p and p["epoch"] >= 2 for p in pointers):
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    survivor = run_lsearch(*args, "--storage", storage, "--json", cwd=tmp_path)
    assert survivor.returncode == 0, survivor.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    killed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in killed] == ([0, 1] if together else [0])
    assert [t.user_attrs["seeds_together"] for t in killed] == [together] * len(killed)
    for trial in killed:
        (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
        assert retry.state == TrialState.COMPLETE and retry.params == trial.params
        assert retry.user_attrs["resumed_from_epoch"] >= 2
        assert retry.user_attrs["epochs_trained"] == 20 - retry.user_attrs["resumed_from_epoch"]
    # Every cell and seed is there once, with the numbers of a comparison never interrupted.
    clean = run_lsearch(*args, "--storage", f"sqlite:///{tmp_path / 'clean.db'}", "--json",
                        cwd=tmp_path)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    resumed, reference = json.loads(survivor.stdout), json.loads(clean.stdout)
    for got, want in zip(resumed["cells"], reference["cells"], strict=True):
        if not together:
            assert got["metrics"] == want["metrics"]
            continue
        for metric in ("test_acc", "test_ece"):  # 20 epochs move the last bits this far
            expected = want["metrics"][metric]["per_seed"]
            assert got["metrics"][metric]["per_seed"] == pytest.approx(expected, abs=1e-3)
    assert not list((tmp_path / "artifacts").iterdir()), "no checkpoint outlives its seed-run"
