"""`lsearch bench` and `lsearch doctor`: this machine's speed, and whether it is ready."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from lsearch import api
from lsearch.cli.options import (
    DeviceOption,
    JsonOption,
    OverridesOption,
    StorageOption,
    StudyFileOption,
    err,
    out,
    user_errors,
)
from lsearch.cli.printing import print_json, print_lines, print_table, table


@user_errors
def bench(
    study: StudyFileOption = api.DEFAULT_STUDY,
    set_: OverridesOption = None,
    epochs: Annotated[int, typer.Option(help="Epochs to time (after one warm-up epoch)")] = 3,
    device: DeviceOption = "auto",
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="Random data of the study's shape, and random weights where the study's "
            "cannot be had offline: runs anywhere with no files and no network",
        ),
    ] = False,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also train the usual way (Dataset, per-sample transforms, DataLoader) and "
            "print lsearch's speed-up over it",
        ),
    ] = False,
    search: Annotated[
        bool,
        typer.Option(
            "--search",
            help="Instead, run the study's search with its pruner and with none, over several "
            "sampler seeds, and compare the work, the best values and the chosen configurations "
            "on the test set over 5 new seeds (in memory)",
        ),
    ] = False,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            help="Instead, time S seeds of the baseline configuration trained together (one "
            "grouped model) and one at a time, alternating, and print seed-epochs per second "
            "both ways and their ratio",
        ),
    ] = None,
    trials: Annotated[int, typer.Option(help="Trials per search, with --search")] = 100,
    sampler_seeds: Annotated[
        int, typer.Option(help="Sampler seeds (searches per arm), with --search")
    ] = 5,
    as_json: JsonOption = False,
) -> None:
    """Time one seed of the study's [baseline] configuration as a trial trains it: images
    per second for training and evaluation, seconds per epoch, that seed's peak memory, and
    what a --trials 100 search would take; then measure the memory a whole trial (every seed,
    the feature cache) holds, the figure to size workers by. Needs no storage (and, but for
    --search, no Optuna)."""
    if search:
        # Progress goes to stderr even with --json (whose object alone is on stdout): the
        # searches take many minutes.
        pruning = api.bench_pruning(
            study, set_, trials=trials, sampler_seeds=sampler_seeds, device=device, console=err
        )
        if as_json:
            out.print_json(json.dumps(pruning.to_dict(), allow_nan=False))
            return
        print_table(api.TableData(pruning.title, pruning.header(), pruning.rows()))
        out.print(pruning.conclusion(), highlight=False)
        return
    if seeds is not None:
        together = api.bench_seeds(
            study, set_, seeds=seeds, epochs=epochs, device=device, synthetic=synthetic,
            console=None if as_json else err,
        )  # fmt: skip
        if as_json:
            out.print_json(json.dumps(together.to_json(), allow_nan=False))
            return
        header = ["", "seed-epochs/s", "ms per seed-epoch"]
        print_table(api.TableData(together.title(), header, together.rows()))
        out.print(together.conclusion(), highlight=False)
        return
    speed = api.bench_speed(
        study, set_, epochs=epochs, device=device, synthetic=synthetic, baseline=baseline,
        console=None if as_json else err,
    )  # fmt: skip
    if as_json:
        out.print_json(json.dumps(speed.to_dict(), allow_nan=False))
        return
    print_table(speed.table())
    print_lines(speed.lines())
    for note in speed.result.notes:
        err.print(f"note: {note}", highlight=False)


@user_errors
def doctor(
    study: StudyFileOption = api.DEFAULT_STUDY,
    set_: OverridesOption = None,
    storage: StorageOption = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or cuda:N: the device to check and train on")
    ] = "auto",
    train: Annotated[
        bool,
        typer.Option(
            "--train/--no-train",
            help="Train one synthetic epoch of the study's model to time it (random data, "
            "nothing downloaded)",
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Check this machine before a long search: torch and CUDA, each GPU and the precision
    lsearch trains in there, the storage (reachable, writable), the study's data and
    weights, and one synthetic training epoch. Changes nothing; exit code 1 if a check
    failed."""
    checkup = api.doctor(
        study, set_, storage=storage, device=device, train=train,
        console=None if as_json else err,
    )  # fmt: skip
    if as_json:
        print_json(checkup.to_dict())
    else:
        styles = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        data = api.TableData(f"lsearch doctor: {checkup.study}", ["check", "status", "detail"],
                             [], left=3)  # fmt: skip
        drawn = table(data)
        for check in checkup.checks:
            drawn.add_row(check.name, Text(check.status, styles[check.status]), Text(check.detail))
        out.print(drawn)
        out.print(checkup.verdict(), highlight=False)
    if not checkup.ok:
        raise typer.Exit(1)
