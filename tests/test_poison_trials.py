"""A trial that raises (out of device memory, or a bug one configuration hits) fails that
trial with its reason and the worker goes on; ten in a row stop it with the last reason.

The end-to-end tests inject the failure into the real `lsearch` command without touching
product code: a `sitecustomize.py` on PYTHONPATH wraps
`lsearch.training.seed_run.SeedRun.train_epoch` once that module is imported.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from lsearch import interrupts
from lsearch.comparison import Plan, SeedRunObjective, failed_keys, run_plans
from lsearch.errors import UserError
from lsearch.search.loop import StopOnRepeatedFailure
from lsearch.search.objective import TrialConfig
from lsearch.search.trial_group import MAX_REASON_CHARS, failure_reason, run_one
from lsearch.spec import StudySpec
from lsearch.store.catalog import OUT_OF_MEMORY_ATTR
from tests.conftest import TINY, run_lsearch

DB = "lsearch.db"
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
    "of which 1.02 GiB is free."
)

# Wraps SeedRun.train_epoch as soon as lsearch.training.seed_run is imported (an import hook, so
# the command's own import order is untouched). RAISE is filled in per test; WHEN is
# "first" (the first call in the process only), a call's number, or "always".
SITECUSTOMIZE = """
import importlib.abc
import importlib.machinery
import sys

WHEN = {when!r}


