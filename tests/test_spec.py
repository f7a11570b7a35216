"""Study files: loading, --set overrides, validation errors, bundled lookup."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest

from lsearch.errors import UserError
from lsearch.spec import (
    Param,
    StudySpec,
    apply_overrides,
    bundled_study_names,
    find_study_file,
    load_spec,
    parse_override,
)
from tests.conftest import run_lsearch

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_bundled_studies_load_and_hold_the_users_experiment() -> None:
    assert {"digits", "cifar10-resnet18"} <= set(bundled_study_names())
    digits = load_spec("digits")
    assert digits.data.dataset == "digits" and digits.model.name == "small_cnn"
    assert digits.seeds == (0, 1, 2)
    cifar = load_spec("cifar10-resnet18")
    assert cifar.data.dataset == "cifar10"
    assert (cifar.data.train_per_class, cifar.data.val_per_class) == (100, 100)
    assert cifar.data.image_size == 224 and cifar.train.batch_size == 256
    assert cifar.train.patience == 10 and cifar.model.weights == "imagenet"
    assert cifar.data.augment.flip and cifar.data.augment.crop_padding == 4
    assert set(cifar.searched) == {"label_smoothing", "epochs", "lr", "trainable_layers"}


def test_find_study_file_prefers_a_path_and_names_bundled_ones(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\n')
    assert find_study_file(str(path)) == path
    assert find_study_file("digits").name == "digits.toml"
    with pytest.raises(UserError, match=r"not found.*digits"):
        find_study_file("no-such-study")
    with pytest.raises(UserError, match="not found"):
        find_study_file(str(tmp_path / "missing.toml"))


def test_the_issue_examples_of_set(tmp_path: Path) -> None:
    spec = load_spec(
        "digits",
        [
            "train.batch_size=128",
            "data.image_size=64",
            "space.label_smoothing.high=0.2",
            "space.epochs=30",
            "train.patience=100",
        ],
    )
    assert spec.train.batch_size == 128
    assert spec.data.image_size == 64
    assert spec.space.label_smoothing.bounds() == (0.0, 0.2)
    assert spec.space.epochs.fixed and spec.space.epochs.value == 30
    assert "epochs" not in spec.searched
    assert spec.train.patience == 100


def test_set_values_are_toml_with_strings_as_fallback() -> None:
    assert parse_override("a.b=128") == (["a", "b"], 128)
    assert parse_override("a=[0.0, 0.1]") == (["a"], [0.0, 0.1])
    assert parse_override('a="x"') == (["a"], "x")
    assert parse_override("data.root=/data/cifar") == (["data", "root"], "/data/cifar")
    assert parse_override("flag=true") == (["flag"], True)
    with pytest.raises(UserError, match="key=value"):
        parse_override("novalue")
    with pytest.raises(UserError, match="key=value"):
        parse_override("a..b=1")


def test_set_into_a_plain_value_is_refused_with_the_fix() -> None:
    with pytest.raises(UserError, match=r"space.epochs is a plain value"):
        apply_overrides({"space": {"epochs": 20}}, ["space.epochs.high=30"])


def test_overrides_do_not_touch_the_original() -> None:
    raw = {"train": {"batch_size": 256}}
    assert apply_overrides(raw, ["train.batch_size=1"])["train"]["batch_size"] == 1
    assert raw["train"]["batch_size"] == 256


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = \n", "not valid TOML"),
        ('name = "x"\nbogus = 1\n', "unknown key 'bogus'"),
        ('name = "x"\n[train]\nbatchsize = 1\n', "unknown key 'train.batchsize'"),
        ('name = "x"\n[space.label_smoothing]\nlow = 0.0\nhigh = 1.0\n', r"\[0, 1\)"),
        ('name = "x"\n[space]\nlabel_smoothing = -0.1\n', r"\[0, 1\)"),
        ('name = "x"\n[space]\nlr = -0.001\n', "lr must be positive"),
        ('name = "x"\n[space]\nlr = { low = 0.0, high = 0.1 }\n', "lr must be positive"),
        ('name = "x"\n[space]\nepochs = { low = 0, high = 3 }\n', "whole numbers"),
        ('name = "x"\n[space]\nepochs = 2.5\n', "whole numbers"),
        ('name = "x"\n[space]\nepochs = { low = 5, high = 2 }\n', "above high"),
        ('name = "x"\n[space]\nepochs = { low = 5 }\n', "both low and high"),
        ('name = "x"\n[data]\ndataset = "mnist"\n', "data.dataset"),
        ('name = "x"\n[model]\nname = "vgg"\n', "model.name"),
        ('name = "x"\nseeds = []\n', "at least one seed"),
        ('name = "x"\nseeds = [1, 1]\n', "distinct"),
        ('name = "x"\n[objective]\nmetric = "loss"\n', "objective.metric"),
        ('name = "x"\n[train]\nbatch_size = 0\n', "train.batch_size"),
        ("seeds = [0]\n", "name"),
    ],
)
def test_bad_study_files_give_one_line_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as caught:
        load_spec(str(path))
    text_of_error = str(caught.value)
    assert str(path) in text_of_error
    assert "\n" not in text_of_error


def test_set_errors_mention_the_override() -> None:
    with pytest.raises(UserError, match=r"space.label_smoothing.*\[0, 1\).*--set"):
        load_spec("digits", ["space.label_smoothing.high=1.5"])


def test_param_forms_and_grid() -> None:
    assert Param.model_validate(0.1).fixed
    assert Param.model_validate([0.0, 0.1]).choices == (0.0, 0.1)
    ranged = Param.model_validate({"low": 0.0, "high": 0.3, "step": 0.1})
    assert ranged.grid() == [0.0, 0.1, 0.2, 0.3]
    assert Param.model_validate({"choices": [1, 2]}).grid() == [1, 2]
    with pytest.raises(ValueError, match="step"):
        Param.model_validate({"low": 0.0, "high": 0.3}).grid()
    with pytest.raises(ValueError):
        Param.model_validate({"value": 1, "low": 0, "high": 2})


def test_fingerprint_follows_the_content() -> None:
    a = StudySpec(name="a")
    assert a.fingerprint() == StudySpec(name="a").fingerprint()
    assert a.fingerprint() != StudySpec(name="a", seeds=(0, 1)).fingerprint()


def test_the_spec_check_reads_stored_specs_with_todays_defaults() -> None:
    spec = load_spec("digits")
    stored = spec.to_dict()
    # A spec stored before `data.test_per_class` and `[baseline]` existed lacks both keys.
    older = {k: v for k, v in stored.items() if k != "baseline"}
    older["data"] = {k: v for k, v in stored["data"].items() if k != "test_per_class"}
    assert not spec.same_trials_as(older), "the digits study now holds out a test set"
    plain = spec.model_copy(update={"data": spec.data.model_copy(update={"test_per_class": None})})
    assert plain.same_trials_as(older)
    # What changes a trial's numbers is refused; what does not is not.
    assert not spec.same_trials_as(load_spec("digits", ["train.batch_size=64"]).to_dict())
    assert spec.same_trials_as(load_spec("digits", ["baseline.lr=0.1"]).to_dict())
    assert spec.same_trials_as(load_spec("digits", ["storage.grace_period=300"]).to_dict())
    assert not spec.same_trials_as({**stored, "removed_key": 1})
    # A comparison does not depend on the search's space, sampler or seeds.
    other = load_spec("digits", ["space.epochs=9", "seeds=[5, 6]", "sampler.seed=3"])
    assert spec.same_trials_as(other.to_dict(), comparison=True)
    assert not spec.same_trials_as(other.to_dict())


def test_a_study_written_by_lsearch_0_1_0_still_opens_and_continues(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(REPO / "tests" / "data" / "study-0.1.0.db", db)
    storage = ["--storage", f"sqlite:///{db}"]
    status = run_lsearch("status", *storage, cwd=tmp_path)
    assert status.returncode == 0 and "made-by-0.1.0" in status.stdout, status.stderr
    assert run_lsearch("best", *storage, cwd=tmp_path).returncode == 0
    study_file = str(REPO / "tests" / "data" / "study-0.1.0.toml")
    result = run_lsearch("run", "--study", study_file, "--trials", "3", *storage, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 of 3" not in result.stderr and "2 of 3 trials finished" in result.stderr
    study = optuna.load_study(study_name="made-by-0.1.0", storage=f"sqlite:///{db}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3
    # It has no held-out test set (digits had none then): evaluate says how to get one.
    evaluate = run_lsearch("evaluate", *storage, cwd=tmp_path)
    assert evaluate.returncode == 2 and "data.test_per_class" in evaluate.stderr


def test_a_built_wheel_carries_the_bundled_studies(tmp_path: Path) -> None:
    """`--study digits` must work after a non-editable `pip install .`: the wheel puts the
    top-level studies/ inside the package, where find_study_file looks first; the default
    study's pretrained weights and their figures ship inside the package too."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.db", "tests"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheels), str(source)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("lsearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lsearch/studies/digits.toml" in names
    assert "lsearch/studies/cifar10-resnet18.toml" in names
    assert "lsearch/studies/digits-transfer.toml" in names
    assert {"lsearch/pretrained/digits-0-4.pt", "lsearch/pretrained/digits-0-4.json"} <= set(names)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lsearch.spec import find_study_file, load_spec; print(find_study_file('digits'));"
            "from lsearch.pretrained import weights_file;"
            "print(load_spec('digits-transfer').model.weights_sha256);"
            "print(weights_file('digits-0-4'))",
        ],
        env={"PYTHONPATH": str(site), "PATH": ""},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(found[0]) == site / "lsearch" / "studies" / "digits.toml"
    shipped = json.loads((REPO / "lsearch/pretrained/digits-0-4.json").read_text())
    assert found[1] == shipped["sha256"]
    assert Path(found[2]) == site / "lsearch" / "pretrained" / "digits-0-4.pt"
