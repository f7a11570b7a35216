"""Samplers and pruners from study files, the grid sampler end to end, the CIFAR-10 /
ResNet-18 study end to end on tiny real-format files, and kept checkpoints."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torchvision
from optuna.artifacts import get_all_artifact_meta

from lsearch.errors import UserError
from lsearch.search.loop import run_until
from lsearch.search.study import build_pruner, build_sampler
from lsearch.spec import StudySpec
from tests.conftest import TINY, run_lsearch


def spec_with(**tables: dict) -> StudySpec:
    return StudySpec.model_validate({"name": "x", **tables})


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("gp", optuna.samplers.GPSampler),
    ],
)
def test_samplers_from_the_study_file(kind: str, cls: type) -> None:
    assert isinstance(build_sampler(spec_with(sampler={"type": kind})), cls)


def test_the_grid_sampler_walks_choices_and_stepped_ranges() -> None:
    spec = spec_with(
        sampler={"type": "grid"},
        space={"label_smoothing": [0.0, 0.1], "epochs": {"low": 2, "high": 4, "step": 2}},
    )
    sampler = build_sampler(spec)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    study = optuna.create_study(sampler=sampler)
    seen = set()

    def objective(trial: optuna.Trial) -> float:
        epsilon = trial.suggest_categorical("label_smoothing", [0.0, 0.1])
        seen.add((epsilon, trial.suggest_int("epochs", 2, 4, step=2)))
        return 0.0

    run_until(study, objective, 10)  # lsearch's loop stops once the grid is used up
    assert len(study.trials) == 4
    assert seen == {(0.0, 2), (0.0, 4), (0.1, 2), (0.1, 4)}
    with pytest.raises(UserError, match="grid sampler needs choices or a step"):
        build_sampler(
            spec_with(sampler={"type": "grid"}, space={"label_smoothing": {"low": 0, "high": 0.2}})
        )


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ({"type": "median"}, optuna.pruners.MedianPruner),
        ({"type": "percentile", "percentile": 10.0}, optuna.pruners.PercentilePruner),
        ({"type": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"type": "hyperband"}, optuna.pruners.HyperbandPruner),
        ({"type": "patient", "wrapped": "median", "patience": 2}, optuna.pruners.PatientPruner),
        ({"type": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_pruners_from_the_study_file(pruner: dict, cls: type) -> None:
    assert isinstance(build_pruner(spec_with(pruner=pruner)), cls)


def test_a_grid_study_runs_every_point_once_and_stops(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", "--trials", "10", *TINY,
        "--set", 'sampler.type="grid"',
        "--set", "space.label_smoothing=[0.0, 0.2]",
        "--set", "space.lr=[0.001, 0.01]",
        "--set", "space.trainable_layers=4",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'lsearch.db'}")
    points = sorted((t.params["label_smoothing"], t.params["lr"]) for t in study.trials)
    assert points == [(0.0, 0.001), (0.0, 0.01), (0.2, 0.001), (0.2, 0.01)]
    assert "4 of 10 trials finished" in result.stderr


def write_tiny_cifar10(root: Path, per_class: int) -> None:
    """Five training batches in the real `cifar-10-batches-py` pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for number in range(1, 6):
        labels = [c for c in range(10) for _ in range(per_class)]
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        for i, label in enumerate(labels):  # a class-dependent tint makes it learnable
            data[i, label * 300 : label * 300 + 300] = 255
        batch = {"batch_label": f"training batch {number} of 5", "labels": labels, "data": data,
                 "filenames": [f"img_{number}_{i}.png" for i in range(len(labels))]}  # fmt: skip
        with open(folder / f"data_batch_{number}", "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


def test_the_cifar10_resnet18_study_runs_on_real_format_files(tmp_path: Path) -> None:
    write_tiny_cifar10(tmp_path / "data", per_class=2)
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), weights)
    result = run_lsearch(
        "run", "--study", "cifar10-resnet18", "--trials", "2", "--device", "cpu",
        "--set", "data.download=false",
        "--set", "data.train_per_class=4", "--set", "data.val_per_class=3",
        "--set", "data.image_size=32", "--set", "train.batch_size=16",
        "--set", "space.epochs=2", "--set", "seeds=[0, 1]",
        "--set", f'model.weights="{weights}"',
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(
        study_name="cifar10-resnet18", storage=f"sqlite:///{tmp_path / 'lsearch.db'}"
    )
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert 1 <= trial.params["trainable_layers"] <= 6
        assert len(trial.user_attrs["val_acc_per_seed"]) == 2
        # 3 validation images per class: accuracy is a multiple of 1/30.
        for acc in trial.user_attrs["val_acc_per_seed"]:
            assert round(acc * 30) == pytest.approx(acc * 30)


def test_keep_final_checkpoint_is_listed_on_the_trial(tmp_path: Path) -> None:
    result = run_lsearch(
        "run", "--trials", "1", *TINY, "--set", "checkpoint.keep_final=true",
        "--artifacts", str(tmp_path / "store"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'lsearch.db'}")
    (trial,) = optuna.load_study(study_name="digits", storage=storage).trials
    (meta,) = get_all_artifact_meta(trial, storage=storage)
    assert meta.filename == f"trial-0-epoch-{trial.user_attrs['epochs_run']}.pt"
    kept = trial.user_attrs["final_checkpoint"]
    assert kept["artifact_id"] == meta.artifact_id
    assert trial.user_attrs["checkpoint"] is None
    state = torch.load(tmp_path / "store" / meta.artifact_id, weights_only=True)
    assert len(state["seeds"]) == 3
    assert len(state["progress"]["history"][0]) == trial.user_attrs["epochs_run"]
    assert [p.name for p in (tmp_path / "store").iterdir()] == [meta.artifact_id]
