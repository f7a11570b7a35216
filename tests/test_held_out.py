"""The held-out test set and the numbers a trial reports, in process on tiny digits runs:
the search never reads the test set; test metrics come from the chosen epoch's weights; a
shorter run read from a longer one is exact; a pruned trial's value is its val_acc attr."""

from __future__ import annotations

import io
import math

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from lsearch.errors import UserError
from lsearch.search import trial_training as trial_training_module
from lsearch.search.loop import run_until
from lsearch.search.objective import SearchObjective, TrialConfig
from lsearch.search.study import build_pruner, build_sampler
from lsearch.search.trial_progress import TrialProgress
from lsearch.spec import StudySpec, load_spec
from lsearch.training import data as data_module
from lsearch.training import evaluation
from lsearch.training.data import held_out_indices, load_digits_arrays, load_pool, load_test_set
from lsearch.training.models import build_model

CPU = torch.device("cpu")


def tiny_spec(**changes: dict) -> StudySpec:
    raw = {
        "name": "tiny",
        "seeds": [0, 1],
        "data": {"dataset": "digits", "train_per_class": 15, "val_per_class": 15,
                 "test_per_class": 20},
        "model": {"name": "small_cnn", "width": 8},
        "train": {"batch_size": 64, "schedule": "constant", "patience": None},
        "checkpoint": {"enabled": False},
    }  # fmt: skip
    for table, values in changes.items():
        raw[table] = {**raw.get(table, {}), **values} if isinstance(values, dict) else values
    return StudySpec.model_validate(raw)


def test_the_digits_test_set_is_fixed_stratified_and_left_out_of_the_pool() -> None:
    spec = tiny_spec()
    images, labels = load_digits_arrays()
    held = held_out_indices(labels, 20)
    assert np.array_equal(held, held_out_indices(labels, 20)), "the same images every time"
    assert np.bincount(labels[held]).tolist() == [20] * 10
    pool = load_pool(spec.data, CPU)
    test = load_test_set(spec.data, CPU)
    assert pool.images.shape[0] == len(labels) - 200 and test.images.shape[0] == 200
    # The pool is exactly the images that are not held out, in order.
    rest = np.setdiff1d(np.arange(len(labels)), held)
    assert torch.equal(pool.images, torch.from_numpy(images[rest]))
    assert torch.equal(test.images, torch.from_numpy(images[held]))


def test_the_bundled_digits_study_fits_train_val_and_test_in_the_smallest_class() -> None:
    spec = load_spec("digits")
    _, labels = load_digits_arrays()
    sizes = spec.data.train_per_class + spec.data.val_per_class + spec.data.test_per_class
    assert sizes <= np.bincount(labels).min() == 174
    assert spec.train.schedule == "cosine", "epochs must matter in the digits study"
    assert load_spec("cifar10-resnet18").train.schedule == "constant"


def test_a_study_without_a_digits_test_set_is_a_user_error() -> None:
    spec = tiny_spec(data={"test_per_class": None})
    with pytest.raises(UserError, match=r"data\.test_per_class"):
        load_test_set(spec.data, CPU)


def test_the_search_never_reads_or_evaluates_the_test_set(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the search touched the test set")

    monkeypatch.setattr(data_module, "load_test_set", forbidden)
    monkeypatch.setattr(evaluation, "held_out_metrics", forbidden)
    monkeypatch.setattr(trial_training_module, "held_out_metrics", forbidden)
    spec = tiny_spec(space={"label_smoothing": [0.0, 0.1, 0.2], "epochs": 2})
    pool = load_pool(spec.data, CPU)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(spec))
    run_until(study, SearchObjective(spec, pool, CPU), 3)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    assert not any(key.startswith("test_") for t in trials for key in t.user_attrs)


def test_a_pruned_trials_value_is_its_val_acc_attr() -> None:
    spec = tiny_spec(
        # 16 configurations for 8 trials: lsearch never trains one twice.
        space={"lr": [1e-5, 3e-2], "epochs": 4, "label_smoothing": [i / 20 for i in range(8)]},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        sampler={"type": "random", "seed": 3},
        seeds=[0],
    )
    pool = load_pool(spec.data, CPU)
    study = optuna.create_study(
        direction="maximize", sampler=build_sampler(spec), pruner=build_pruner(spec)
    )
    run_until(study, SearchObjective(spec, pool, CPU), 8)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    assert pruned, "the setting is chosen so that the tiny learning rate gets pruned"
    for trial in finished:
        assert trial.value == pytest.approx(trial.user_attrs["val_acc"], abs=1e-12)
        curve = trial.user_attrs["curve_val_acc"][0]
        assert trial.user_attrs["val_acc"] == max(curve)


