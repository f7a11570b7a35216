"""A comparison's seed-runs of one cell claimed and trained together (comparison.group): the
same numbers as each alone, one heartbeat thread, one checkpoint write at a time, each
seed-run stopping on its own, faults failing only their seed-run, and hand-backs that
resume per seed."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from lsearch import interrupts
from lsearch.api.common import interrupt_message
from lsearch.comparison import Plan, SeedRunObjective, run_plans
from lsearch.search.checkpoints import Checkpoints, open_artifact_store
from lsearch.search.loop import liveness_for
from lsearch.search.objective import SearchObjective, TrialConfig
from lsearch.search.trial_group import TrialGroup
from lsearch.spec import StudySpec
from lsearch.training import together as together_module
from lsearch.training.data import load_pool, load_test_set

CPU = torch.device("cpu")
CONFIGS = (TrialConfig(0.0, 6, 3e-3, 3), TrialConfig(0.2, 6, 3e-3, 3))
SEEDS = (0, 1, 2)
SPEC = {
    "name": "group",
    "seeds": [0, 1, 2],  # a search trial's seeds: how many seed-runs a worker groups
    "data": {"dataset": "digits", "train_per_class": 8, "val_per_class": 6,
             "test_per_class": 10},
    "model": {"name": "small_cnn", "width": 8},
    "train": {"batch_size": 32, "optimizer": "adam", "schedule": "constant", "patience": 1},
    "checkpoint": {"every_s": 0},
}  # fmt: skip


def _compare(
    tmp_path: Path,
    together: bool,
    study: optuna.Study | None = None,
    on_epoch: Any = None,
    heartbeat: bool = False,
) -> optuna.Study:
    """Every seed of CONFIGS as a comparison's seed-runs, in the one trial loop."""
    train = {**SPEC["train"], "seeds_together": together}
    spec = StudySpec.model_validate({**SPEC, "train": train})
    folder = tmp_path / ("together" if together else "alone")
    folder.mkdir(exist_ok=True)
    objective = SearchObjective(
        spec, load_pool(spec.data, CPU), CPU, on_epoch=on_epoch,
        checkpoints=Checkpoints(open_artifact_store(str(folder))),
    )  # fmt: skip
    study = study or optuna.create_study(direction="maximize")
    liveness = liveness_for(study._storage, 0.05, 60.0, lambda s, t: None) if heartbeat else None
    plans = [Plan(config, seed, (2,)) for config in CONFIGS for seed in SEEDS]
    run_plans(study, SeedRunObjective(objective, load_test_set(spec.data, CPU), plans), liveness)
    return study


def _by_key(study: optuna.Study, state: TrialState = TrialState.COMPLETE) -> dict:
    trials = study.get_trials(states=(state,))
    return {(t.params["label_smoothing"], t.params["seed"]): t for t in trials}


def _same_results(mine: FrozenTrial, theirs: FrozenTrial) -> None:
    assert mine.user_attrs["epochs_run"] == theirs.user_attrs["epochs_run"]
    assert mine.user_attrs["chosen_epoch"] == theirs.user_attrs["chosen_epoch"]
    assert mine.user_attrs["curve_val_acc"] == theirs.user_attrs["curve_val_acc"]
    for name in ("curve_train_loss", "curve_val_loss", "test_acc", "test_ece", "test_nll"):
        torch.testing.assert_close(
            mine.user_attrs[name], theirs.user_attrs[name], rtol=1e-4, atol=1e-5
        )
    assert mine.user_attrs["held_out"].keys() == theirs.user_attrs["held_out"].keys()


