"""`lsearch compare` and `lsearch evaluate`: factorial grids trained on shared seeds, with
held-out test metrics, kept as trials of a comparison study.

A comparison is a full factorial of `--grid` levels; the parameters it does not vary take
the study's `[baseline]` (or, with `--from-best`, the best search trial's values). Every
cell trains on the same seeds, each seed-run to its planned epochs (patience as in the
study, never pruned). One seed-run is one trial of the comparison study, whose params are
the configuration and the seed: results are keyed by them, so a rerun trains only what is
missing, more seeds train only the new ones, and several workers (or machines) share the
grid with the same crash recovery as a search.

Under a constant learning rate a run of E epochs is exactly the first E epochs of a longer
run with the same ε, lr, layers and seed (early stopping included), so cells that differ
only in epochs train once, at the most epochs, and the shorter cells are read from that run
(test metrics included: they are computed after E epochs, on the model chosen by then).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from lsearch import interrupts
from lsearch.analysis.verdict import describe
from lsearch.errors import UserError
from lsearch.search.loop import Liveness, run_one
from lsearch.search.objective import SearchObjective, TrialConfig
from lsearch.search.study import produced_by
from lsearch.spec import SEARCH_PARAMS, StudySpec
from lsearch.store.catalog import (
    BASE_ATTR,
    FINGERPRINT_ATTR,
    FINISHED,
    GRID_ATTR,
    KIND_ATTR,
    METRICS_ATTR,
    OUT_OF_MEMORY_ATTR,
    PRODUCED_BY_ATTR,
    SEARCH_STUDY_ATTR,
    SEEDS_ATTR,
    SPEC_ATTR,
    TEST_COUNT_ATTR,
)
from lsearch.training.data import ImagePool, TestSet
from lsearch.training.devices import CoreShare
from lsearch.training.evaluation import pooled_reliability
from lsearch.training.seed_run import NonFiniteLossError

# The metrics a comparison reports by default, and every one it can report.
DEFAULT_METRICS = ("val_acc", "val_ece", "test_acc", "test_ece", "test_ece_ts", "test_nll")
ALL_METRICS = (
    *DEFAULT_METRICS, "val_nll", "test_nll_ts", "test_brier", "test_ace",
)  # fmt: skip
FEWEST_SEEDS = 2
ADVISED_SEEDS = 4

Key = tuple[float, int, float, int, int]  # label_smoothing, epochs, lr, layers, seed


# ----------------------------------------------------------------------------- parsing


def parse_seeds(text: str) -> list[int]:
    """`0-4` -> [0, 1, 2, 3, 4]; `0,3,7`; `0-4,9`. Order kept, duplicates refused."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            if dash:
                first, last = int(low), int(high)
                if last < first:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UserError(
                f"--seeds {text!r}: give seeds as a range or a list, e.g. 0-4 or 0,3,7"
            ) from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: seeds must be distinct whole numbers ≥ 0")
    return seeds


def _level(name: str, raw: str, layer_groups: int) -> float | int:
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if name in ("epochs", "trainable_layers"):
        if not math.isfinite(value) or value != int(value):
            raise UserError(f"--grid {name}: {raw!r} is not a whole number")
        value = int(value)
        if value < 1:
            raise UserError(f"--grid {name}: {value} is below 1")
        if name == "trainable_layers" and value > layer_groups:
            raise UserError(
                f"--grid trainable_layers: {value} exceeds the model's {layer_groups} layer "
                f"groups; use 1..{layer_groups}"
            )
        return value
    if not math.isfinite(value):
        raise UserError(f"--grid {name}: {raw!r} is not a finite number")
    value += 0.0  # -0 is 0: one level, one label, one study name
    if name == "label_smoothing" and not 0 <= value < 1:
        raise UserError(f"--grid label_smoothing: {raw} lies outside [0, 1)")
    if name == "lr" and value <= 0:
        raise UserError(f"--grid lr: {raw} is not positive")
    return value


