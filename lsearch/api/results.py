"""What the use cases return: plain data with the tables and lines the CLI prints, and
``to_dict()`` where the CLI prints JSON. Nothing here draws; `lsearch.cli.printing` does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TableData:
    """A table as text: its title, header and rows; the first `left` columns align left."""

    title: str
    header: list[str]
    rows: list[list[str]]
    left: int = 1
    caption: str | None = None
    show_header: bool = True


def show_value(value: Any) -> str:
    """A metric as `lsearch best` shows it: floats to 4 places, lists item by item."""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return str(value)


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def top_trials(study: Any, top: int = 10) -> TableData:
    """A search's best complete trials with their parameters and headline metrics."""
    import optuna
    from optuna.trial import TrialState

    from lsearch.store.catalog import CONFIG_ATTR

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    trials = sorted(trials, key=lambda t: sign * t.values[0])[:top]
    rows = []
    for trial in trials:
        attrs, config = trial.user_attrs, trial.user_attrs.get(CONFIG_ATTR, {})
        rows.append([
            str(trial.number), f"{config.get('label_smoothing', float('nan')):.3f}",
            str(config.get("epochs", "-")), f"{config.get('lr', float('nan')):.2e}",
            str(config.get("trainable_layers", "-")), _format(attrs.get("val_acc")),
            _format(attrs.get("val_ece")), str(attrs.get("best_epoch", "-")),
            f"{attrs.get('train_seconds', 0.0):.1f}",
        ])  # fmt: skip
    header = ["trial", "ε", "epochs", "lr", "layers", "val acc", "val ECE", "best ep.", "s"]
    title = f"study {study.study_name}: top {len(trials)} complete trials"
    return TableData(title, header, rows, left=0)


@dataclass(frozen=True)
class StatusReport:
    """The studies of a storage (`lsearch status`): one row each (outputs.results.StudyRow)."""

    storage: str  # the URL, password masked
    studies: list[Any]

    def table(self) -> TableData:
        from lsearch.store.catalog import STATES as states

        header = ["study", "kind", "direction", *(s.lower() for s in states), "best"]
        rows = []
        for row in self.studies:
            best = "-" if row.best is None else ", ".join(f"{v:.4f}" for v in row.best)
            space = ""
            if row.checkpoints and row.checkpoint_bytes is not None:
                space = f" ({row.checkpoint_bytes / 1e6:.1f} MB)"
            warned = f" !{row.checkpoint_warnings}" if row.checkpoint_warnings else ""
            rows.append([
                row.name, row.kind, ", ".join(row.directions),
                *(str(row.counts.get(s, 0)) for s in states), best,
                f"{row.checkpoints}{space}{warned}",
            ])  # fmt: skip
        return TableData(f"studies in {self.storage}", [*header, "checkpoints"], rows, left=2)

    def footnotes(self) -> list[str]:
        """What each `!N` in the checkpoints column means."""
        return [
            f"!{row.checkpoint_warnings}: {row.checkpoint_warnings} trial(s) of {row.name} "
            "could not write a checkpoint, so ran without crash protection then (user attr "
            f"checkpoint_warning; first: {row.checkpoint_warning})"
            for row in self.studies
            if row.checkpoint_warnings
        ]


@dataclass(frozen=True)
class BestTrials:
    """A search's best trial, or its Pareto front (`lsearch best`)."""

    study: str
    trials: list[dict[str, Any]]  # outputs.results.trial_summary of each

    def to_dict(self) -> dict[str, Any]:
        """What `lsearch best --json` prints."""
        best: Any = self.trials[0] if len(self.trials) == 1 else self.trials
        return {"study": self.study, "best": best}

    def tables(self) -> list[TableData]:
        tables = []
        for summary in self.trials:
            rows = [
                [key, f"{value:g}" if isinstance(value, float) else str(value)]
                for key, value in summary["params"].items()
            ]
            rows += [
                [key, show_value(value)]
                for key, value in summary.items()
                if key not in ("params", "number")
            ]
            title = f"study {self.study}: best trial {summary['number']}"
            tables.append(TableData(title, ["key", "value"], rows, left=2, show_header=False))
        return tables


@dataclass(frozen=True)
class PlannedRun:
    """One seed-run a comparison still has to train."""

    config: dict[str, Any]
    seed: int
    test_at: tuple[int, ...] = ()  # other epoch counts read from the same run


