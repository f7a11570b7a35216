"""End to end: the real `lsearch` command in a subprocess, on the digits study, real SQLite."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.conftest import TINY, run_lsearch, run_on_terminal

DB = "lsearch.db"
PER_SEED_KEYS = ("val_acc_per_seed", "val_ece_per_seed", "val_nll_per_seed", "temperature_per_seed")
CURVES = ("curve_train_loss", "curve_val_loss", "curve_val_acc", "curve_val_ece")


def load(tmp_path: Path, name: str = "digits", db: str = DB) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / db}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_run_records_a_plain_optuna_study_with_per_seed_metrics(tmp_path: Path) -> None:
    result = run_lsearch("run", "--trials", "3", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / DB).is_file(), "the default storage is sqlite:///lsearch.db in the cwd"
    assert "top 3 complete trials" in result.stdout or "complete trials" in result.stdout
    study = load(tmp_path)
    trials = finished(study)
    assert len(trials) == 3
    for trial in trials:
        attrs = trial.user_attrs
        assert attrs["seeds"] == [0, 1, 2]
        assert attrs["threads"] >= 1, "each trial records its share of the cores"
        runs = attrs["epochs_run"]
        for key in PER_SEED_KEYS:
            assert len(attrs[key]) == 3, key
        for key in CURVES:
            assert [len(curve) for curve in attrs[key]] == [runs] * 3, key
        # The chosen epoch is the one with the best mean validation accuracy over seeds.
        means = [statistics.fmean(epoch) for epoch in zip(*attrs["curve_val_acc"], strict=True)]
        assert attrs["best_epoch"] == 1 + means.index(max(means))
        best = attrs["best_epoch"] - 1
        assert attrs["val_acc_per_seed"] == [c[best] for c in attrs["curve_val_acc"]]
        assert attrs["val_ece_per_seed"] == [c[best] for c in attrs["curve_val_ece"]]
        assert attrs["val_acc"] == pytest.approx(statistics.fmean(attrs["val_acc_per_seed"]))
        assert attrs["val_ece"] == pytest.approx(statistics.fmean(attrs["val_ece_per_seed"]))
        assert 0.0 <= attrs["val_ece"] <= 1.0
        assert attrs["train_seconds"] > 0 and attrs["device"] == "cpu"
        assert set(attrs["config"]) == {"label_smoothing", "epochs", "lr", "trainable_layers"}
        assert attrs["chosen_by"] == "val_acc"
        # The pruner saw, after every epoch, the mean over seeds at the best epoch so far;
        # so every trial's value (a pruned one's is its last report) is its val_acc attr.
        assert sorted(trial.intermediate_values) == list(range(1, runs + 1))
        for epoch, value in trial.intermediate_values.items():
            assert value == pytest.approx(max(means[:epoch]))
        assert trial.value == pytest.approx(attrs["val_acc"])
    assert set(study.user_attrs) >= {"lsearch_spec", "lsearch_spec_fingerprint"}


def test_trials_is_a_total_and_a_rerun_continues_to_it(tmp_path: Path) -> None:
    assert run_lsearch("run", "--trials", "2", *TINY, cwd=tmp_path).returncode == 0
    assert len(finished(load(tmp_path))) == 2
    again = run_lsearch("run", "--trials", "4", *TINY, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 of 4 trials finished" in again.stderr
    assert len(finished(load(tmp_path))) == 4
    assert run_lsearch("run", "--trials", "4", *TINY, cwd=tmp_path).returncode == 0
    assert len(load(tmp_path).trials) == 4, "a study already at N runs no more trials"


def test_same_spec_params_and_seed_give_the_same_numbers(tmp_path: Path) -> None:
    for db in ("a.db", "b.db"):
        result = run_lsearch(
            "run", "--trials", "2", "--storage", f"sqlite:///{db}", *TINY, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
    first, second = (load(tmp_path, db=db).trials for db in ("a.db", "b.db"))
    for a, b in zip(first, second, strict=True):
        assert a.params == b.params
        for key in (*CURVES, "val_acc", "val_ece", "temperature_per_seed"):
            assert a.user_attrs[key] == b.user_attrs[key], key


def test_status_and_best(tmp_path: Path) -> None:
    assert run_lsearch("run", "--trials", "2", *TINY, cwd=tmp_path).returncode == 0
    status = run_lsearch("status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "digits" in status.stdout and "maximize" in status.stdout
    best = run_lsearch("best", "--json", cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    payload = json.loads(best.stdout)
    study = load(tmp_path)
    assert payload["study"] == "digits"
    assert payload["best"]["number"] == study.best_trial.number
    assert payload["best"]["values"] == [study.best_value]
    assert payload["best"]["val_acc"] == study.best_trial.user_attrs["val_acc"]
    assert payload["best"]["params"] == study.best_trial.user_attrs["config"]
    table = run_lsearch("best", "--study", "digits", cwd=tmp_path)
    assert table.returncode == 0 and "label_smoothing" in table.stdout


def test_multi_objective_records_two_values_and_never_prunes(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", "--trials", "3", *TINY, "--set", 'objective.metric="val_acc+val_ece"', cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "cannot prune a multi-objective study" in result.stderr
    study = load(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.values == [trial.user_attrs["val_acc"], trial.user_attrs["val_ece"]]
        assert trial.intermediate_values == {}
    best = json.loads(run_lsearch("best", "--json", cwd=tmp_path).stdout)["best"]
    front = best if isinstance(best, list) else [best]
    assert {t["number"] for t in front} == {t.number for t in study.best_trials}


def test_ece_objective_minimises_mean_ece(tmp_path: Path) -> None:
    args = ("run", "--trials", "2", *TINY, "--set", 'objective.metric="val_ece"')
    assert (
        run_lsearch(*args, "--set", 'objective.select_epoch="final"', cwd=tmp_path).returncode == 0
    )
    study = load(tmp_path)
    assert study.direction.name == "MINIMIZE"
    for trial in finished(study):
        attrs = trial.user_attrs
        assert attrs["chosen_epoch"] == attrs["epochs_run"]
        assert trial.value == pytest.approx(attrs["val_ece"])
        last = attrs["epochs_run"]
        mean_ece = statistics.fmean(c[-1] for c in attrs["curve_val_ece"])
        assert trial.intermediate_values[last] == pytest.approx(mean_ece)


def test_a_hopeless_trial_is_pruned_with_its_curves_recorded(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", "--trials", "6", *TINY,
        "--set", "space.epochs=4",
        "--set", "train.patience=100",
        "--set", 'pruner.type="percentile"',
        "--set", "pruner.percentile=90.0",
        "--set", "pruner.n_startup_trials=1",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pruned = load(tmp_path).get_trials(states=(TrialState.PRUNED,))
    assert pruned, "a 90th-percentile pruner prunes most trials after the first"
    for trial in pruned:
        attrs = trial.user_attrs
        assert attrs["pruned_at_epoch"] == attrs["epochs_run"] < 4
        assert max(trial.intermediate_values) == attrs["epochs_run"]


def test_patience_stops_a_trial_early(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", "--trials", "1", *TINY, "--set", "space.epochs=30", "--set", "train.patience=1",
        "--set", "space.lr=0.0001", "--set", 'pruner.type="none"', cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (trial,) = load(tmp_path).trials
    attrs = trial.user_attrs
    means = [statistics.fmean(e) for e in zip(*attrs["curve_val_acc"], strict=True)]
    runs = attrs["epochs_run"]
    if runs < 30:  # stopped: the last epoch did not beat the best one before it
        assert means[-1] <= max(means[:-1]) and runs == attrs["best_epoch"] + 1
    else:
        assert all(b > a for a, b in itertools.pairwise(means))


def test_a_diverging_trial_fails_with_its_reason_and_the_search_goes_on(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", "--trials", "3", *TINY,
        "--set", "space.lr=[1e25, 0.001]",
        "--set", "space.trainable_layers=4",
        "--set", 'sampler.type="random"',
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = load(tmp_path)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed, "lr = 1e25 diverges"
    assert len(finished(study)) == 3
    for trial in failed:
        assert "nan" in trial.user_attrs["fail_reason"] or "inf" in trial.user_attrs["fail_reason"]
        assert f"trial {trial.number} failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_search_where_every_trial_fails_ends_with_a_user_error(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", "--trials", "3", *TINY,
        "--set", "space.lr=1e25", "--set", "space.trainable_layers=4", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "trials in a row failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_different_spec_on_an_existing_study_is_refused(tmp_path: Path) -> None:
    assert run_lsearch("run", "--trials", "1", *TINY, cwd=tmp_path).returncode == 0
    other = run_lsearch("run", "--trials", "2", *TINY, "--set", "train.batch_size=32", cwd=tmp_path)
    assert other.returncode == 2
    assert "different study file" in other.stderr and "--name" in other.stderr
    assert len(load(tmp_path).trials) == 1
    named = run_lsearch(
        "run",
        "--trials",
        "1",
        *TINY,
        "--set",
        "train.batch_size=32",
        "--name",
        "bs32",
        cwd=tmp_path,
    )
    assert named.returncode == 0, named.stderr
    assert len(load(tmp_path, "bs32").trials) == 1


def _cuda_absent_device() -> str:
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


BAD_RUNS = [
    (["--study", "missing.toml"], "not found"),
    (["--study", "notoml.toml"], "not valid TOML"),
    (["--study", "unknown.toml"], "unknown key 'trian'"),
    (["--set", "space.label_smoothing.high=1.0"], "[0, 1)"),
    (["--set", "space.lr=-0.01"], "lr must be positive"),
    (["--set", "space.trainable_layers=9"], "small_cnn has 4 layer groups"),
    (["--set", 'data.dataset="mnist"'], "data.dataset"),
    (["--set", 'model.name="vgg16"'], "model.name"),
    (["--set", "bad"], "key=value"),
    # Non-finite or absurd values are user errors, never tracebacks or stored studies.
    (["--set", "space.trainable_layers=inf"], "trainable_layers.value: Input should be a finite"),
    (["--set", "space.lr=nan"], "space.lr.value: Input should be a finite number"),
    (["--set", "space.label_smoothing=nan"], "finite number"),
    (["--set", "space.lr=inf"], "finite number"),
    (["--set", "space.lr.high=inf"], "finite number"),
    (["--set", "train.eval_batch_size=0"], "greater than 0"),
    (["--set", "seeds=[]"], "at least one seed"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--trials", "-3"], "--trials must be at least 1"),
    (["--timeout", "0"], "--timeout"),
    (["--device", _cuda_absent_device()], "--device"),
    (["--device", "tpu"], "--device"),
    (["--storage", "not a url"], "malformed"),
    (["--storage", "nosuchdb://x/y"], "unknown database driver"),
    (["--storage", "sqlite:///no/such/dir/x.db"], "does not exist"),
    (
        ["--study", "cifar10-resnet18",
         "--set", "data.root=nodata", "--set", "data.download=false"],
        "CIFAR-10 is not in nodata/cifar-10-batches-py",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_RUNS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "notoml.toml").write_text("name = [unclosed\n")
    (tmp_path / "unknown.toml").write_text('name = "x"\n[trian]\nbatch_size = 1\n')
    result = run_lsearch("run", *TINY, *args, cwd=tmp_path)  # args after TINY: its --study loses
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not (tmp_path / DB).exists(), "a failed start must not create the storage"


def test_a_missing_weights_file_is_a_user_error_before_storage(tmp_path: Path) -> None:
    result = run_lsearch("run", "--set", 'model.weights="missing.pth"', *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert "model.weights: no file at missing.pth" in result.stderr
    assert not (tmp_path / DB).exists()


def test_unreachable_storage_never_prints_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://lsearch:s3cretpw@127.0.0.1:1/studies"
    for args in (["run", *TINY, "--storage", url], ["status", "--storage", url],
                 ["best", "--storage", url]):  # fmt: skip
        result = run_lsearch(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "s3cretpw" not in result.stderr + result.stdout
        assert (
            "cannot open storage postgresql+psycopg://lsearch:***@127.0.0.1:1/studies"
            in result.stderr
        )
    env_result = run_lsearch("status", cwd=tmp_path, env={"LSEARCH_STORAGE": url})
    assert env_result.returncode == 2 and "s3cretpw" not in env_result.stderr


def test_readers_do_not_create_a_storage_and_name_missing_studies(tmp_path: Path) -> None:
    for command in ("status", "best"):
        result = run_lsearch(command, cwd=tmp_path)
        assert result.returncode == 2
        assert "no study database at lsearch.db" in result.stderr
    assert not (tmp_path / DB).exists()
    assert run_lsearch("run", "--trials", "1", *TINY, cwd=tmp_path).returncode == 0
    for command in ("best", "status"):
        missing = run_lsearch(command, "--study", "nope", cwd=tmp_path)
        assert missing.returncode == 2
        assert "no study named 'nope'" in missing.stderr and "digits" in missing.stderr
        assert len(missing.stderr.strip().splitlines()) == 1
    one = run_lsearch("status", "--study", "digits", cwd=tmp_path)
    assert one.returncode == 0 and "digits" in one.stdout


def test_progress_is_drawn_on_a_terminal_and_not_elsewhere(tmp_path: Path) -> None:
    plain = run_lsearch(
        "run", "--trials", "1", *TINY, "--storage", "sqlite:///plain.db", cwd=tmp_path
    )
    assert plain.returncode == 0 and "━" not in plain.stderr
    # The same command with its stderr on a pseudo-terminal, as in an interactive shell.
    text = run_on_terminal(
        "run", "--trials", "2", *TINY, "--storage", "sqlite:///tty.db", cwd=tmp_path
    )
    assert "━" in text and "2/2" in text and "trials" in text


# What files under lsearch/cli may import: the API, the one user-error type, typer, rich and
# the standard library (issue 17: the CLI only parses and prints).
CLI_MAY_IMPORT = ("lsearch.api", "lsearch.errors", "lsearch.cli", "typer", "rich")


def _imports(path: Path) -> list[str]:
    """Every module a file imports (`from lsearch import api` counts as lsearch.api)."""
    import ast

    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "lsearch":
                names += [f"lsearch.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def _allowed(module: str) -> bool:
    import sys

    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return True
    return any(module == name or module.startswith(name + ".") for name in CLI_MAY_IMPORT)


def test_the_cli_imports_only_the_api_typer_rich_and_the_standard_library() -> None:
    folder = Path(__file__).resolve().parent.parent / "lsearch" / "cli"
    files = sorted(folder.rglob("*.py"))
    assert len(files) > 3
    wrong = [f"{path.name}: {name}" for path in files for name in _imports(path)
             if not _allowed(name)]  # fmt: skip
    assert wrong == []
    assert not _allowed("optuna") and not _allowed("lsearch.search.launch")
    assert not _allowed("torch") and _allowed("json") and _allowed("lsearch.api.results")