def parse_grid(texts: Sequence[str], layer_groups: int) -> dict[str, list[float | int]]:
    """`["label_smoothing=0.1,0.15", "epochs=20,60"]` -> {name: levels}, in the order given.
    A grid may leave the study's search range; it may not leave a parameter's domain."""
    grid: dict[str, list[float | int]] = {}
    for text in texts:
        name, sep, raw = text.partition("=")
        name = name.strip()
        if not sep or not raw.strip():
            raise UserError(f"--grid {text!r}: write it as name=level,level (e.g. epochs=20,60)")
        if name not in SEARCH_PARAMS:
            raise UserError(
                f"--grid {name}: not a parameter lsearch varies; use one of "
                f"{', '.join(SEARCH_PARAMS)}"
            )
        if name in grid:
            raise UserError(f"--grid {name} is given twice; list all its levels in one --grid")
        levels = [_level(name, part, layer_groups) for part in raw.split(",")]
        if len(set(levels)) != len(levels):
            raise UserError(f"--grid {name}: a level is listed twice ({raw})")
        grid[name] = levels
    return grid


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    config: TrialConfig
    levels: dict[str, float | int]  # the grid's factors and this cell's level of each

    @property
    def label(self) -> str:
        if not self.levels:
            return describe(asdict(self.config))
        return describe(self.levels)


def build_cells(grid: dict[str, list[float | int]], base: TrialConfig) -> list[Cell]:
    """The full factorial of the grid's levels, the first factor varying slowest."""
    names = list(grid)
    cells = []
    for combo in itertools.product(*(grid[name] for name in names)):
        levels = dict(zip(names, combo, strict=True))
        cells.append(Cell(TrialConfig(**{**asdict(base), **levels}), levels))
    return cells


def fresh_seeds(used: Sequence[int], count: int) -> list[int]:
    """`count` seeds after the largest one a search used: seeds that chose a configuration
    carry their luck into its numbers, so the configuration is measured on new ones."""
    start = max(used, default=-1) + 1
    return list(range(start, start + count))


# ----------------------------------------------------------------------------- results


def _key(config: TrialConfig | dict[str, Any], seed: int) -> Key:
    c = asdict(config) if isinstance(config, TrialConfig) else config
    return (
        float(c["label_smoothing"]), int(c["epochs"]), float(c["lr"]),
        int(c["trainable_layers"]), int(seed),
    )  # fmt: skip


@dataclass(frozen=True)
class Found:
    """One cell-seed result and where it came from."""

    results: dict[str, Any]
    trial: int
    trained_epochs: int  # the planned epochs of the run it was read from


def collect(trials: Sequence[FrozenTrial], constant_schedule: bool) -> dict[Key, Found]:
    """Every cell-seed result the study's complete trials hold, keyed by configuration and
    seed; the lowest trial number wins a duplicate, and under a constant learning rate a
    run's shorter epoch counts count too. A run's own epochs beat a read-off."""
    found: dict[Key, Found] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state != TrialState.COMPLETE or "held_out" not in trial.user_attrs:
            continue
        config = trial.user_attrs["config"]
        seed = trial.user_attrs["seeds"][0]
        for count_text, results in trial.user_attrs["held_out"].items():
            count = int(count_text)
            if count != config["epochs"] and not constant_schedule:
                continue
            key = _key({**config, "epochs": count}, seed)
            own = count == config["epochs"]
            if key not in found or (own and found[key].trained_epochs != count):
                found[key] = Found(results, trial.number, config["epochs"])
    return found


# A seed-run that ran out of device memory is tried this many times in all before it is
# left failed: another worker on the same GPU may have caused it.
OUT_OF_MEMORY_TRIES = 2


def _trial_key(trial: FrozenTrial) -> Key | None:
    """The seed-run a trial trained (None for one that never chose a seed-run)."""
    if "seed" in trial.params:
        return _key(trial.params, int(trial.params["seed"]))
    attrs = trial.user_attrs
    if "config" in attrs and attrs.get("seeds"):
        return _key(attrs["config"], attrs["seeds"][0])
    return None


def _failed_keys(trials: Sequence[FrozenTrial]) -> dict[Key, str]:
    """Seed-runs that failed for a reason (a NaN loss, an exception, out of memory twice):
    not trained again, by this run or a rerun. A seed-run that ran out of memory fewer
    than OUT_OF_MEMORY_TRIES times is tried again."""
    failed: dict[Key, str] = {}
    out_of_memory: dict[Key, int] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        reason = trial.user_attrs.get("fail_reason")
        key = _trial_key(trial)
        if trial.state != TrialState.FAIL or not reason or key is None:
            continue
        if trial.user_attrs.get(OUT_OF_MEMORY_ATTR):
            out_of_memory[key] = out_of_memory.get(key, 0) + 1
            if out_of_memory[key] < OUT_OF_MEMORY_TRIES:
                continue
        failed.setdefault(key, reason)
    return failed