def test_a_cells_seed_runs_train_together_as_each_alone_under_one_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cells of three seeds: two groups of three trials, each seed-run stopping on its
    own patience (the others train on), with the numbers of each seed-run alone; while a
    group trains, its three trials run under one heartbeat thread and their checkpoints are
    written one at a time."""
    writing, most_at_once = [0], [0]
    real_save = Checkpoints.save

    def save(self: Checkpoints, trial: Any, epoch: int, state: dict[str, Any]) -> None:
        writing[0] += 1
        most_at_once[0] = max(most_at_once[0], writing[0])
        try:
            real_save(self, trial, epoch, state)
        finally:
            writing[0] -= 1

    monkeypatch.setattr(Checkpoints, "save", save)
    seen: list[tuple[int, int, int]] = []  # (trial, running trials, heartbeat threads)
    study = optuna.create_study(direction="maximize")

    def on_epoch(number: int, epoch: int, epochs: int, value: float) -> None:
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        beating = [t for t in threading.enumerate() if t.name == "lsearch-heartbeat"]
        seen.append((number, running, len(beating)))

    _compare(tmp_path, together=True, study=study, on_epoch=on_epoch, heartbeat=True)
    alone = _by_key(_compare(tmp_path, together=False))
    together = _by_key(study)
    assert len(study.trials) == 6 and together.keys() == alone.keys()
    for key, trial in together.items():
        assert trial.user_attrs["seeds_together"] is True
        assert alone[key].user_attrs["seeds_together"] is False
        _same_results(trial, alone[key])
    epochs_run = {trial.user_attrs["epochs_run"] for trial in together.values()}
    assert len(epochs_run) > 1, "seed-runs stop on their own patience, at different epochs"
    assert max(running for _, running, _ in seen) == 3
    assert {beating for _, _, beating in seen} == {1}
    assert most_at_once == [1]
    # Beat 0 is written as a trial joins, later ones by the thread every 0.05 s: a seed-run
    # that stops within that may keep beat 0 (it failed so once in a full run), but in each
    # cell the thread beat for the group.
    for smoothing in {key[0] for key in together}:
        group = [trial for key, trial in together.items() if key[0] == smoothing]
        assert max(t.system_attrs["lsearch_heartbeat"]["beat"] for t in group) > 0


def test_a_seed_run_whose_loss_is_not_finite_fails_alone_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = together_module.mean_loss

    def mean_loss(total: float, count: int, batch: int, seed: int) -> float:
        return real(float("nan") if seed == 1 else total, count, batch, seed)

    monkeypatch.setattr(together_module, "mean_loss", mean_loss)
    study = _compare(tmp_path, together=True)
    failed = _by_key(study, TrialState.FAIL)
    assert set(failed) == {(0.0, 1), (0.2, 1)}
    for trial in failed.values():
        assert trial.user_attrs["fail_reason"] == "training loss became nan (seed 1) at epoch 1"
    monkeypatch.undo()
    alone = _by_key(_compare(tmp_path, together=False))
    complete = _by_key(study)
    assert set(complete) == {(e, s) for e in (0.0, 0.2) for s in (0, 2)}
    for key, trial in complete.items():
        _same_results(trial, alone[key])


@pytest.mark.parametrize("how", ["SIGTERM", "SIGTERM one after another", "second Ctrl-C"])
def test_an_interrupted_group_is_handed_back_and_each_seed_run_resumes_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A stop in a group's second epoch (SIGTERM between batches, or a second Ctrl-C's
    KeyboardInterrupt after the third trial's first epoch): its three trials are handed back
    as WAITING retries, none failed, with their first epoch's checkpoint; the rerun resumes
    each alone (a retry resumes its own epoch), and every seed-run ends as the uninterrupted
    one does. One after another (where seeds cannot train together, as under float16's
    gradient scaler) the first trial stops in its second epoch and the other two, not yet
    started, are handed back unstarted."""
    if how.endswith("one after another"):
        monkeypatch.setattr("lsearch.comparison.group.trains_together", lambda *args: False)

    def stop(number: int, epoch: int, epochs: int, value: float) -> None:
        if how == "second Ctrl-C" and number == 2 and epoch == 1:
            raise KeyboardInterrupt
        if how.startswith("SIGTERM") and epoch == 1:
            interrupts.request("SIGTERM")  # seen at the next batch: every epoch 1 is saved

    study = optuna.create_study(direction="maximize")
    stopped = interrupts.Interrupted if how.startswith("SIGTERM") else KeyboardInterrupt
    try:
        with pytest.raises(stopped) as raised:
            _compare(tmp_path, together=True, study=study, on_epoch=stop)
    finally:
        interrupts.reset()
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 3 and [t.number for t in waiting] == [3, 4, 5]
    assert not [t for t in study.trials if "fail_reason" in t.user_attrs]
    if how == "SIGTERM":
        assert raised.value.handed_back == [(0, 3), (1, 4), (2, 5)]
        assert "trials 0, 1, 2 were stopped and handed back as trials 3, 4, 5" in (
            interrupt_message(raised.value, "the comparison")
        )
    monkeypatch.undo()
    _compare(tmp_path, together=True, study=study)
    resumed = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.number in (3, 4, 5)]
    assert len(resumed) == 3
    started = resumed[:1] if how.endswith("one after another") else resumed
    for trial in resumed:
        assert trial.user_attrs.get("resumed_from_epoch") == (1 if trial in started else None)
        assert trial.user_attrs["seeds_together"] is False
    alone = _by_key(_compare(tmp_path, together=False))
    for key, trial in _by_key(study).items():
        _same_results(trial, alone[key])


