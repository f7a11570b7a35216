"""Study files: load a TOML file, apply `--set` overrides, validate into a frozen StudySpec.

A study file is the unit users share: everything a trial does is decided by the spec, the
sampled parameters and the seed. This module knows nothing of torch or Optuna.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lsearch.errors import UserError

SEARCH_PARAMS = ("label_smoothing", "epochs", "lr", "trainable_layers")


class _Frozen(BaseModel):
    # NaN and ±inf are never meaningful in a study file (`--set space.lr=nan`).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Param(_Frozen):
    """One search-space parameter: a fixed value, a list of choices, or a range.

    In a study file: `epochs = 30` (fixed), `label_smoothing = [0.0, 0.1, 0.15]` (choices),
    or a table `[space.label_smoothing]` with `low`, `high` and an optional `step`.
    """

    value: float | None = None
    choices: tuple[float, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, bool):
            raise ValueError("expected a number, a list of numbers or a table with low/high")
        if isinstance(raw, int | float):
            return {"value": raw}
        if isinstance(raw, list):
            return {"choices": raw}
        return raw

    @model_validator(mode="after")
    def _one_form(self) -> Param:
        forms = [
            self.value is not None,
            self.choices is not None,
            self.low is not None or self.high is not None,
        ]
        if sum(forms) != 1:
            raise ValueError("give exactly one of: a fixed value, choices, or low and high")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must not be empty")
        if forms[2]:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.step is not None and (self.step <= 0 or not forms[2]):
            raise ValueError("step must be positive and belongs to a low/high range")
        return self

    @property
    def fixed(self) -> bool:
        return self.value is not None

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value this parameter can take."""
        if self.value is not None:
            return self.value, self.value
        if self.choices is not None:
            return min(self.choices), max(self.choices)
        assert self.low is not None and self.high is not None
        return self.low, self.high

    def grid(self) -> list[float]:
        """Every value, for the grid sampler: choices, or a range walked by its step."""
        if self.value is not None:
            return [self.value]
        if self.choices is not None:
            return list(self.choices)
        if self.step is None:
            raise ValueError("the grid sampler needs choices or a step for every range")
        assert self.low is not None and self.high is not None
        count = round((self.high - self.low) / self.step) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


class Space(_Frozen):
    """The four parameters lsearch searches; their names are fixed (reports rely on them)."""

    label_smoothing: Param = Param(value=0.1)
    epochs: Param = Param(value=20)
    lr: Param = Param(value=1e-3)
    trainable_layers: Param = Param(value=2)

    @field_validator("label_smoothing")
    @classmethod
    def _epsilon(cls, param: Param) -> Param:
        low, high = param.bounds()
        if low < 0 or high >= 1:
            raise ValueError(
                f"must lie in [0, 1) (got {low:g} to {high:g}); ε = 1 leaves no signal"
            )
        return param

    @field_validator("lr")
    @classmethod
    def _lr(cls, param: Param) -> Param:
        low, _ = param.bounds()
        if low <= 0:
            raise ValueError(f"lr must be positive (got {low:g}); it is searched on a log scale")
        if param.step is not None:
            raise ValueError("lr is searched on a log scale, which takes no step; give choices")
        return param

    @field_validator("epochs", "trainable_layers")
    @classmethod
    def _whole(cls, param: Param) -> Param:
        values = [param.value, param.low, param.high, param.step, *(param.choices or ())]
        if any(v != int(v) or v < 1 for v in values if v is not None):
            raise ValueError("must be whole numbers of at least 1")
        return param


class Augment(_Frozen):
    crop_padding: int = Field(0, ge=0)
    flip: bool = False


class Data(_Frozen):
    dataset: Literal["digits", "cifar10"] = "digits"
    root: str = "data"
    download: bool = True
    train_per_class: int = Field(100, gt=0)
    val_per_class: int = Field(100, gt=0)
    # The held-out test set: digits carves this many images per class out before any seed
    # draws its subsets (unset: no test set); CIFAR-10 uses its official test batch, all of
    # it when unset, or this many images per class of it.
    test_per_class: int | None = Field(None, gt=0)
    image_size: int | None = Field(None, gt=0)
    split_seed: int | None = None
    augment: Augment = Augment()
    # A subset of the dataset's classes, renumbered 0..K-1 in the order given (unset: all).
    classes: tuple[int, ...] | None = None

    @field_validator("classes")
    @classmethod
    def _classes(cls, classes: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if classes is None:
            return None
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"must name at least 2 distinct classes (got {list(classes)})")
        if not all(0 <= c <= 9 for c in classes):
            raise ValueError(f"digits and cifar10 have classes 0 to 9 (got {list(classes)})")
        return classes


