"""`lsearch compare` and `lsearch evaluate`: configurations on shared seeds, on the
held-out test set."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from lsearch import api
from lsearch.cli.options import (
    DeviceOption,
    JsonOption,
    MetricOption,
    SeedsOption,
    StorageOption,
    StudyNameOption,
    ThreadsOption,
    WorkersOption,
    display,
    err,
    out,
    user_errors,
)
from lsearch.cli.printing import print_json, print_lines, print_table, table

DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print what is left to train; train nothing")
]
MarkdownOption = Annotated[bool, typer.Option("--markdown", help="Print Markdown tables")]
QuietOption = Annotated[bool, typer.Option(help="Train only; print nothing but errors")]
TablesOption = Annotated[
    bool,
    typer.Option("--tables", help="Print the cells and every paired difference after the answer"),
]


@user_errors
def compare(
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help="A factor and its levels, repeatable: label_smoothing=0.1,0.15 (full factorial)",
        ),
    ] = None,
    study: Annotated[
        str, typer.Option("--study", help="Study file: a path, or a bundled name")
    ] = api.DEFAULT_STUDY,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a study-file value (e.g. baseline.lr=3e-3)"),
    ] = None,
    seeds: SeedsOption = None,
    from_best: Annotated[
        bool,
        typer.Option(
            "--from-best",
            help="Take the parameters outside the grid from the search's best trial "
            "(default: the study file's [baseline]); seeds default to fresh ones",
        ),
    ] = False,
    metric: MetricOption = None,
    storage: StorageOption = None,
    name: Annotated[
        str | None, typer.Option(help="Comparison study name [default: study and grid]")
    ] = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = 1,
    threads: ThreadsOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the cells and what is left to train; train nothing"),
    ] = False,
    max_seeds: Annotated[
        int, typer.Option("--max-seeds", help="A race's most seeds per cell (with --seeds auto)")
    ] = 30,
    margin: Annotated[
        float | None,
        typer.Option(
            help="A race's equivalence margin, in display units (pp for accuracy and ECE)"
        ),
    ] = None,
    decide_on: Annotated[
        list[str] | None,
        typer.Option(
            "--decide-on", help="A metric a race decides on, repeatable [default: test_acc]"
        ),
    ] = None,
    as_json: JsonOption = False,
    markdown: MarkdownOption = False,
    tables: TablesOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train a full factorial grid on shared seeds, evaluate every seed on the held-out test
    set, and compare the cells pairwise with intervals and p-values.

    Seeds default to the study file's seeds, or with --from-best to fresh ones. With
    --seeds auto the cells race: seeds are added only where a comparison is still undecided,
    with an interval that stays valid however often it is looked at.
    """
    job = api.comparison_job(
        grid or [], study, set_, seeds=seeds, from_best=from_best, metrics=metric,
        storage=storage, name=name, device=device, workers=workers, threads=threads,
        max_seeds=max_seeds, margin=margin, decide_on=decide_on,
    )  # fmt: skip
    _carry_out(job, dry_run, as_json, markdown, quiet, tables)


@user_errors
def evaluate(
    study: StudyNameOption = None,
    trial: Annotated[
        int | None, typer.Option(help="Search trial number [default: the best trial]")
    ] = None,
    seeds: SeedsOption = None,
    metric: MetricOption = None,
    storage: StorageOption = None,
    name: Annotated[
        str | None, typer.Option(help="Comparison study name [default: study and trial]")
    ] = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = 1,
    threads: ThreadsOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    markdown: MarkdownOption = False,
    tables: TablesOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train one configuration of a search (its best trial by default) on fresh seeds and
    record its held-out test metrics: a one-cell comparison."""
    job = api.evaluation_job(
        study, trial, seeds=seeds, metrics=metric, storage=storage, name=name,
        device=device, workers=workers, threads=threads,
    )  # fmt: skip
    _carry_out(job, dry_run, as_json, markdown, quiet, tables)


def _carry_out(
    job: api.Job, dry_run: bool, as_json: bool, markdown: bool, quiet: bool, tables: bool
) -> None:
    """Print the plan (--dry-run), or train what is missing and print the comparison."""
    if dry_run:
        plan = api.plan(job)
        for note in plan.notes:
            err.print(note, highlight=False, markup=False)
        print_table(plan.table())
        print_lines(plan.lines())
        return
    try:
        result = api.carry_out(job, display(quiet), train_only=quiet)
    except api.Interrupted as exc:
        err.print(api.interrupt_message(exc, "the comparison"), highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        err.print("interrupted: run the same command again to train what is missing")
        raise typer.Exit(130) from None
    if result is None:
        return
    if as_json:
        print_json(result.to_dict())
    elif markdown:
        sys.stdout.write(result.to_markdown())
    else:
        _print_result(result, tables)


def _print_result(result: api.ComparisonResult, tables: bool) -> None:
    """The notes the analysis added and the answer; with --tables, then the cells, the
    paired differences and the verdicts."""
    for note in result.later_notes:
        err.print(note, highlight=False, markup=False)
    print_lines(result.answer())
    if not tables:
        out.print("(the cells and every paired difference: --tables; all of it: --json)")
        return
    # A level's interval on its own line keeps the cells table narrow.
    out.print(table(result.cell_table(), lambda text: escape(text.replace(" [", "\n["))))
    pairs = result.pair_table()
    if pairs is not None:
        print_table(pairs)
    if result.verdicts:
        out.print("[bold]verdicts[/]")
        for verdict in result.verdicts:
            out.print(f"- {verdict}", highlight=False, markup=False)