def test_a_group_grows_with_free_seed_runs_of_its_cell_never_one_that_ran_out_of_memory() -> None:
    """The members a group claims beside its first: free seed-runs of the same cell, up to
    the study's `seeds`, leaving out one whose earlier try ran out of device memory (it tries
    again alone); a first claim that ran out of memory claims nothing more."""
    spec = StudySpec.model_validate({**SPEC, "train": {**SPEC["train"], "seeds_together": True}})
    objective = SearchObjective(spec, load_pool(spec.data, CPU), CPU)
    config = CONFIGS[0]
    plans = [Plan(config, seed, ()) for seed in range(5)] + [Plan(CONFIGS[1], 0, ())]
    runs = SeedRunObjective(objective, None, plans)  # type: ignore[arg-type]
    study = optuna.create_study(direction="maximize")
    out_of_memory = study.ask()
    runs._claim(out_of_memory, plans[1])
    out_of_memory.set_user_attr("out_of_memory", True)
    out_of_memory.set_user_attr("fail_reason", "OutOfMemoryError: out of memory")
    study.tell(out_of_memory, state=TrialState.FAIL)

    group = TrialGroup(study, [], ())
    group.trials.append(study.ask())
    first = runs._claim(group.trials[0], plans[0])
    claimed = [plan.seed for _, plan in runs._claim_more(group, first)]
    assert claimed == [2, 3], "seed 1 ran out of memory; the group holds 3 (the study's seeds)"

    alone = TrialGroup(study, [], ())
    alone.trials.append(study.ask())
    assert runs._claim_more(alone, runs._claim(alone.trials[0], plans[1])) == []


def test_a_group_out_of_memory_fails_its_trials_and_each_tries_again_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(self: Any) -> list[float]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    monkeypatch.setattr(together_module.SeedGroup, "train_epoch_each", out_of_memory)
    study = _compare(tmp_path, together=True)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 6 and all(t.user_attrs["out_of_memory"] for t in failed)
    complete = _by_key(study)
    assert len(complete) == 6, "each seed-run is tried once more, alone"
    assert all(t.user_attrs["seeds_together"] is False for t in complete.values())


@pytest.mark.parametrize(("capability", "size"), [((7, 5), 1), ((8, 0), 3)])
def test_a_gpu_without_bfloat16_claims_one_seed_run_at_a_time(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], size: int
) -> None:
    """auto precision on a T4 (7.5) is float16 with a gradient scaler, which would skip
    every seed's step when one overflows: seed-runs are claimed one at a time there; an
    A100 (8.0, bfloat16) claims the study's three seeds together."""
    from lsearch.training import devices

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    devices.autocast_precision.cache_clear()
    try:
        spec = StudySpec.model_validate(SPEC)
        on_a_gpu = SimpleNamespace(spec=spec, device=torch.device("cuda"))  # digits, 8 px
        assert SeedRunObjective(on_a_gpu, None, []).group_size() == size  # type: ignore[arg-type]
        # At 224 px auto trains seeds one at a time on CUDA (measured slower together).
        on_a_gpu.spec = spec.model_copy(
            update={"data": spec.data.model_copy(update={"image_size": 224})}
        )
        assert SeedRunObjective(on_a_gpu, None, []).group_size() == 1  # type: ignore[arg-type]
    finally:
        devices.autocast_precision.cache_clear()
