"""The offline transfer default (issue 18): the shipped digits-0-4 weights and the script that
makes them, their sha256 in the spec check, data.classes, frozen layers that stay frozen
(BatchNorm statistics included), and `digits-transfer` as every command's default study."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from typer.testing import CliRunner

import lsearch
import lsearch.training.models
from lsearch.errors import UserError
from lsearch.pretrained import bundled_names, file_sha256, recorded_figures, weights_file
from lsearch.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(lsearch.__file__).resolve().parent
CPU = torch.device("cpu")
WEIGHTS = "digits-0-4"
STUDY = "digits-transfer"
TARGET = (5, 6, 7, 8, 9)
SOURCE_HELD_OUT = 250  # 50 held-out images of each source class, 0-4
# The tolerance docs/ states for a rerun of the script: 2 pp, 5 of 250 images.
RERUN_TOLERANCE = 0.02


@pytest.fixture(autouse=True)
def _fresh_weights_cache() -> Iterator[None]:
    lsearch.training.models.read_state_dict.cache_clear()
    yield
    lsearch.training.models.read_state_dict.cache_clear()


def pretrain_script() -> Any:
    """scripts/pretrain_digits.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "pretrain_digits", ROOT / "scripts/pretrain_digits.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shipped_state() -> dict[str, torch.Tensor]:
    path = weights_file(WEIGHTS)
    assert path is not None
    return torch.load(path, map_location="cpu", weights_only=True)


def one_line(error: BaseException | str) -> str:
    text = str(error).strip()
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


# --- 1. the shipped weights ------------------------------------------------------------------


def test_the_shipped_weights_load_offline_from_any_folder_and_match_their_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing in the current folder is named digits-0-4
    assert WEIGHTS in bundled_names()
    path = weights_file(WEIGHTS)
    assert path is not None and path.is_absolute() and path.is_file()
    assert path.parent == PACKAGE / "pretrained" and path.name == f"{WEIGHTS}.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["head.weight"].shape == (5, 64), "a width-16 small CNN with a 5-class head"
    figures = recorded_figures(WEIGHTS)
    assert figures is not None and figures["source_classes"] == [0, 1, 2, 3, 4]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == figures["sha256"] == file_sha256(WEIGHTS)
    assert figures["source_held_out_images"] == SOURCE_HELD_OUT
    accuracy = pretrain_script().source_accuracy(state, figures["input_mean"], figures["input_std"])
    assert abs(accuracy - figures["source_held_out_acc"]) <= 1 / SOURCE_HELD_OUT + 1e-12
    # The check bites: wrong input statistics or a damaged backbone lose accuracy.
    damaged = dict(state) | {"block1.0.weight": torch.zeros_like(state["block1.0.weight"])}
    worse = pretrain_script().source_accuracy(damaged, figures["input_mean"], figures["input_std"])
    assert worse < figures["source_held_out_acc"] - 0.2


# --- 2. the script that makes them, rerun ----------------------------------------------------


def test_rerunning_the_pretraining_script_agrees_with_the_shipped_figures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/pretrain_digits.py"), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / f"{WEIGHTS}.pt").is_file()
    mine = json.loads((out / f"{WEIGHTS}.json").read_text())
    shipped = recorded_figures(WEIGHTS)
    assert shipped is not None
    assert mine["recipe"] == shipped["recipe"]
    assert mine["source_held_out_images"] == shipped["source_held_out_images"]
    assert abs(mine["source_held_out_acc"] - shipped["source_held_out_acc"]) <= RERUN_TOLERANCE
    for key in ("input_mean", "input_std"):
        assert len(mine[key]) == len(shipped[key]) == 1
        assert mine[key] == pytest.approx(shipped[key], abs=1e-12, rel=0), key
    written = hashlib.sha256((out / f"{WEIGHTS}.pt").read_bytes()).hexdigest()
    assert mine["sha256"] == written
    # What the rerun wrote is loadable as the shipped file is, and scores what it recorded.
    state = torch.load(out / f"{WEIGHTS}.pt", map_location="cpu", weights_only=True)
    assert state.keys() == shipped_state().keys()
    accuracy = pretrain_script().source_accuracy(state, mine["input_mean"], mine["input_std"])
    assert abs(accuracy - mine["source_held_out_acc"]) <= 1 / SOURCE_HELD_OUT + 1e-12