class Model(_Frozen):
    name: Literal["small_cnn", "resnet18"] = "small_cnn"
    weights: str = "none"  # none, imagenet, a bundled name (digits-0-4) or a state-dict file
    width: int = Field(32, gt=0)
    # The weights file's sha256, filled in by `validate` (a study file that gives it pins it).
    weights_sha256: str | None = None


class Train(_Frozen):
    batch_size: int = Field(256, gt=0)
    eval_batch_size: int = Field(1024, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    patience: int | None = Field(10, ge=1)  # epochs without a better mean val acc
    schedule: Literal["constant", "cosine"] = "constant"
    smoothing: Literal["uniform", "others"] = "uniform"
    # Bit-exact reruns and resumes on CUDA (deterministic cuDNN and cuBLAS). false: cuDNN
    # picks the fastest kernels (autotuning), and a resumed trial may differ in the last bits.
    deterministic: bool = True
    # Mixed precision on CUDA: "auto" is bfloat16 from compute capability 8.0 on, float16 with
    # a gradient scaler below; "float16", "bfloat16" or "float32" force one (the environment
    # variable LSEARCH_PRECISION overrides this key). The CPU always trains in float32.
    precision: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # A trial's seeds as one grouped model (training.together.trains_together says when);
    # it moves only the last bits, as the thread count does, so the spec check leaves it out.
    seeds_together: Literal["auto"] | bool = "auto"


class Objective(_Frozen):
    metric: Literal["val_acc", "val_ece", "val_acc+val_ece"] = "val_acc"
    select_epoch: Literal["best", "final"] = "best"

    @property
    def directions(self) -> list[str]:
        return {
            "val_acc": ["maximize"],
            "val_ece": ["minimize"],
            "val_acc+val_ece": ["maximize", "minimize"],
        }[self.metric]


class Baseline(_Frozen):
    """The configuration `lsearch compare` gives every parameter its grid does not vary."""

    label_smoothing: float = Field(0.0, ge=0, lt=1)
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    trainable_layers: int = Field(2, ge=1)


class Sampler(_Frozen):
    type: Literal["tpe", "random", "grid", "gp"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int = Field(10, ge=0)


PrunerType = Literal["median", "percentile", "successive_halving", "hyperband", "none"]


class Pruner(_Frozen):
    type: Literal[PrunerType, "patient"] = "median"
    # Where a trial's epochs fall on the pruner's step axis. "epoch": step = epoch. "schedule":
    # after epoch e of E, step = ceil(e * E_max / E), E_max the space's largest epochs, so
    # trials of different lengths are compared at the same point of their schedule (under a
    # cosine decay a short trial is further along after 3 epochs, and looks better only for
    # that). Steps (and n_warmup_steps, interval_steps) are then in units of E_max's epochs.
    step: Literal["epoch", "schedule"] = "epoch"
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: int = Field(1, ge=1)
    percentile: float = Field(25.0, gt=0, lt=100)
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)
    # For type = "patient": wait this many epochs without improvement before asking `wrapped`.
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0)
    wrapped: PrunerType = "median"


class Storage(_Frozen):
    """Crash handling: a running trial beats every `heartbeat_interval` seconds; one whose
    beat stands still for `grace_period` seconds is failed and re-queued, `max_retry` times
    at most. 0 turns heartbeats off. A worker whose database goes away waits up to
    `reconnect_timeout` seconds for it to come back before it gives up."""

    heartbeat_interval: int = Field(10, ge=0)
    grace_period: int = Field(60, ge=1)
    max_retry: int = Field(3, ge=0)
    reconnect_timeout: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _grace(self) -> Storage:
        if self.heartbeat_interval and self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period} s) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval} s), or live trials would be failed"
            )
        return self


class Checkpoint(_Frozen):
    """Checkpoints through an Optuna artifact store (a folder, s3://, gs://), written in the
    background after an epoch, at most every `every_s` seconds (0: after every epoch whose
    predecessor's write has finished)."""

    enabled: bool = True
    location: str = "artifacts"
    keep_final: bool = False
    every_s: float = Field(0.0, ge=0)