@dataclass(frozen=True)
class Plan:
    """One seed-run to train: a configuration, a seed, and the shorter epoch counts whose
    results are read from it."""

    config: TrialConfig
    seed: int
    test_at: tuple[int, ...]

    @property
    def key(self) -> Key:
        return _key(self.config, self.seed)


def plan_runs(
    cells: Sequence[Cell],
    seeds: Sequence[int],
    found: dict[Key, Found],
    failed: dict[Key, str],
    constant_schedule: bool,
) -> list[Plan]:
    """The seed-runs still to train so that every cell has every seed."""
    missing: dict[tuple[float, float, int, int], set[int]] = {}
    for cell, seed in itertools.product(cells, seeds):
        key = _key(cell.config, seed)
        if key in found or key in failed:
            continue
        c = cell.config
        group = (c.label_smoothing, c.lr, c.trainable_layers, seed)
        missing.setdefault(group, set()).add(c.epochs)
    plans = []
    for (epsilon, lr, layers, seed), counts in missing.items():
        if constant_schedule:
            longest = max(counts)
            config = TrialConfig(epsilon, longest, lr, layers)
            plans.append(Plan(config, seed, tuple(sorted(counts - {longest}))))
        else:
            plans.extend(
                Plan(TrialConfig(epsilon, count, lr, layers), seed, ()) for count in sorted(counts)
            )
    return plans


# ----------------------------------------------------------------------------- the study


def comparison_name(spec_name: str, grid: dict[str, list[float | int]], from_best: bool) -> str:
    text = " ".join(f"{name}={','.join(f'{v:g}' for v in levels)}" for name, levels in grid.items())
    return f"{spec_name} compare {text}" + (" from-best" if from_best else "")


def open_comparison(
    storage: optuna.storages.BaseStorage,
    name: str,
    spec: StudySpec,
    search_study: str | None,
    device: str,
) -> optuna.Study:
    """Create or load a comparison study; refuse one made from a spec that trains differently."""
    existing = {
        s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    if name in existing:
        attrs = existing[name].user_attrs
        if attrs.get(KIND_ATTR) != "comparison":
            raise UserError(
                f"study '{name}' in this storage is a search, not a comparison; pass --name"
            )
        stored = attrs.get(SPEC_ATTR)
        if stored is not None and not spec.same_trials_as(stored, comparison=True):
            raise UserError(
                f"comparison '{name}' in this storage was trained from a different study file or "
                "--set values; use the same ones to extend it, or pass --name for a new one"
            )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),  # never samples: every param is fixed
        load_if_exists=True,
    )
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(KIND_ATTR, "comparison")
        study.set_user_attr(SEARCH_STUDY_ATTR, search_study)
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
        study.set_user_attr(PRODUCED_BY_ATTR, {**produced_by(), "device": device})
    return study


class NothingLeft(Exception):
    """Every seed-run of the plan is taken: another worker started the last one first."""