# --- 3. the weights' sha256 in the spec check -------------------------------------------------


def perturb(path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["block1.0.weight"] = state["block1.0.weight"] + 0.01
    torch.save(state, path)


def test_the_spec_records_the_sha256_of_the_bundled_weights() -> None:
    spec = load_spec(STUDY)
    assert spec.model.weights == WEIGHTS
    assert spec.model.weights_sha256 == file_sha256(WEIGHTS) == recorded_figures(WEIGHTS)["sha256"]
    assert load_spec("digits").model.weights_sha256 is None, "no weights file, no sha256"
    # Pinning the right value is allowed; a wrong one names the key, in one line.
    pinned = load_spec(STUDY, [f'model.weights_sha256="{spec.model.weights_sha256}"'])
    assert pinned == spec
    with pytest.raises(UserError, match=r"model\.weights_sha256") as info:
        load_spec(STUDY, ['model.weights_sha256="' + "0" * 64 + '"'])
    one_line(info.value)


def test_a_changed_weights_file_cannot_continue_its_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "weights.pt"
    shutil.copyfile(weights_file(WEIGHTS), copy)
    overrides = ["space.epochs=2", f'model.weights="{copy}"']
    url = f"sqlite:///{tmp_path / 'lsearch.db'}"
    study = lsearch.run(STUDY, overrides, storage=url, trials=1, device="cpu")
    assert len(study.trials) == 1
    stored = study.user_attrs["lsearch_spec"]
    assert stored["model"]["weights_sha256"] == file_sha256(WEIGHTS)
    # The same file continues the study.
    assert len(lsearch.run(STUDY, overrides, storage=url, trials=2, device="cpu").trials) == 2
    perturb(copy)
    changed = load_spec(STUDY, overrides)
    assert changed.model.weights_sha256 == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert changed.model.weights_sha256 != stored["model"]["weights_sha256"]
    assert not changed.same_trials_as(stored)
    with pytest.raises(UserError, match="different study file") as info:
        lsearch.run(STUDY, overrides, storage=url, trials=3, device="cpu")
    one_line(info.value)
    assert len(optuna.load_study(study_name=STUDY, storage=url).trials) == 2


def test_a_study_stored_without_weights_sha256_still_continues(tmp_path: Path) -> None:
    from lsearch.search.study import open_study

    spec = load_spec(STUDY)
    legacy = spec.to_dict()
    del legacy["model"]["weights_sha256"]
    assert spec.same_trials_as(legacy)
    assert spec.same_trials_as(legacy, comparison=True)
    # ... but not one whose other keys differ, nor one stored with another file's sha256.
    assert not spec.same_trials_as(legacy | {"data": legacy["data"] | {"classes": [5, 6, 7]}})
    other = spec.to_dict()
    other["model"]["weights_sha256"] = "f" * 64
    assert not spec.same_trials_as(other)
    # A storage holding such a legacy study opens it to continue.
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'legacy.db'}")
    old = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize")
    old.set_user_attr("lsearch_spec", legacy)
    assert open_study(spec, storage).study_name == STUDY


