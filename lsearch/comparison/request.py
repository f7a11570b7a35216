"""What a comparison asks for: `--grid` and `--seeds` text parsed and checked, the base
configuration (the study's `[baseline]`, or the best search trial's), as one `Request`.

A comparison is a full factorial of `--grid` levels; the parameters it does not vary take
the study's `[baseline]` (or, with `--from-best`, the best search trial's values). An
evaluation (`lsearch evaluate`) is a one-cell comparison of one search trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from lsearch.analysis.racing import Race, family_size, start_seeds
from lsearch.analysis.verdict import describe
from lsearch.comparison.plan import Cell, build_cells, fresh_seeds
from lsearch.errors import UserError
from lsearch.search.objective import TrialConfig
from lsearch.spec import SEARCH_PARAMS, StudySpec
from lsearch.store.catalog import CONFIG_ATTR, SPEC_ATTR, find_study, is_comparison, pick_study

# The metrics a comparison reports by default, and every one it can report.
DEFAULT_METRICS = ("val_acc", "val_ece", "test_acc", "test_ece", "test_ece_ts", "test_nll")
ALL_METRICS = (
    *DEFAULT_METRICS, "val_nll", "test_nll_ts", "test_brier", "test_ace",
)  # fmt: skip
FEWEST_SEEDS = 2
ADVISED_SEEDS = 4


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
    race: Race | None = None  # `--seeds auto`: seeds are the race's, `max_seeds` of them

    @property
    def cells(self) -> list[Cell]:
        """The grid's cells, the first factor varying slowest."""
        return build_cells(self.grid, self.base)

    @property
    def constant_schedule(self) -> bool:
        """Whether a shorter run is the start of a longer one (see comparison.plan)."""
        return self.spec.train.schedule == "constant"


def check_metrics(names: Sequence[str]) -> list[str]:
    """The `--metric` names, checked and without repeats; the default ones when none."""
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


def comparison_name(
    spec_name: str, grid: dict[str, list[float | int]], from_best: bool, race: bool = False
) -> str:
    """The default study name of a comparison: the search's name, then its grid (a race has
    its own, so that it never continues a comparison whose numbers were already seen)."""
    text = " ".join(f"{name}={','.join(f'{v:g}' for v in levels)}" for name, levels in grid.items())
    kind = "race" if race else "compare"
    return f"{spec_name} {kind} {text}" + (" from-best" if from_best else "")


@dataclass(frozen=True)
class RaceOptions:
    """`--max-seeds`, `--margin` and `--decide-on` as given (used with `--seeds auto`)."""

    max_seeds: int = 30
    margin: float | None = None
    decide_on: tuple[str, ...] = ()


def check_race(grid: dict[str, list[float | int]], options: RaceOptions) -> Race:
    """The race the options describe, checked against the grid's family."""
    decide_on = tuple(dict.fromkeys(options.decide_on)) or ("test_acc",)
    unknown = [m for m in decide_on if m not in ALL_METRICS]
    if unknown:
        raise UserError(
            f"--decide-on {unknown[0]}: not a metric a comparison records; use any of "
            f"{', '.join(ALL_METRICS)}"
        )
    if options.margin is not None and not (math.isfinite(options.margin) and options.margin > 0):
        raise UserError(
            f"--margin {options.margin}: give a positive number in the metric's display units "
            "(percentage points for accuracy and ECE, e.g. --margin 0.5)"
        )
    race = Race(decide_on, options.margin, options.max_seeds)
    family = family_size(grid, decide_on)
    start = start_seeds(race.alpha / family, race.prior_scale)
    if options.max_seeds < start:
        raise UserError(
            f"--max-seeds {options.max_seeds}: the race starts every cell at {start} seeds, the "
            f"fewest at which its interval (α {race.alpha:g} split over {family} comparisons) "
            f"can exclude anything; use --max-seeds {start} or more"
        )
    return race


def _search_study(
    storage: optuna.storages.BaseStorage, name: str, spec: StudySpec | None
) -> optuna.Study:
    summary = find_study(storage, name)
    if summary is None or is_comparison(summary):
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


def _default_seeds(spec: StudySpec) -> list[int]:
    return fresh_seeds(spec.seeds, max(5, len(spec.seeds)))


def _race_seeds(race: Race | None, first: list[int]) -> list[int]:
    """A race's seed order starts with `first`; other comparisons take `first` as it is."""
    if race is None:
        return first
    from lsearch.comparison.race import race_seeds

    return race_seeds(first, race.max_seeds)


def comparison_request(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage | None,
    grid_texts: Sequence[str],
    layer_groups: int,
    seeds_text: str | None,
    from_best: bool,
    name: str | None,
    metrics: Sequence[str],
    race_options: RaceOptions | None = None,
) -> Request:
    """`lsearch compare`'s options as a checked Request (the storage is read for
    `from_best` only). `seeds_text` "auto" makes it a race (see comparison.race)."""
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
    race = None
    if seeds_text is not None and seeds_text.strip() == "auto":
        race = check_race(grid, race_options or RaceOptions())
        seeds_text = None
    if from_best:
        assert storage is not None, "--from-best reads the search from the storage"
        trial = _chosen_trial(_search_study(storage, spec.name, spec), None)
        base = TrialConfig(**trial.user_attrs[CONFIG_ATTR])
        seeds = _race_seeds(race, parse_seeds(seeds_text) if seeds_text else _default_seeds(spec))
        notes += (
            f"parameters outside the grid from the best trial {trial.number} of '{spec.name}'",
        )
        if not seeds_text:
            notes += (_fresh_seed_note(seeds, spec.seeds, trial.number),)
    else:
        base = TrialConfig(**spec.baseline.model_dump())
        seeds = _race_seeds(race, parse_seeds(seeds_text) if seeds_text else list(spec.seeds))
    if race is None:
        notes += check_seeds(seeds)
    chosen = check_metrics(metrics)
    if race is not None:  # the metrics decided on are always reported
        chosen = list(dict.fromkeys([*chosen, *race.decide_on]))
    return Request(
        spec=spec,
        grid=grid,
        base=base,
        seeds=seeds,
        metrics=chosen,
        search_study=spec.name,
        name=name or comparison_name(spec.name, grid, from_best, race is not None),
        notes=notes,
        race=race,
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
    search = pick_study(storage, study_name, search_only=True)
    stored = search.user_attrs.get(SPEC_ATTR)
    if stored is None:
        raise UserError(f"study '{search.study_name}' was not made by lsearch run")
    spec = StudySpec.model_validate(stored)
    trial = _chosen_trial(search, trial_number)
    seeds = parse_seeds(seeds_text) if seeds_text else _default_seeds(spec)
    notes: tuple[str, ...] = ()
    if not seeds_text:
        notes += (_fresh_seed_note(seeds, spec.seeds, trial.number),)
    notes += check_seeds(seeds)
    return Request(
        spec=spec,
        grid={},
        base=TrialConfig(**trial.user_attrs[CONFIG_ATTR]),
        seeds=seeds,
        metrics=check_metrics(metrics),
        search_study=search.study_name,
        name=name or f"{search.study_name} evaluate trial {trial.number}",
        notes=notes,
    )