class SeedRunObjective:
    """The objective of a comparison trial: one planned seed-run, with test metrics.
    A retried trial (its worker died) arrives with its params and resumes its checkpoint."""

    def __init__(
        self,
        objective: SearchObjective,
        test_set: TestSet,
        plans: Sequence[Plan],
        worker_index: int,
    ) -> None:
        self.objective = objective
        self.test_set = test_set
        self.plans = list(plans)
        self.worker_index = worker_index

    @property
    def device(self) -> torch.device:
        """The device the seed-runs train on (named in an out-of-memory fail_reason)."""
        return self.objective.device

    def next_plan(self, study: optuna.Study, own_number: int) -> Plan:
        trials = study.get_trials(deepcopy=False)
        taken = set(_failed_keys(trials))  # failed for a reason: not trained again
        for trial in trials:
            busy = trial.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)
            if trial.number != own_number and busy and "seed" in trial.params:
                taken.add(_key(trial.params, int(trial.params["seed"])))
        free = [plan for plan in self.plans if plan.key not in taken]
        if not free:
            raise NothingLeft("another worker started the last seed-run first; nothing trained")
        # Workers start at different places in the list, so that they rarely pick the same.
        return free[self.worker_index % len(free)]

    def __call__(self, trial: optuna.Trial) -> float:
        if trial.params:  # a retry of a trial whose worker died
            params = trial.params
            config = TrialConfig(
                float(params["label_smoothing"]), int(params["epochs"]), float(params["lr"]),
                int(params["trainable_layers"]),
            )  # fmt: skip
            plan = Plan(config, int(params["seed"]), tuple(trial.user_attrs.get("test_at", ())))
        else:
            try:
                plan = self.next_plan(trial.study, trial.number)
            except NothingLeft as exc:
                trial.set_user_attr("fail_reason", str(exc))
                raise
        c = plan.config
        # Single-value distributions: the trial takes exactly these values, and the
        # dashboard shows them as params (ranges wide enough for any comparison).
        trial.suggest_float("label_smoothing", c.label_smoothing, c.label_smoothing)
        trial.suggest_int("epochs", c.epochs, c.epochs)
        trial.suggest_float("lr", c.lr, c.lr, log=True)
        trial.suggest_int("trainable_layers", c.trainable_layers, c.trainable_layers)
        trial.suggest_int("seed", plan.seed, plan.seed)
        trial.set_user_attr("test_at", list(plan.test_at))
        attrs = self.objective.train(
            trial, c, [plan.seed], prunes=False, test_set=self.test_set, test_at=plan.test_at
        )
        return float(attrs["test_acc"])


def run_plans(
    study: optuna.Study,
    objective: SeedRunObjective,
    liveness: Liveness | None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    on_wait: Callable[[optuna.Study], None] | None = None,
    poll_seconds: float = 2.0,
) -> None:
    """Train planned seed-runs (retries of dead workers' trials first) until every one is
    complete or failed for a reason (a NaN loss or an exception, not retried; out of device
    memory, retried once: see _failed_keys). With heartbeats, a worker
    with nothing to start waits while others' runs are RUNNING, since a dead worker's run
    comes back as a retry; without them (gRPC proxy) it leaves."""
    keys = {plan.key for plan in objective.plans}
    while True:
        interrupts.check()
        if liveness is not None:
            liveness.sweeper.sweep(study)
        trials = study.get_trials(deepcopy=False)
        settled: set[Key] = set(_failed_keys(trials))  # complete, or failed for a reason
        started: set[Key] = set()  # running or waiting
        for trial in trials:
            if "seed" not in trial.params:
                continue
            key = _key(trial.params, int(trial.params["seed"]))
            if trial.state == TrialState.COMPLETE:
                settled.add(key)
            elif trial.state in (TrialState.RUNNING, TrialState.WAITING):
                started.add(key)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and not keys - settled - started:
            if not keys & started - settled or liveness is None:
                return
            if on_wait is not None:
                on_wait(study)
            time.sleep(poll_seconds)
            continue
        run_one(study, objective, callbacks, (NonFiniteLossError, NothingLeft), liveness)


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """What one `lsearch compare` or `lsearch evaluate` asks for, checked."""

    spec: StudySpec
    grid: dict[str, list[float | int]]  # empty for an evaluation (one cell)
    base: TrialConfig
    seeds: list[int]
    metrics: list[str]
    search_study: str  # the search this comparison belongs to (it may not exist yet)
    name: str  # the comparison study
    notes: tuple[str, ...] = ()

    @property
    def cells(self) -> list[Cell]:
        return build_cells(self.grid, self.base)

    @property
    def constant_schedule(self) -> bool:
        return self.spec.train.schedule == "constant"


def check_metrics(names: Sequence[str]) -> list[str]:
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown:
        raise UserError(
            f"--metric {unknown[0]}: not a metric a comparison records; use any of "
            f"{', '.join(ALL_METRICS)}"
        )
    return list(dict.fromkeys(names)) or list(DEFAULT_METRICS)


def check_seeds(seeds: list[int]) -> tuple[str, ...]:
    """Fewer than 2 seeds is an error; fewer than 4 a warning (returned as a note)."""
    if len(seeds) < FEWEST_SEEDS:
        raise UserError(
            f"--seeds: a comparison needs at least {FEWEST_SEEDS} seeds (got {len(seeds)}); "
            "differences are paired by seed, e.g. --seeds 0-4"
        )
    if len(seeds) < ADVISED_SEEDS:
        return (
            f"warning: only {len(seeds)} seeds: no interval is meaningful below "
            f"{ADVISED_SEEDS} (the t interval's width grows fast as n falls); use at least "
            f"{ADVISED_SEEDS}, better 5 to 10",
        )
    return ()