def test_a_changed_weights_file_is_read_again_in_the_same_process(tmp_path: Path) -> None:
    """The spec takes the new file's sha256, so the model built from it must hold the new
    file's tensors, not those a cache kept from before the change (a Python session that
    remakes the weights and starts a new study with them)."""
    copy = tmp_path / "weights.pt"
    shutil.copyfile(weights_file(WEIGHTS), copy)
    overrides = [f'model.weights="{copy}"']
    before = load_spec(STUDY, overrides)
    lsearch.training.models.build_model(before.model, 1, 5, seed=0)
    perturb(copy)
    after = load_spec(STUDY, overrides)
    assert after.model.weights_sha256 != before.model.weights_sha256
    built = lsearch.training.models.build_model(after.model, 1, 5, seed=0).model.state_dict()
    now = torch.load(copy, map_location="cpu", weights_only=True)
    assert torch.equal(built["block1.0.weight"], now["block1.0.weight"]), (
        "the model was built from the weights file as it was before it changed"
    )


# --- 4. data.classes -------------------------------------------------------------------------


def test_data_classes_keeps_those_classes_renumbered_in_the_given_order() -> None:
    from lsearch.training.data import load_pool, load_test_set

    spec = load_spec(STUDY)
    assert spec.data.classes == TARGET
    order = (9, 5, 7)
    data = spec.data.model_copy(update={"classes": order})
    full_data = spec.data.model_copy(update={"classes": None})
    pool, full = load_pool(data, CPU, WEIGHTS), load_pool(full_data, CPU, WEIGHTS)
    assert pool.num_classes == len(order) and full.num_classes == 10
    assert sorted(pool.labels.unique().tolist()) == [0, 1, 2]
    test, full_test = load_test_set(data, CPU), load_test_set(full_data, CPU)
    assert sorted(test.labels.unique().tolist()) == [0, 1, 2]
    assert test.labels.numel() == 3 * spec.data.test_per_class
    for new, old in enumerate(order):
        # Class `old` becomes label `new`, with exactly the images it has without classes.
        assert torch.equal(pool.images[pool.labels == new], full.images[full.labels == old])
        assert torch.equal(
            test.images[test.labels == new], full_test.images[full_test.labels == old]
        )
    # The study's own subset: K = 5, labels 0..4, every target class in the pool.
    target = load_pool(spec.data, CPU, WEIGHTS)
    assert target.num_classes == 5 and target.labels.unique().tolist() == [0, 1, 2, 3, 4]
    counts = torch.bincount(target.labels).tolist()
    per_class = spec.data.train_per_class + spec.data.val_per_class
    assert all(count >= per_class for count in counts), counts


@pytest.mark.parametrize("value", ["[5]", "[5, 5, 6]", "[5, 10]", "[-1, 5]", "[]"])
def test_invalid_data_classes_are_one_line_user_errors(value: str) -> None:
    with pytest.raises(UserError, match=r"data\.classes") as info:
        load_spec(STUDY, [f"data.classes={value}"])
    one_line(info.value)


def test_pretrained_statistics_normalise_only_when_bundled_weights_are_named(
    tmp_path: Path,
) -> None:
    from lsearch.training.data import load_pool

    spec = load_spec(STUDY)
    figures = recorded_figures(WEIGHTS)
    bundled = load_pool(spec.data, CPU, WEIGHTS)
    assert bundled.mean == tuple(figures["input_mean"])
    assert bundled.std == tuple(figures["input_std"])
    scaled = bundled.images.double().numpy() / 255.0
    own = [float(scaled.mean()), float(scaled.std())]
    assert own[0] != pytest.approx(bundled.mean[0], abs=1e-3), "the target's statistics differ"
    plain = load_pool(spec.data, CPU, "none")
    assert [*plain.mean, *plain.std] == pytest.approx(own, abs=1e-12, rel=0)
    copy = tmp_path / "weights.pt"
    shutil.copyfile(weights_file(WEIGHTS), copy)
    at_a_path = load_pool(spec.data, CPU, str(copy))
    assert [*at_a_path.mean, *at_a_path.std] == pytest.approx(own, abs=1e-12, rel=0)
    assert torch.equal(plain.images, bundled.images) and torch.equal(plain.labels, bundled.labels)


# --- 5. frozen means frozen ------------------------------------------------------------------


