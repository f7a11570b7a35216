"""`lsearch run`, `proxy`, `status` and `best`: a search and the studies of a storage."""

from __future__ import annotations

from typing import Annotated

import typer

from lsearch import api
from lsearch.cli.options import (
    OverridesOption,
    StorageOption,
    StudyFileOption,
    StudyNameOption,
    display,
    err,
    out,
    user_errors,
)
from lsearch.cli.printing import print_json, print_table


@user_errors
def run(
    study: StudyFileOption = api.DEFAULT_STUDY,
    set_: OverridesOption = None,
    storage: StorageOption = None,
    trials: Annotated[
        int, typer.Option(help="Total finished (complete + pruned) trials the study should reach")
    ] = 100,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after this many seconds")
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda, cuda:N, or cuda:free (the least-shared GPU)")
    ] = "auto",
    name: Annotated[
        str | None, typer.Option(help="Study name in the storage [default: the study file's name]")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes to start on this machine, sharing the study "
            "(default: one per --gpus entry, else 1)",
            show_default=False,
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="GPUs for the workers, indices or UUIDs: 0,1,2,3 starts one worker on each; "
            "with --workers, round robin (0,0,1,1 or more workers than GPUs: several per GPU)"
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads per worker [default: the cores divided among the lsearch "
            "workers running on this machine]"
        ),
    ] = None,
    heartbeat_interval: Annotated[
        int | None,
        typer.Option(help="Seconds between a running trial's heartbeats; 0 = off [study file: 10]"),
    ] = None,
    grace_period: Annotated[
        int | None,
        typer.Option(
            help="Seconds without a heartbeat before a trial is re-queued [study file: 60]"
        ),
    ] = None,
    artifacts: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint store: a folder, s3://bucket or gs://bucket [study file: artifacts]"
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option(help="Print only errors and failed trials (as a worker does)")
    ] = False,
) -> None:
    """Run (or continue) a search until the study holds --trials finished trials."""
    try:
        found = api.run(
            study, set_, storage=storage, trials=trials, timeout=timeout, device=device,
            name=name, workers=workers, gpus=gpus, threads=threads,
            heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            artifacts=artifacts, console=display(quiet),
            notify=lambda line: err.print(line, highlight=False),
        )  # fmt: skip
    except api.Interrupted as exc:
        err.print(api.interrupt_message(exc, "the study"), highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        err.print("interrupted: run the same command again to continue the study")
        raise typer.Exit(130) from None
    if quiet:
        return
    print_table(api.top_trials(found))
    finished = api.count_finished(found)
    if finished < trials:
        err.print(f"{finished} of {trials} trials finished; run the same command again to continue")


@user_errors
def proxy(
    storage: StorageOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 13000,
) -> None:
    """Serve a storage to many workers through Optuna's gRPC proxy (workers use
    --storage grpc://HOST:PORT). The proxy also fails and re-queues the trials of workers
    that stopped beating, like the workers themselves do: see README."""
    try:
        api.serve_proxy(storage, host, port, console=err)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@user_errors
def status(
    storage: StorageOption = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Show only this study [default: all]")
    ] = None,
) -> None:
    """List the studies in a storage with their trial counts by state, best value, and the
    checkpoints their unfinished trials keep (with their size, for a local store); `!N`
    there counts trials that could not write a checkpoint (explained below the table)."""
    report = api.status(storage, study)
    print_table(report.table())
    for note in report.footnotes():
        out.print(note, markup=False, highlight=False, soft_wrap=True)


@user_errors
def best(
    study: StudyNameOption = None,
    storage: StorageOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines")] = False,
) -> None:
    """Print the best trial's parameters and metrics (the Pareto front if multi-objective)."""
    found = api.best(study, storage)
    if as_json:
        print_json(found.to_dict())
        return
    for data in found.tables():
        print_table(data)