def _search_study(
    storage: optuna.storages.BaseStorage, name: str, spec: StudySpec | None
) -> optuna.Study:
    summaries = {
        s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    summary = summaries.get(name)
    if summary is None or summary.user_attrs.get(KIND_ATTR) == "comparison":
        raise UserError(
            f"no search study named '{name}' in this storage; run `lsearch run --study "
            f"{name}` first, or point --storage at the storage that holds it"
        )
    if spec is not None and not spec.same_trials_as(summary.user_attrs.get(SPEC_ATTR, {})):
        raise UserError(
            f"search study '{name}' was made from a different study file or --set values; "
            "use the same ones with --from-best"
        )
    return optuna.load_study(study_name=name, storage=storage)


def _chosen_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    complete = {
        t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    if not complete:
        raise UserError(
            f"search study '{study.study_name}' has no finished trial yet; run `lsearch run` first"
        )
    if number is not None:
        if number not in complete:
            raise UserError(
                f"study '{study.study_name}' has no complete trial {number}; complete trials: "
                f"{_ranges(sorted(complete))}"
            )
        return complete[number]
    if len(study.directions) > 1:
        raise UserError(
            f"study '{study.study_name}' is multi-objective and has no single best trial; "
            "pick one from `lsearch best` with --trial N"
        )
    return study.best_trial


def _ranges(numbers: Sequence[int]) -> str:
    text = ", ".join(map(str, numbers[:12]))
    return text + (", ..." if len(numbers) > 12 else "")


def _fresh_seed_note(seeds: list[int], used: Sequence[int], trial: int) -> str:
    return (
        f"seeds {_ranges(seeds)}: fresh seeds the search did not use (its seeds "
        f"{_ranges(list(used))} chose trial {trial}'s configuration and carry their luck into "
        "its numbers); --seeds overrides"
    )


def comparison_request(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage | None,
    grid_texts: Sequence[str],
    layer_groups: int,
    seeds_text: str | None,
    from_best: bool,
    name: str | None,
    metrics: Sequence[str],
) -> Request:
    if not grid_texts:
        raise UserError("give at least one --grid, e.g. --grid label_smoothing=0.1,0.15")
    grid = parse_grid(grid_texts, layer_groups)
    cells = math.prod(len(levels) for levels in grid.values())
    if cells < 2:
        raise UserError(
            f"the grid has only one cell ({describe({k: v[0] for k, v in grid.items()})}); "
            "give a factor two or more levels, or use `lsearch evaluate` for one configuration"
        )
    notes: tuple[str, ...] = ()
    if from_best:
        assert storage is not None, "--from-best reads the search from the storage"
        search = _search_study(storage, spec.name, spec)
        trial = _chosen_trial(search, None)
        base = TrialConfig(**trial.user_attrs["config"])
        seeds = (
            parse_seeds(seeds_text)
            if seeds_text
            else fresh_seeds(spec.seeds, max(5, len(spec.seeds)))
        )
        notes += (
            f"parameters outside the grid from the best trial {trial.number} of '{spec.name}'",
        )
        if not seeds_text:
            notes += (_fresh_seed_note(seeds, spec.seeds, trial.number),)
    else:
        base = TrialConfig(**spec.baseline.model_dump())
        seeds = parse_seeds(seeds_text) if seeds_text else list(spec.seeds)
    notes += check_seeds(seeds)
    return Request(
        spec=spec,
        grid=grid,
        base=base,
        seeds=seeds,
        metrics=check_metrics(metrics),
        search_study=spec.name,
        name=name or comparison_name(spec.name, grid, from_best),
        notes=notes,
    )


def evaluation_request(
    storage: optuna.storages.BaseStorage,
    study_name: str | None,
    trial_number: int | None,
    seeds_text: str | None,
    name: str | None,
    metrics: Sequence[str],
) -> Request:
    """One configuration of a search (its best trial by default) as a one-cell comparison."""
    from lsearch.outputs.results import pick_study

    search = pick_study(storage, study_name, search_only=True)
    stored = search.user_attrs.get(SPEC_ATTR)
    if stored is None:
        raise UserError(f"study '{search.study_name}' was not made by lsearch run")
    spec = StudySpec.model_validate(stored)
    trial = _chosen_trial(search, trial_number)
    seeds = (
        parse_seeds(seeds_text) if seeds_text else fresh_seeds(spec.seeds, max(5, len(spec.seeds)))
    )
    notes: tuple[str, ...] = ()
    if not seeds_text:
        notes += (_fresh_seed_note(seeds, spec.seeds, trial.number),)
    notes += check_seeds(seeds)
    return Request(
        spec=spec,
        grid={},
        base=TrialConfig(**trial.user_attrs["config"]),
        seeds=seeds,
        metrics=check_metrics(metrics),
        search_study=search.study_name,
        name=name or f"{search.study_name} evaluate trial {trial.number}",
        notes=notes,
    )


# ----------------------------------------------------------------------------- results


def existing_comparison(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    names = {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    return optuna.load_study(study_name=name, storage=storage) if name in names else None


def pending_plans(request: Request, study: optuna.Study | None) -> list[Plan]:
    """The seed-runs the comparison still has to train."""
    trials = [] if study is None else study.get_trials(deepcopy=False)
    found = collect(trials, request.constant_schedule)
    return plan_runs(
        request.cells, request.seeds, found, _failed_keys(trials), request.constant_schedule
    )


def seconds_per_seed_epoch(url: str, request: Request) -> float | None:
    """Measured training time per seed and epoch in the comparison and its search, read
    without creating anything (None when nothing has been timed)."""
    from lsearch.store.storage import open_storage

    try:
        storage = open_storage(url, must_exist=True)
    except UserError:
        return None
    seconds, epochs = 0.0, 0
    known = {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    for name in (request.name, request.search_study):
        if name not in known:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=FINISHED):
            attrs = trial.user_attrs
            if "train_seconds" in attrs and attrs.get("epochs_trained"):
                seconds += attrs["train_seconds"]
                epochs += attrs["epochs_trained"] * len(attrs.get("seeds", [0]))
    return seconds / epochs if epochs else None


def summarise(request: Request, study: optuna.Study | None) -> dict[str, Any]:
    """Every number of the comparison, recomputed from the per-seed results in the study."""
    from lsearch.analysis.verdict import analyse

    trials = [] if study is None else study.get_trials(deepcopy=False)
    found = collect(trials, request.constant_schedule)
    failed = _failed_keys(trials)
    notes = list(request.notes)
    cells = []
    seen_metrics: set[str] = set()
    for cell in request.cells:
        per_seed: dict[int, dict[str, float]] = {}
        reliability: dict[str, list[dict[str, Any]]] = {"": [], "_ts": []}
        trial_numbers, read_from = set(), set()
        for seed in request.seeds:
            key = _key(cell.config, seed)
            if key in failed:
                notes.append(f"{cell.label}, seed {seed}: failed ({failed[key]}); left out")
                continue
            hit = found.get(key)
            if hit is None:
                notes.append(f"{cell.label}, seed {seed}: not trained yet; left out")
                continue
            seen_metrics |= set(hit.results)
            lacking = [metric for metric in request.metrics if metric not in hit.results]
            if lacking:
                notes.append(
                    f"{cell.label}, seed {seed}: trial {hit.trial} has no {', '.join(lacking)} "
                    "(recorded by an older lsearch); left out"
                )
                continue
            per_seed[seed] = {metric: hit.results[metric] for metric in request.metrics}
            for when in ("", "_ts"):
                bins = hit.results.get(f"test_reliability{when}_per_seed")
                if bins:
                    reliability[when].extend(bins)
            trial_numbers.add(hit.trial)
            if hit.trained_epochs != cell.config.epochs:
                read_from.add(hit.trained_epochs)
        if read_from:
            notes.append(
                f"{cell.label}: read from the first {cell.config.epochs} epochs of the "
                f"{'/'.join(map(str, sorted(read_from)))}-epoch runs (exact under the constant "
                "learning rate: a shorter run is the start of a longer one)"
            )
        cells.append(
            {
                "label": cell.label,
                "config": asdict(cell.config),
                "levels": cell.levels,
                "trials": sorted(trial_numbers),
                "per_seed": per_seed,
                # Test reliability bins pooled over the cell's seeds, before and after
                # temperature scaling (for reliability diagrams).
                "reliability": {
                    "before": pooled_reliability(reliability[""]),
                    "after": pooled_reliability(reliability["_ts"]),
                }
                if reliability[""] and reliability["_ts"]
                else None,
            }
        )
    absent = [m for m in request.metrics if seen_metrics and m not in seen_metrics]
    if absent:
        raise UserError(
            f"--metric {absent[0]}: no cell of '{request.name}' has it (its runs were recorded "
            "without it); leave it out or train the cells again under a new --name"
        )
    analysis = analyse(cells, request.grid, request.metrics)
    return {
        "study": request.name,
        "search_study": request.search_study,
        "grid": request.grid,
        "base": asdict(request.base),
        "seeds": request.seeds,
        "metrics": request.metrics,
        "select_epoch": request.spec.objective.select_epoch,
        "notes": notes,
        **analysis,
    }


def record_test_use(
    storage: optuna.storages.BaseStorage, request: Request, study: optuna.Study
) -> int:
    """Count the configurations evaluated on the test set for this search, over all its
    comparisons, and store the count on the comparison and the search (when it exists)."""
    configs = set()
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        if (
            attrs.get(KIND_ATTR) != "comparison"
            or attrs.get(SEARCH_STUDY_ATTR) != request.search_study
        ):
            continue
        other = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            config = trial.user_attrs.get("config")
            if config is not None:
                for count in trial.user_attrs.get("held_out", {}):
                    configs.add(_key({**config, "epochs": int(count)}, 0)[:4])
    study.set_user_attr(TEST_COUNT_ATTR, len(configs))
    study.set_user_attr(GRID_ATTR, request.grid)
    study.set_user_attr(BASE_ATTR, asdict(request.base))
    study.set_user_attr(SEEDS_ATTR, request.seeds)
    study.set_user_attr(METRICS_ATTR, request.metrics)
    with contextlib.suppress(KeyError):
        search = optuna.load_study(study_name=request.search_study, storage=storage)
        search.set_user_attr(TEST_COUNT_ATTR, len(configs))
    return len(configs)


def train_pending(
    request: Request,
    study: optuna.Study,
    data: tuple[ImagePool, TestSet],
    device: torch.device,
    liveness: Liveness | None,
    worker_index: int,
    progress: Any,
    cores: CoreShare | None = None,
) -> None:
    """Train this worker's share of the pending seed-runs (with any others, through the
    storage) until none is left to start or running."""
    from lsearch.search.launch import open_checkpoints

    plans = pending_plans(request, study)
    if not plans:
        return
    pool, test_set = data
    objective = SearchObjective(
        request.spec, pool, device, on_epoch=progress.on_epoch,
        checkpoints=open_checkpoints(request.spec), cores=cores,
    )  # fmt: skip
    run_plans(
        study,
        SeedRunObjective(objective, test_set, plans, worker_index),
        liveness,
        callbacks=[progress.on_trial],
        on_wait=progress.poll,
    )


def request_from_study(study: optuna.Study) -> Request | None:
    """The last request a comparison study was trained for, from its user attrs (None for a
    comparison whose run never finished recording them)."""
    attrs = study.user_attrs
    if attrs.get(KIND_ATTR) != "comparison" or SEEDS_ATTR not in attrs:
        return None
    return Request(
        spec=StudySpec.model_validate(attrs[SPEC_ATTR]),
        grid=attrs[GRID_ATTR],
        base=TrialConfig(**attrs[BASE_ATTR]),
        seeds=list(attrs[SEEDS_ATTR]),
        metrics=list(attrs.get(METRICS_ATTR, DEFAULT_METRICS)),
        search_study=attrs[SEARCH_STUDY_ATTR],
        name=study.study_name,
    )


def linked_comparisons(
    storage: optuna.storages.BaseStorage, search_study: str
) -> list[tuple[optuna.Study, Request]]:
    """The comparison studies of a search, with their last requests, in name order."""
    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        if attrs.get(KIND_ATTR) == "comparison" and attrs.get(SEARCH_STUDY_ATTR) == search_study:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            request = request_from_study(study)
            if request is not None:
                found.append((study, request))
    return sorted(found, key=lambda pair: pair[0].study_name)