def trained_run(trainable_layers: int, seed: int = 0, epochs: int = 2) -> tuple[Any, dict]:
    """A seed-run of the transfer study built as a trial builds it, trained a few epochs;
    the run and its model's state dict before training."""
    from lsearch.search.objective import SearchObjective, TrialConfig
    from lsearch.training.data import load_pool

    spec = load_spec(STUDY, [f"space.epochs={epochs}"])
    objective = SearchObjective(spec, load_pool(spec.data, CPU, spec.model.weights), CPU)
    run = objective.start(seed, TrialConfig(0.1, epochs, 1e-2, trainable_layers))
    before = {k: v.detach().clone() for k, v in run.net.model.state_dict().items()}
    for _ in range(epochs):
        run.train_epoch()
    run.evaluate(0.0)
    return run, before


GROUPS = ["head.", "block3.", "block2.", "block1."]  # from the head, as models.py counts


@pytest.mark.parametrize("trainable_layers", [1, 2])
def test_frozen_groups_and_their_batchnorm_statistics_stay_the_pretrained_ones(
    trainable_layers: int,
) -> None:
    pretrained = shipped_state()
    run, before = trained_run(trainable_layers)
    after = run.net.model.state_dict()
    assert after.keys() == pretrained.keys()
    frozen = tuple(GROUPS[trainable_layers:])
    trainable = tuple(GROUPS[:trainable_layers])
    frozen_keys = [k for k in after if k.startswith(frozen)]
    assert any(k.endswith("running_mean") for k in frozen_keys)
    assert any(k.endswith("num_batches_tracked") for k in frozen_keys)
    for key in frozen_keys:
        assert after[key].dtype == pretrained[key].dtype, key
        assert torch.equal(after[key], pretrained[key]), f"frozen {key} changed"
    for key in (k for k in after if k.startswith(trainable)):
        assert not torch.equal(after[key], before[key]), f"trainable {key} did not change"
    if trainable_layers == 2:  # block3's BatchNorm trains: its statistics moved
        assert (
            after["block3.0.1.num_batches_tracked"] > pretrained["block3.0.1.num_batches_tracked"]
        )
    # The trained model really predicts 5 classes from the frozen pretrained features.
    assert run.predict().shape[1] == 5


def test_the_head_is_fresh_per_seed_on_the_pretrained_backbone() -> None:
    from lsearch.search.objective import SearchObjective, TrialConfig
    from lsearch.training.data import load_pool
    from lsearch.training.models import build_model

    pretrained = shipped_state()
    spec = load_spec(STUDY)
    objective = SearchObjective(spec, load_pool(spec.data, CPU, spec.model.weights), CPU)
    heads = []
    for seed in (0, 1):
        run = objective.start(seed, TrialConfig(0.0, 2, 3e-3, 1))
        state = run.net.model.state_dict()
        for key, value in pretrained.items():
            if not key.startswith("head."):
                assert torch.equal(state[key], value), key
        assert not torch.equal(state["head.weight"], pretrained["head.weight"])
        # The head is the seed's fresh initialisation, the same as without pretrained weights.
        fresh = build_model(spec.model.model_copy(update={"weights": "none"}), 1, 5, seed)
        assert torch.equal(state["head.weight"], fresh.model.state_dict()["head.weight"])
        assert torch.equal(state["head.bias"], fresh.model.state_dict()["head.bias"])
        heads.append(state["head.weight"].clone())
    assert not torch.equal(heads[0], heads[1])


# --- 6. the default study --------------------------------------------------------------------