def make_error():
    import torch  # noqa: F401  (torch.OutOfMemoryError)

    return {error}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        original = module.SeedRun.train_epoch
        calls = []

        def train_epoch(self):
            calls.append(1)
            if WHEN == "always" or len(calls) == (1 if WHEN == "first" else int(WHEN)):
                raise make_error()
            return original(self)

        module.SeedRun.train_epoch = train_epoch


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "lsearch.training.seed_run":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
"""


def inject(tmp_path: Path, error: str, when: str) -> dict[str, str]:
    """The environment that makes `lsearch` raise `error` (Python source) in train_epoch."""
    site = tmp_path / "inject"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(SITECUSTOMIZE).format(when=when, error=error)
    )
    return {"PYTHONPATH": str(site)}


def search(tmp_path: Path, env: dict[str, str], *extra: str) -> Any:
    return run_lsearch(
        "run", "--trials", "3", *TINY, *extra,
        "--storage", f"sqlite:///{tmp_path / DB}",
        "--set", 'pruner.type="none"',
        "--set", 'sampler.type="random"',
        cwd=tmp_path, env=env,
    )  # fmt: skip


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / DB}")


# ----------------------------------------------------------------------------- end to end


def test_out_of_memory_in_an_epoch_fails_that_trial_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    env = inject(tmp_path, f"torch.OutOfMemoryError({OOM_MESSAGE!r})", "first")
    result = search(tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    trials = load(tmp_path).get_trials()
    first, *rest = trials
    assert first.number == 0 and first.state == TrialState.FAIL
    reason = first.user_attrs["fail_reason"]
    assert "out of memory" in reason and "2.00 GiB" in reason, reason
    assert "cpu" in reason, "the device is named (its memory is unknown on the CPU)"
    assert first.user_attrs[OUT_OF_MEMORY_ATTR] is True
    assert [t.state for t in rest] == [TrialState.COMPLETE] * 3, "the next trials ran"
    # Told FAIL, not left stale: no heartbeat retry re-queued the configuration.
    assert not any("failed_trial" in t.system_attrs for t in trials)
    lines = [line for line in result.stderr.splitlines() if "trial 0 failed" in line]
    assert lines and all("2.00 GiB" in line for line in lines), result.stderr


def test_a_trial_that_raises_fails_with_its_reason_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    env = inject(tmp_path, "ValueError('poison configuration\\nsecond line')", "first")
    result = search(tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    first, *rest = load(tmp_path).get_trials()
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"] == "ValueError: poison configuration second line"
    assert OUT_OF_MEMORY_ATTR not in first.user_attrs
    assert [t.state for t in rest] == [TrialState.COMPLETE] * 3
    assert "trial 0 failed: ValueError: poison configuration second line" in result.stderr


def test_a_trial_that_raises_after_a_checkpoint_leaves_no_checkpoint(tmp_path: Path) -> None:
    """It is failed, never resumed: its checkpoint must not outlive it. (Call 4 of
    train_epoch is seed 0's second epoch, after epoch 1 was checkpointed.)"""
    env = inject(tmp_path, "ValueError('poison at epoch 2')", "4")
    result = search(tmp_path, env, "--set", "checkpoint.every_s=0")
    assert result.returncode == 0, result.stderr
    first, *rest = load(tmp_path).get_trials()
    assert first.state == TrialState.FAIL and "poison at epoch 2" in first.user_attrs["fail_reason"]
    assert first.user_attrs.get("checkpoint") is None
    assert [t.state for t in rest] == [TrialState.COMPLETE] * 3
    assert list((tmp_path / "artifacts").iterdir()) == [], "no checkpoint outlives its trial"


def test_ten_poison_trials_in_a_row_stop_the_worker_with_the_last_reason(tmp_path: Path) -> None:
    env = inject(tmp_path, "RuntimeError('poison')", "always")
    result = search(tmp_path, env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    trials = load(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 10
    assert all(t.user_attrs["fail_reason"] == "RuntimeError: poison" for t in trials)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line == (
        "error: 10 trials in a row failed; the last: trial 9: RuntimeError: poison; "
        "fix the search space or training settings and run again"
    )


# ----------------------------------------------------------------------------- reasons


def test_an_out_of_memory_reason_names_the_memory_asked_for_and_the_device() -> None:
    reason = failure_reason(torch.OutOfMemoryError(OOM_MESSAGE), torch.device("cpu"))
    assert reason.startswith("OutOfMemoryError: out of memory")
    assert "asked for 2.00 GiB" in reason and "memory of cpu is unknown" in reason
    mps = torch.OutOfMemoryError("MPS backend out of memory. Tried to allocate 256 bytes on x")
    assert "asked for 256 bytes" in failure_reason(mps, "mps")


def test_an_out_of_memory_reason_says_what_is_unknown() -> None:
    reason = failure_reason(torch.OutOfMemoryError("out of memory"), None)
    assert "an unknown amount" in reason and "device and its memory are unknown" in reason
    # A CUDA device without CUDA initialised here: its memory is not read, and not guessed.
    cuda = failure_reason(torch.OutOfMemoryError(OOM_MESSAGE), "cuda:0")
    assert "2.00 GiB" in cuda and "memory of cuda:0 is unknown" in cuda
    assert "unknown" in failure_reason(torch.OutOfMemoryError(OOM_MESSAGE), "no such device")


def test_a_reason_is_one_line_of_bounded_length() -> None:
    reason = failure_reason(KeyError("x\n" * 1000))
    assert "\n" not in reason and len(reason) <= MAX_REASON_CHARS
    assert reason.startswith("KeyError: ") and reason.endswith("...")
    assert failure_reason(RuntimeError()) == "RuntimeError"


def test_stop_on_repeated_failure_names_the_last_reason() -> None:
    stop = StopOnRepeatedFailure(limit=2)
    study = optuna.create_study()
    for reason in ["A: one", "B: two"]:
        trial = study.ask()
        trial.set_user_attr("fail_reason", reason)
        stop(study, study.tell(trial, state=TrialState.FAIL))
    assert stop.tripped
    assert "2 trials in a row failed; the last: trial 1: B: two;" in str(stop.error())


# ----------------------------------------------------------------------------- run_one


def raising(exc: BaseException, reason: str | None = None) -> Any:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        if reason is not None:
            trial.set_user_attr("fail_reason", reason)
        raise exc

    return objective


def test_run_one_fails_a_poison_trial_and_frees_memory_after_out_of_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released: list[int] = []
    monkeypatch.setattr("lsearch.search.trial_group.release_memory", lambda: released.append(1))
    study = optuna.create_study()
    seen: list[int] = []
    callbacks = [lambda s, t: seen.append(t.number)]
    (frozen,) = run_one(study, raising(ValueError("bad")), callbacks, ())
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["fail_reason"] == "ValueError: bad" and not released
    (frozen,) = run_one(study, raising(torch.OutOfMemoryError(OOM_MESSAGE)), callbacks, ())
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs[OUT_OF_MEMORY_ATTR] is True and released == [1]
    assert seen == [0, 1], "the callbacks see a poison trial like any failed one"


def test_run_one_keeps_a_reason_the_objective_recorded() -> None:
    study = optuna.create_study()
    (frozen,) = run_one(study, raising(RuntimeError("late"), reason="its own reason"), [], ())
    assert frozen.user_attrs["fail_reason"] == "its own reason"


@pytest.mark.parametrize(
    "exc",
    [
        UserError("no GPU"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed")),
        interrupts.Interrupted("SIGTERM"),
        KeyboardInterrupt(),
    ],
    ids=["user error", "storage outage", "interrupted", "keyboard interrupt"],
)
def test_run_one_still_raises_what_stops_the_worker(exc: BaseException) -> None:
    study = optuna.create_study()
    with pytest.raises(type(exc)):
        run_one(study, raising(exc), [], ())
    assert "fail_reason" not in study.trials[0].user_attrs


# ----------------------------------------------------------------------------- compare


class FakeTraining:
    """SearchObjective.train as SeedRunObjective calls it, failing as `script` says per seed."""

    device = torch.device("cpu")
    spec = StudySpec.model_validate({"name": "fake"})  # seeds_together auto: alone on the CPU

    def __init__(self, script: dict[int, list[BaseException | None]]) -> None:
        self.script = script
        self.calls: dict[int, int] = {}

    def train(self, trial: optuna.Trial, config: TrialConfig, seeds: list[int], **_: Any) -> Any:
        (seed,) = seeds
        attempt = self.calls.get(seed, 0)
        self.calls[seed] = attempt + 1
        outcomes = self.script[seed]
        error = outcomes[min(attempt, len(outcomes) - 1)]
        if error is not None:
            raise error
        return {"test_acc": 0.5}


def test_a_comparison_retries_an_out_of_memory_seed_run_once() -> None:
    oom = torch.OutOfMemoryError(OOM_MESSAGE)
    fake = FakeTraining(
        {
            0: [oom],  # out of memory every time: tried twice, then left failed
            1: [oom, None],  # out of memory once (another worker's memory): the retry trains
            2: [ValueError("poison")],  # any other exception: not retried
            3: [None],
        }
    )
    config = TrialConfig(0.1, 3, 0.01, 1)

    plans = [Plan(config, seed, ()) for seed in range(4)]
    study = optuna.create_study(direction="maximize")
    run_plans(study, SeedRunObjective(fake, None, plans), liveness=None)  # type: ignore[arg-type]
    assert fake.calls == {0: 2, 1: 2, 2: 1, 3: 1}
    by_seed: dict[int, list[TrialState]] = {}
    for trial in study.trials:
        by_seed.setdefault(int(trial.params["seed"]), []).append(trial.state)
    assert by_seed[0] == [TrialState.FAIL, TrialState.FAIL]
    assert by_seed[1] == [TrialState.FAIL, TrialState.COMPLETE]
    assert by_seed[2] == [TrialState.FAIL] and by_seed[3] == [TrialState.COMPLETE]
    # What a rerun (and the report) sees as failed for good, with its reason.
    failed = {key[-1]: reason for key, reason in failed_keys(study.trials).items()}
    assert set(failed) == {0, 2}
    assert "2.00 GiB" in failed[0] and failed[2] == "ValueError: poison"


def test_run_one_raises_what_a_callback_raised_once_the_trial_is_told() -> None:
    study = optuna.create_study()

    def broken(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError, match="callback broke"):
        run_one(study, lambda trial: 1.0, [broken], ())
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_trial_whose_tell_meets_an_outage_is_left_running_for_its_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The outage stops the worker; the trial, trained, is left RUNNING for the stale-trial
    sweep to re-queue (its retry resumes the checkpoint), never told FAIL, even when the
    database is back a moment later."""
    study = optuna.create_study()
    real_tell, calls = study.tell, []

    def tell(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("connection refused"))
        return real_tell(*args, **kwargs)

    monkeypatch.setattr(study, "tell", tell)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        run_one(study, lambda trial: 1.0, [], ())
    assert study.trials[0].state == TrialState.RUNNING