@dataclass(frozen=True)
class ComparisonPlan:
    """What a comparison would train (`--dry-run`): its cells, seeds and pending seed-runs."""

    name: str
    storage: str  # the URL, password masked
    notes: tuple[str, ...]
    cells: list[tuple[str, dict[str, Any]]]  # (label, configuration)
    seeds: list[int]
    pending: list[PlannedRun]
    seconds_per_seed_epoch: float | None  # measured in the storage; None: never timed
    race: dict[str, Any] | None = None  # what a race starts with (comparison.race.race_start)

    def table(self) -> TableData:
        rows = [
            [label, f"{c['label_smoothing']:g}", str(c["epochs"]), f"{c['lr']:g}",
             str(c["trainable_layers"])]
            for label, c in self.cells
        ]  # fmt: skip
        title = f"comparison {self.name} in {self.storage}: {len(self.cells)} cells"
        return TableData(title, ["cell", "ε", "epochs", "lr", "layers"], rows)

    def lines(self) -> list[str]:
        """The seeds, the work left with its estimated time, and each pending seed-run."""
        from lsearch.analysis.verdict import describe

        epochs = sum(run.config["epochs"] for run in self.pending)
        per_epoch = self.seconds_per_seed_epoch
        estimate = (
            "unknown (no trial of this study has been timed yet)"
            if per_epoch is None
            else f"at most about {epochs * per_epoch:.0f} s ({per_epoch:.2f} s per seed-epoch "
            "as measured in this storage; early stopping ends runs sooner)"
        )
        lines = [
            f"seeds {', '.join(map(str, self.seeds))}; {len(self.pending)} seed-runs to train "
            f"({epochs} seed-epochs at most); estimated time {estimate}"
        ]
        if self.race is not None:
            r = self.race
            margin = "none" if r["margin"] is None else f"±{r['margin']:g}"
            lines[0] = (
                f"race on {', '.join(r['decide_on'])} (margin {margin}): {r['family']} "
                f"comparisons, α {r['alpha']:g} split to {r['alpha_split']:.2g} each; every "
                f"cell starts at {r['start_seeds']} seeds, at most {r['max_seeds']} "
                f"({r['fixed_design']} seed-runs on every cell); now {len(self.pending)} "
                f"seed-runs to train ({epochs} seed-epochs at most); estimated time {estimate}"
            )
        for run in self.pending:
            also = ", ".join(map(str, run.test_at))
            extra = f" (also read at {also} epochs)" if run.test_at else ""
            lines.append(f"  {describe(run.config)}, seed {run.seed}{extra}")
        return lines


@dataclass(frozen=True)
class ComparisonResult:
    """A comparison's (or evaluation's) every number, computed once: ``to_dict()`` is what
    ``--json`` prints, and the tables and verdicts are what the CLI prints."""

    summary: dict[str, Any]
    request_notes: tuple[str, ...] = field(default=())  # shown before training

    def to_dict(self) -> dict[str, Any]:
        return self.summary

    @property
    def name(self) -> str:
        return str(self.summary["study"])

    @property
    def verdicts(self) -> list[str]:
        return list(self.summary["verdicts"])

    @property
    def later_notes(self) -> list[str]:
        """Notes the analysis added after the request's own (printed before training)."""
        return list(self.summary["notes"][len(self.request_notes) :])

    def answer(self) -> list[str]:
        """The answer in a few lines (what the command prints first)."""
        from lsearch.analysis.answer import answer_lines

        return answer_lines(self.summary)

    def cell_table(self) -> TableData:
        from lsearch.analysis.verdict import CLIPPED_MARK, CLIPPED_NOTE, cell_rows

        header, rows = cell_rows(self.summary)
        cut = any(CLIPPED_MARK in text for row in rows for text in row)
        title = f"{self.name}: mean [95 % CI] over seeds"
        return TableData(title, header, rows, caption=CLIPPED_NOTE if cut else None)

    def pair_table(self) -> TableData | None:
        """The paired differences of every metric (None when no pair shares a seed)."""
        from lsearch.analysis.verdict import pair_rows

        header, rows = pair_rows(self.summary)
        if not rows:
            return None
        notes = {
            pair["wilcoxon_note"]
            for pairs in self.summary["comparisons"].values()
            for pair in pairs
            if pair["n"] and pair["wilcoxon_note"]
        }
        caption = "Wilcoxon: " + "; ".join(sorted(notes)) if notes else None
        return TableData("paired differences (first − second)", header, rows, 3, caption)

    def to_markdown(self) -> str:
        """The answer as a list, then the tables and verdicts (what `--markdown` prints)."""
        from lsearch.analysis.verdict import to_markdown

        answer = "\n".join(f"    {line}" for line in self.answer())
        tables = to_markdown(self.summary)
        head, _, rest = tables.partition("\n\n")
        return f"{head}\n\n### Answer\n\n{answer}\n\n{rest}"