def test_the_default_study_is_the_transfer_study_and_digits_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lsearch.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LSEARCH_STORAGE", raising=False)
    assert lsearch.api.DEFAULT_STUDY == STUDY
    runner = CliRunner()
    first = runner.invoke(
        app, ["run", "--trials", "2", "--set", "space.epochs=2", "--device", "cpu"]
    )
    assert first.exit_code == 0, first.output
    url = f"sqlite:///{tmp_path / 'lsearch.db'}"
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == [STUDY]
    transfer = optuna.load_study(study_name=STUDY, storage=url)
    assert transfer.user_attrs["lsearch_spec"]["data"]["classes"] == list(TARGET)
    assert transfer.user_attrs["lsearch_spec"]["model"]["weights"] == WEIGHTS
    # The from-scratch study still runs, beside it in the same storage.
    second = runner.invoke(app, ["run", "--study", "digits", "--trials", "2", "--device", "cpu",
                                 "--set", "space.epochs=2", "--set", "data.train_per_class=20",
                                 "--set", "data.val_per_class=20"])  # fmt: skip
    assert second.exit_code == 0, second.output
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert names == ["digits", STUDY]
    assert len(optuna.load_study(study_name="digits", storage=url).trials) == 2
    # Two search studies: `best` names both and asks for --study, in one line.
    best = runner.invoke(app, ["best"])
    assert best.exit_code == 2, best.output
    line = one_line(best.stderr)
    listed = re.search(r"\(([^)]*)\)", line)
    assert listed is not None and sorted(listed[1].split(", ")) == ["digits", STUDY], line
    assert "--study" in line
    assert "Traceback" not in best.output
    chosen = runner.invoke(app, ["best", "--study", STUDY, "--json"])
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["study"] == STUDY


# --- 7. end to end on the new default --------------------------------------------------------


def test_a_search_and_a_comparison_on_the_default_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'lsearch.db'}"
    study = lsearch.run(overrides={"space.epochs": 2}, storage=url, trials=2, device="cpu")
    assert study.study_name == STUDY and len(study.trials) == 2
    for trial in study.trials:
        assert all(0.0 <= acc <= 1.0 for acc in trial.user_attrs["val_acc_per_seed"])
    result = lsearch.compare(
        {"label_smoothing": [0.0, 0.1]}, overrides={"baseline.epochs": 2}, seeds="0-1",
        storage=url, device="cpu",
    )  # fmt: skip
    summary = result.to_dict()
    assert summary["search_study"] == STUDY
    assert [cell["levels"] for cell in summary["cells"]] == [
        {"label_smoothing": 0.0}, {"label_smoothing": 0.1},
    ]  # fmt: skip
    assert summary["base"]["trainable_layers"] == 2, "the baseline trains the head and block3"
    for cell in summary["cells"]:
        test_acc = cell["metrics"]["test_acc"]
        assert test_acc["n"] == 2 and len(test_acc["per_seed"]) == 2
        assert all(0.0 <= acc <= 1.0 for acc in test_acc["per_seed"])
        assert 0.0 <= test_acc["mean"] <= 1.0
        # Every one of the 5 target classes' 50 test images was scored.
        assert sum(cell["reliability"]["before"]["counts"]) == 2 * 5 * 50
    # Better than chance for K = 5 (0.2): the pretrained features carry over.
    assert summary["cells"][0]["metrics"]["test_acc"]["mean"] > 0.3


# --- 8. bench's synthetic data ---------------------------------------------------------------


def test_bench_synthetic_pool_takes_k_from_data_classes() -> None:
    from lsearch.bench.workload import synthetic_pool
    from lsearch.training.models import build_model

    spec = load_spec(STUDY)
    pool = synthetic_pool(spec, CPU)
    assert pool.num_classes == 5
    assert pool.labels.unique().tolist() == [0, 1, 2, 3, 4]
    per_class = spec.data.train_per_class + spec.data.val_per_class
    assert np.bincount(pool.labels.numpy()).tolist() == [per_class] * 5
    assert tuple(pool.images.shape[1:]) == (1, 8, 8)
    net = build_model(spec.model, pool.images.shape[1], pool.num_classes, seed=0)
    assert net.model.eval()(pool.images[:4].float()).shape == (4, 5)
    assert synthetic_pool(load_spec("digits"), CPU).num_classes == 10