def test_schedule_steps_compare_trials_of_different_lengths_at_the_same_point() -> None:
    """pruner.step = "schedule": after epoch e of E the step is ceil(e * E_max / E), so every
    trial ends at step E_max (worked by hand: 7 of 20 epochs -> 3, 6, 9, 12, 15, 18, 20)."""
    spec = tiny_spec(
        space={"lr": 3e-2, "epochs": [2, 4], "label_smoothing": [0.0, 0.1]},
        pruner={"type": "median", "step": "schedule", "n_startup_trials": 99},
        sampler={"type": "grid"},
        seeds=[0],
    )
    objective = SearchObjective(spec, load_pool(spec.data, CPU), CPU)
    config = TrialConfig(label_smoothing=0.0, epochs=2, lr=3e-2, trainable_layers=4)
    assert [objective.step(config, e) for e in (1, 2)] == [2, 4]
    wide = SearchObjective(tiny_spec(space={"epochs": {"low": 5, "high": 20}},
                               pruner={"step": "schedule"}), objective.pool, CPU)  # fmt: skip
    seven = TrialConfig(label_smoothing=0.0, epochs=7, lr=3e-2, trainable_layers=4)
    assert [wide.step(seven, e) for e in range(1, 8)] == [3, 6, 9, 12, 15, 18, 20]
    by_epoch = SearchObjective(tiny_spec(), objective.pool, CPU)
    assert [by_epoch.step(seven, e) for e in range(1, 8)] == list(range(1, 8))
    study = optuna.create_study(
        direction="maximize", sampler=build_sampler(spec), pruner=build_pruner(spec)
    )
    run_until(study, objective, 4)
    steps = {t.params["epochs"]: sorted(t.intermediate_values) for t in study.trials}
    assert steps == {2: [2, 4], 4: [1, 2, 3, 4]}
    for trial in study.trials:  # the value at each step is the epoch's, as with epoch steps
        curve = trial.user_attrs["curve_val_acc"][0]
        values = [trial.intermediate_values[s] for s in steps[trial.params["epochs"]]]
        assert values == [max(curve[: e + 1]) for e in range(len(curve))]


def test_a_val_ece_objective_reads_ece_at_the_epoch_chosen_by_accuracy() -> None:
    spec = tiny_spec(objective={"metric": "val_ece"}, space={"epochs": 4, "lr": 3e-2})
    pool = load_pool(spec.data, CPU)
    study = optuna.create_study(direction="minimize")
    run_until(study, SearchObjective(spec, pool, CPU), 1)
    (trial,) = study.trials
    attrs = trial.user_attrs
    means = [np.mean(e) for e in zip(*attrs["curve_val_acc"], strict=True)]
    chosen = int(np.argmax(means)) + 1
    assert attrs["chosen_by"] == "val_acc" and attrs["chosen_epoch"] == chosen
    eces = [np.mean(e) for e in zip(*attrs["curve_val_ece"], strict=True)]
    assert trial.value == pytest.approx(eces[chosen - 1])


def train_held_out(spec: StudySpec, config: TrialConfig, test_at: tuple[int, ...] = ()) -> dict:
    pool = load_pool(spec.data, CPU)
    test = load_test_set(spec.data, CPU)
    trial = optuna.create_study(direction="maximize").ask()
    return SearchObjective(spec, pool, CPU).train(
        trial, config, [0, 1], prunes=False, test_set=test, test_at=test_at
    ) | {"held_out": trial.study.trials[0].user_attrs["held_out"]}


def test_test_metrics_come_from_the_chosen_epoch_and_shorter_runs_read_off_exactly() -> None:
    spec = tiny_spec()
    long = train_held_out(spec, TrialConfig(0.1, 6, 5e-2, 4), test_at=(3,))
    assert set(long["held_out"]) == {"3", "6"}
    # Under a constant learning rate a 3-epoch run is the first 3 epochs of the 6-epoch one.
    short = train_held_out(spec, TrialConfig(0.1, 3, 5e-2, 4))
    for key, value in short["held_out"]["3"].items():
        assert long["held_out"]["3"][key] == value, key
    # The test metrics are those of the chosen epoch's model: a run stopped right there
    # (select_epoch = final) gives the same numbers, seed by seed.
    chosen = long["chosen_epoch"]
    assert chosen < 6, "this configuration peaks before its last epoch, so the check bites"
    final = tiny_spec(objective={"select_epoch": "final"})
    stopped = train_held_out(final, TrialConfig(0.1, chosen, 5e-2, 4))
    for name in evaluation.TEST_METRICS:
        assert stopped[f"{name}_per_seed"] == long[f"{name}_per_seed"], name
    assert long["test_acc"] == pytest.approx(np.mean(long["test_acc_per_seed"]))
    reliability = long["test_reliability_per_seed"][0]
    assert sum(reliability["counts"]) == 200 and len(reliability["counts"]) == 15
    assert all(v is None or 0 <= v <= 1 for v in reliability["accuracy"])


def test_progress_with_weights_and_held_out_results_survives_a_checkpoint() -> None:
    weights = [{"w": torch.arange(3.0)}]
    progress = TrialProgress([[]], best_weights=weights, held_out={3: {"test_acc": 0.5}})
    buffer = io.BytesIO()
    torch.save(progress.state_dict(), buffer)
    buffer.seek(0)
    back = TrialProgress.from_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(back.best_weights[0]["w"], weights[0]["w"])
    assert back.held_out == {3: {"test_acc": 0.5}}


def test_the_head_computes_float32_logits_under_bfloat16_autocast() -> None:
    spec = tiny_spec()
    net = build_model(spec.model, 1, 10, seed=0)
    net.head_in_float32()
    net.model.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net.model(x)
        features = net.model.block3(net.model.block2(net.model.block1(x))).flatten(1)
    assert logits.dtype == torch.float32
    expected = torch.nn.functional.linear(
        features.float(), net.model.head.weight, net.model.head.bias
    )
    assert torch.equal(logits, expected)


@pytest.mark.parametrize(
    "override",
    ["space.lr=nan", "space.lr=inf", "space.epochs=inf", "space.label_smoothing=nan",
     "baseline.lr=inf", "train.weight_decay=nan"],
)  # fmt: skip
def test_non_finite_values_are_user_errors(override: str) -> None:
    with pytest.raises(UserError, match=r"finite|number"):
        load_spec("digits", [override])
    assert math.isfinite(load_spec("digits").baseline.lr)
