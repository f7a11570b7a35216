"""`lsearch bench --search`: is the study's pruner worth it? Whole searches in memory with
the pruner and with none, over several sampler seeds (`bench.search_runs`), summarised as
the work pruning saves and what it costs in best value and in the chosen configuration's
held-out test value, paired by sampler seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from lsearch.spec import StudySpec

TEST_SEEDS = 5  # new seeds each search's chosen configuration is measured on
# (key in the summary, column title, format) of the table, one row per arm
COLUMNS = (
    ("seed_epochs", "seed-epochs", ",.0f"),
    ("wall_s", "wall s", ".0f"),
    ("best_value", "best value", ".4f"),
    ("test_value", f"best config, test ({TEST_SEEDS} new seeds)", ".4f"),
)


def describe_run(run: Any) -> str:
    """One search as its progress line."""
    return (
        f"  sampler seed {run.sampler_seed}, {'pruned' if run.pruned else 'unpruned'}: "
        f"{run.seed_epochs} seed-epochs, {run.wall_s:.0f} s, best {run.best_value:.4f}, "
        f"its configuration on the test set {run.test_value:.4f}"
    )


def _pp(diff: dict[str, float]) -> str:
    return f"{diff['median'] * 100:+.2f} pp [{diff['min'] * 100:+.2f}, {diff['max'] * 100:+.2f}]"


@dataclass(frozen=True)
class PruningResult:
    """The searches of both arms and their summary (`bench.search_runs.summarise_search`)."""

    study: str
    trials: int
    sampler_seeds: int
    runs: list[Any]  # bench.search_runs.SearchRun
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """What `lsearch bench --search --json` prints: the summary and every search."""
        return {**self.summary, "runs": [asdict(run) for run in self.runs]}

    @property
    def title(self) -> str:
        return (
            f"{self.study}: {self.trials} trials, median [min, max] over "
            f"{self.sampler_seeds} sampler seeds"
        )

    def header(self) -> list[str]:
        return ["", *(title for _, title, _ in COLUMNS)]

    def rows(self) -> list[list[str]]:
        """Per arm (pruned, unpruned): each column's median [min, max]."""
        rows = []
        for arm in ("pruned", "unpruned"):
            row = self.summary[arm]
            rows.append([arm, *(
                f"{row[k]['median']:{fmt}} [{row[k]['min']:{fmt}}, {row[k]['max']:{fmt}}]"
                for k, _, fmt in COLUMNS
            )])  # fmt: skip
        return rows

    def conclusion(self) -> str:
        share = self.summary["work_share"]
        return (
            f"pruning trained {share['median']:.0%} of the unpruned seed-epochs "
            f"[{share['min']:.0%}, {share['max']:.0%}]; pruned minus unpruned, paired by "
            f"sampler seed: best value {_pp(self.summary['best_value_difference'])}, its "
            f"configuration on the test set {_pp(self.summary['test_value_difference'])}"
        )


def measure_pruning(
    spec: StudySpec,
    device: Any,
    trials: int,
    sampler_seeds: int,
    on_run: Callable[[Any], None] | None = None,
) -> PruningResult:
    """Run `sampler_seeds` searches of `trials` trials with the study's pruner and as many
    with none (in memory), calling `on_run` after each, and summarise them (both counts at
    least 1: lsearch.api checks them)."""
    from lsearch.bench.search_runs import bench_search, summarise_search

    runs = bench_search(spec, device, trials, sampler_seeds, on_run or (lambda run: None),
                        TEST_SEEDS)  # fmt: skip
    return PruningResult(spec.name, trials, sampler_seeds, runs, summarise_search(runs))