class StudySpec(_Frozen):
    name: str = Field(min_length=1)
    description: str = ""
    seeds: tuple[int, ...] = (0, 1, 2)
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()
    space: Space = Space()
    baseline: Baseline = Baseline()
    objective: Objective = Objective()
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    storage: Storage = Storage()
    checkpoint: Checkpoint = Checkpoint()

    @model_validator(mode="after")
    def _seeds(self) -> StudySpec:
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct (got {list(self.seeds)})")
        return self

    @property
    def searched(self) -> list[str]:
        return [name for name in SEARCH_PARAMS if not getattr(self.space, name).fixed]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def decisive(self, comparison: bool = False) -> dict[str, Any]:
        """Everything that decides a search trial's numbers: not how crashes, checkpoints or
        the description are handled (workers may differ in those), nor the baseline, which
        only `lsearch compare` reads. A comparison trial's numbers do not depend on the
        search either (space, sampler, pruner, objective metric, search seeds): its params
        hold its configuration and seed."""
        exclude: dict[str, Any] = {
            "description": True, "storage": True, "checkpoint": True, "baseline": True,
            "train": {"seeds_together"},
        }  # fmt: skip
        if comparison:
            exclude |= {"space": True, "sampler": True, "pruner": True, "seeds": True}
            exclude["objective"] = {"metric"}
        return self.model_dump(mode="json", exclude=exclude)

    def fingerprint(self) -> str:
        """A short hash of `decisive()`."""
        text = json.dumps(self.decisive(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def same_trials_as(self, stored: dict[str, Any], comparison: bool = False) -> bool:
        """Whether a spec stored by this or an earlier lsearch decides trials as this one does.

        The stored dict is read with today's schema, so a key added since (with a default
        that keeps the old behaviour) takes its default on both sides and old studies stay
        readable; a key that no longer exists makes them differ."""
        try:
            then = StudySpec.model_validate(stored)
        except ValidationError:
            return False
        if "weights_sha256" not in stored.get("model", {}):  # stored before lsearch hashed it
            legacy = then.model.model_copy(update={"weights_sha256": self.model.weights_sha256})
            then = then.model_copy(update={"model": legacy})
        return then.decisive(comparison) == self.decisive(comparison)


def bundled_study_dirs() -> list[Path]:
    """Where bundled study files live: inside an installed wheel, or in a checkout."""
    package = Path(__file__).resolve().parent
    return [package / "studies", package.parent / "studies"]


def bundled_study_names() -> list[str]:
    names = {p.stem for d in bundled_study_dirs() if d.is_dir() for p in d.glob("*.toml")}
    return sorted(names)


def find_study_file(name_or_path: str) -> Path:
    """A path to a study file, or the name of a bundled one (`digits`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix != ".toml" and "/" not in name_or_path:
        for directory in bundled_study_dirs():
            candidate = directory / f"{name_or_path}.toml"
            if candidate.is_file():
                return candidate
    names = ", ".join(bundled_study_names()) or "none found"
    raise UserError(
        f"study file '{name_or_path}' not found: give the path to a .toml study file "
        f"or the name of a bundled study ({names})"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.batch_size=128` -> (["train", "batch_size"], 128); values are TOML values,
    and anything that is not valid TOML is taken as a string (`data.root=/data/cifar`)."""
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise UserError(f"--set '{text}' is not of the form key=value (e.g. train.batch_size=128)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the raw study table with each `key=value` override set."""
    result = json.loads(json.dumps(raw))
    for text in overrides:
        keys, value = parse_override(text)
        table = result
        for depth, key in enumerate(keys[:-1]):
            inner = table.setdefault(key, {})
            if not isinstance(inner, dict):
                where = ".".join(keys[: depth + 1])
                raise UserError(
                    f"--set {text}: {where} is a plain value, not a table; "
                    f"set it whole instead (e.g. --set {where}=...)"
                )
            table = inner
        table[keys[-1]] = value
    return result


def _format_error(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    if error["type"] == "extra_forbidden":
        return f"unknown key '{loc}'; check its spelling against docs/study-files.md"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message


def validate(raw: dict[str, Any], source: str) -> StudySpec:
    """The spec, with the sha256 of the weights file it names (see Model.weights_sha256)."""
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(
            f"{source}: {_format_error(first)} (fix the study file or its --set override)"
        ) from None
    from lsearch.pretrained import file_sha256

    digest = file_sha256(spec.model.weights)
    pinned = spec.model.weights_sha256
    if pinned is not None and digest is not None and pinned != digest:
        raise UserError(
            f"{source}: model.weights_sha256 is {pinned[:12]}..., but {spec.model.weights} has "
            f"sha256 {digest[:12]}...; give the weights it was made with, or drop the key"
        )
    model = spec.model.model_copy(update={"weights_sha256": digest or pinned})
    return spec.model_copy(update={"model": model})


def load_spec(name_or_path: str, overrides: Sequence[str] = ()) -> StudySpec:
    """Read, override and validate a study file; every failure is a one-line UserError."""
    path = find_study_file(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); fix the file's syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    return validate(apply_overrides(raw, overrides), str(path))
