"""The `lsearch` command: parse, call, print. No logic of its own."""

from __future__ import annotations

import functools
import json
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from lsearch.errors import UserError

app = typer.Typer(
    help="Hyperparameter search for label smoothing: accuracy and calibration over seeds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal rich assumes 80 columns and would cut table cells; give tables room.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

F = TypeVar("F", bound=Callable[..., Any])

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="SQLAlchemy URL of the study storage [default: $LSEARCH_STORAGE or sqlite:///lsearch.db]",
        show_default=False,
    ),
]
StudyFileOption = Annotated[
    str,
    typer.Option(
        "--study", help="Study file: a path, or a bundled name (digits, cifar10-resnet18)"
    ),
]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a study-file value: key=value, dotted, repeatable"),
]
StudyNameOption = Annotated[
    str | None,
    typer.Option("--study", help="Study name [default: the only study in the storage]"),
]


def user_errors(command: F) -> F:
    """Turn a UserError into one line on stderr and exit code 2, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def quiet_libraries() -> None:
    import optuna

    # Optuna logs every failed trial with a traceback; lsearch prints one line per failure.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


@app.command()
@user_errors
def run(
    study: StudyFileOption = "digits",
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
    from lsearch import interrupts
    from lsearch.outputs.live import SearchProgress, summary_table
    from lsearch.search.launch import prepare_search
    from lsearch.search.loop import run_until
    from lsearch.search.objective import SearchObjective
    from lsearch.search.study import count_finished
    from lsearch.search.workers import start_workers, wait_for
    from lsearch.store.storage import mask_url, resolve_url
    from lsearch.training.devices import parse_gpus, worker_device

    if trials < 1:
        raise UserError(
            f"--trials must be at least 1 (got {trials}): "
            "it is the study's total of finished trials"
        )
    if timeout is not None and timeout <= 0:
        raise UserError(f"--timeout must be a positive number of seconds (got {timeout:g})")
    gpu_list = parse_gpus(gpus)
    if workers is None:
        workers = len(gpu_list) or 1
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    device = worker_device(device, gpu_list)
    overrides = list(set_ or [])
    if heartbeat_interval is not None:
        overrides.append(f"storage.heartbeat_interval={heartbeat_interval}")
    if grace_period is not None:
        overrides.append(f"storage.grace_period={grace_period}")
    if artifacts is not None:
        overrides.append(f"checkpoint.location={json.dumps(artifacts)}")
    quiet_libraries()
    url = resolve_url(storage)
    supervises = workers > 1 or bool(gpu_list)
    prepared = prepare_search(study, overrides, url, device, name, not supervises, threads)
    spec, found = prepared.spec, prepared.study
    done = count_finished(found)
    if not quiet:
        err.print(
            f"study [bold]{found.study_name}[/] in {mask_url(url)}: {done} of {trials} trials "
            f"finished, {len(spec.seeds)} seeds each, on {prepared.device}"
            + (f", {workers} workers" if supervises else ""),
            highlight=False,
        )
        if len(spec.objective.directions) > 1 and spec.pruner.type != "none":
            err.print("note: Optuna cannot prune a multi-objective study; pruning is off")
    console = err if not quiet else Console(stderr=True, quiet=True)
    with (
        interrupts.handling_signals(),
        SearchProgress(console, trials, done, spec.objective.metric) as progress,
    ):
        try:
            if supervises:
                run_args = ["run", "--study", study, "--trials", str(trials), "--device", device]
                for override in overrides:
                    run_args += ["--set", override]
                if timeout is not None:
                    run_args += ["--timeout", str(timeout)]
                if name is not None:
                    run_args += ["--name", name]
                if threads is not None:
                    run_args += ["--threads", str(threads)]
                started = start_workers(workers, run_args, gpu_list, url, stagger_s=0.5)
                codes = wait_for(started, lambda: progress.poll(found))
                if interrupts.requested() in ("SIGINT", "SIGTERM"):
                    raise interrupts.Interrupted(str(interrupts.requested()))
                if any(codes):
                    err.print(f"worker exit codes: {codes}")
            else:
                objective = SearchObjective(
                    spec,
                    prepared.pool,
                    prepared.device,
                    on_epoch=progress.on_epoch,
                    checkpoints=prepared.checkpoints,
                    cores=prepared.cores,
                )
                run_until(
                    found,
                    objective,
                    trials,
                    timeout,
                    callbacks=[progress.on_trial],
                    liveness=prepared.liveness,
                    on_wait=progress.poll,
                )
        except interrupts.Interrupted as exc:
            _report_interrupt(exc, "the study")
            if exc.reason != "timeout":
                raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            err.print("interrupted: run the same command again to continue the study")
            raise typer.Exit(130) from None
    if quiet:
        return
    out.print(summary_table(found))
    finished = count_finished(found)
    if finished < trials:
        err.print(f"{finished} of {trials} trials finished; run the same command again to continue")


def _report_interrupt(exc: Any, what: str) -> None:
    """One line on what an interrupt did to the trial in flight."""
    stopped = "--timeout passed" if exc.reason == "timeout" else f"{exc.reason} received"
    if exc.handed_back_as is not None:
        err.print(
            f"{stopped}: trial {exc.trial_number} was stopped and handed back as trial "
            f"{exc.handed_back_as}; run the same command again to resume it from its last "
            f"finished epoch and continue {what}",
            highlight=False,
        )
    else:
        err.print(f"{stopped}: run the same command again to continue {what}", highlight=False)


@app.command()
@user_errors
def proxy(
    storage: StorageOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 13000,
) -> None:
    """Serve a storage to many workers through Optuna's gRPC proxy (workers use
    --storage grpc://HOST:PORT). The proxy also fails and re-queues the trials of workers
    that stopped beating, like the workers themselves do: see README."""
    import threading

    from optuna.storages import run_grpc_proxy_server

    from lsearch.search.launch import watch_stale_trials
    from lsearch.store.storage import mask_url, open_storage, resolve_url

    quiet_libraries()
    url = resolve_url(storage)
    if url.startswith("grpc://"):
        raise UserError("lsearch proxy serves a database URL, not another proxy")
    backend = open_storage(url)
    err.print(f"serving {mask_url(url)} on grpc://{host}:{port}", highlight=False)
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_stale_trials, args=(backend, stop), name="lsearch-sweep", daemon=True
    )
    watcher.start()
    try:
        run_grpc_proxy_server(backend, host=host, port=port)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    finally:
        stop.set()


@app.command()
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
    from lsearch.outputs.results import STATES, pick_study, study_rows
    from lsearch.store.storage import mask_url, open_storage, resolve_url

    quiet_libraries()
    url = resolve_url(storage)
    opened = open_storage(url, must_exist=True)
    if study is not None:
        pick_study(opened, study)  # a name that is not there is a user error
    rows = [row for row in study_rows(opened) if study is None or row.name == study]
    table = Table(title=f"studies in {mask_url(url)}")
    columns = ("study", "kind", "direction", *(s.lower() for s in STATES), "best", "checkpoints")
    for column in columns:
        table.add_column(column, justify="left" if column in ("study", "kind") else "right")
    for row in rows:
        best = "-" if row.best is None else ", ".join(f"{v:.4f}" for v in row.best)
        space = ""
        if row.checkpoints and row.checkpoint_bytes is not None:
            space = f" ({row.checkpoint_bytes / 1e6:.1f} MB)"
        warned = f" !{row.checkpoint_warnings}" if row.checkpoint_warnings else ""
        table.add_row(
            row.name,
            row.kind,
            ", ".join(row.directions),
            *(str(row.counts[s]) for s in STATES),
            best,
            f"{row.checkpoints}{space}{warned}",
        )
    out.print(table)
    for row in rows:
        if row.checkpoint_warnings:
            out.print(
                f"!{row.checkpoint_warnings}: {row.checkpoint_warnings} trial(s) of {row.name} "
                f"could not write a checkpoint, so ran without crash protection then (user "
                f"attr checkpoint_warning; first: {row.checkpoint_warning})",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip


@app.command()
@user_errors
def best(
    study: StudyNameOption = None,
    storage: StorageOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines")] = False,
) -> None:
    """Print the best trial's parameters and metrics (the Pareto front if multi-objective)."""
    from lsearch.outputs.results import best_trials, pick_study, trial_summary
    from lsearch.store.storage import open_storage, resolve_url

    quiet_libraries()
    found = pick_study(open_storage(resolve_url(storage), must_exist=True), study)
    summaries = [trial_summary(t) for t in best_trials(found)]
    if as_json:
        payload: Any = summaries[0] if len(summaries) == 1 else summaries
        sys.stdout.write(json.dumps({"study": found.study_name, "best": payload}, indent=2) + "\n")
        return
    for summary in summaries:
        table = Table(
            title=f"study {found.study_name}: best trial {summary['number']}", show_header=False
        )
        table.add_column("key")
        table.add_column("value")
        for key, value in summary["params"].items():
            table.add_row(key, f"{value:g}" if isinstance(value, float) else str(value))
        for key, value in summary.items():
            if key not in ("params", "number"):
                table.add_row(key, _show(value))
        out.print(table)


SeedsOption = Annotated[
    str | None,
    typer.Option(help="Seeds, e.g. 0-4 or 0,3,7 [default: see the command's help]"),
]
MetricOption = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        help="Metric to report, repeatable [default: val_acc val_ece test_acc test_ece "
        "test_ece_ts test_nll; also val_nll test_nll_ts test_brier test_ace]",
    ),
]
DeviceOption = Annotated[
    str, typer.Option(help="auto, cpu, cuda, cuda:N, or cuda:free (the least-shared GPU)")
]
WorkersOption = Annotated[
    int, typer.Option(help="Worker processes to start on this machine, sharing the seed-runs")
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="CPU threads per worker [default: the cores divided among the lsearch workers "
        "running on this machine]"
    ),
]
OutputOptions = tuple[bool, bool, bool]


@app.command()
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
    ] = "digits",
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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print Markdown tables")] = False,
    quiet: Annotated[bool, typer.Option(help="Train only; print nothing but errors")] = False,
) -> None:
    """Train a full factorial grid on shared seeds, evaluate every seed on the held-out test
    set, and compare the cells pairwise with intervals and p-values.

    Seeds default to the study file's seeds, or with --from-best to fresh ones.
    """
    from lsearch.comparison.compare import comparison_request
    from lsearch.spec import load_spec
    from lsearch.store.storage import open_storage, resolve_url
    from lsearch.training.models import layer_group_count

    quiet_libraries()
    url = resolve_url(storage)
    spec = load_spec(study, list(set_ or []))
    groups = layer_group_count(spec.model)
    # Only --from-best reads the storage now; nothing is created before every input is checked.
    read_only = open_storage(url, must_exist=True) if from_best else None
    request = comparison_request(
        spec, read_only, grid or [], groups, seeds, from_best, name, metric or []
    )
    args = ["compare", "--study", study, "--name", request.name, "--device", device]
    for override in set_ or []:
        args += ["--set", override]
    for text in grid or []:
        args += ["--grid", text]
    args += ["--seeds", ",".join(map(str, request.seeds))]
    if from_best:
        args.append("--from-best")
    output = (dry_run, as_json, markdown)
    _run_comparison(request, url, (device, threads), workers, args, output, quiet)


@app.command()
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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what is left to train; train nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print Markdown tables")] = False,
    quiet: Annotated[bool, typer.Option(help="Train only; print nothing but errors")] = False,
) -> None:
    """Train one configuration of a search (its best trial by default) on fresh seeds and
    record its held-out test metrics: a one-cell comparison."""
    from lsearch.comparison.compare import evaluation_request
    from lsearch.store.storage import open_storage, resolve_url

    quiet_libraries()
    url = resolve_url(storage)
    read_only = open_storage(url, must_exist=True)
    request = evaluation_request(read_only, study, trial, seeds, name, metric or [])
    args = ["evaluate", "--study", request.search_study, "--name", request.name]
    args += ["--device", device, "--seeds", ",".join(map(str, request.seeds))]
    if trial is not None:
        args += ["--trial", str(trial)]
    output = (dry_run, as_json, markdown)
    _run_comparison(request, url, (device, threads), workers, args, output, quiet)


def _run_comparison(
    request: Any,
    url: str,
    device_threads: tuple[str, int | None],
    workers: int,
    worker_args: list[str],
    output: OutputOptions,
    quiet: bool,
) -> None:
    """Check inputs, train what is missing (here or in workers), print the comparison."""
    import torch

    from lsearch import interrupts
    from lsearch.comparison import compare
    from lsearch.outputs.live import SeedRunProgress
    from lsearch.search.launch import check_and_load, open_spec_storage
    from lsearch.search.study import register_worker
    from lsearch.search.workers import start_workers, wait_for
    from lsearch.store.storage import mask_url, open_storage
    from lsearch.training.data import load_test_set
    from lsearch.training.devices import describe_device

    dry_run, as_json, markdown = output
    device_name, threads = device_threads
    if threads is not None:
        worker_args = [*worker_args, "--threads", str(threads)]
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    spec = request.spec
    if dry_run:
        try:
            existing = compare.existing_comparison(open_storage(url, must_exist=True), request.name)
        except UserError:  # no database yet: everything is still to train
            existing = None
        _print_plan(request, existing, compare.seconds_per_seed_epoch(url, request), mask_url(url))
        return
    device, pool, cores = check_and_load(spec, device_name, workers == 1, threads)
    test_set = load_test_set(spec.data, device if workers == 1 else torch.device("cpu"))
    storage, liveness = open_spec_storage(spec, url)
    found = compare.open_comparison(
        storage, request.name, spec, request.search_study, describe_device(device)
    )
    if not quiet:
        for note in request.notes:
            err.print(note, highlight=False, markup=False)
        pending = compare.pending_plans(request, found)
        err.print(
            f"comparison [bold]{request.name}[/] in {mask_url(url)}: {len(request.cells)} cells "
            f"x {len(request.seeds)} seeds, {len(pending)} seed-runs to train on {device}",
            highlight=False,
        )
    console = err if not quiet else Console(stderr=True, quiet=True)
    total = len(compare.pending_plans(request, found))
    with interrupts.handling_signals(), SeedRunProgress(console, total) as progress:
        try:
            if workers > 1:
                started = start_workers(workers, worker_args, [], url, stagger_s=0.5)
                codes = wait_for(started, lambda: progress.poll(found))
                if any(codes):
                    err.print(f"worker exit codes: {codes}")
            else:
                index = register_worker(storage, request.name)
                compare.train_pending(
                    request, found, (pool, test_set), device, liveness, index, progress, cores
                )
        except interrupts.Interrupted as exc:
            _report_interrupt(exc, "the comparison")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            err.print("interrupted: run the same command again to train what is missing")
            raise typer.Exit(130) from None
    if quiet:
        return
    compare.record_test_use(storage, request, found)
    result = compare.summarise(request, found)
    # The figures and verdicts go into the studies too, for optuna-dashboard.
    from lsearch.outputs.html_report import publish

    publish(storage, request.search_study)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif markdown:
        from lsearch.analysis.verdict import to_markdown

        sys.stdout.write(to_markdown(result))
    else:
        _print_report(result, request.notes)


def _print_plan(request: Any, existing: Any, per_epoch: float | None, shown_url: str) -> None:
    from dataclasses import asdict

    from lsearch.comparison import compare

    plans = compare.pending_plans(request, existing)
    for note in request.notes:
        err.print(note, highlight=False, markup=False)
    table = Table(title=f"comparison {request.name} in {shown_url}: {len(request.cells)} cells")
    for column in ("cell", "ε", "epochs", "lr", "layers"):
        table.add_column(column, justify="left" if column == "cell" else "right")
    for cell in request.cells:
        c = cell.config
        table.add_row(
            cell.label,
            f"{c.label_smoothing:g}",
            str(c.epochs),
            f"{c.lr:g}",
            str(c.trainable_layers),
        )
    out.print(table)
    epochs = sum(plan.config.epochs for plan in plans)
    estimate = (
        "unknown (no trial of this study has been timed yet)"
        if per_epoch is None
        else f"at most about {epochs * per_epoch:.0f} s ({per_epoch:.2f} s per seed-epoch as "
        "measured in this storage; early stopping ends runs sooner)"
    )
    out.print(
        f"seeds {', '.join(map(str, request.seeds))}; {len(plans)} seed-runs to train "
        f"({epochs} seed-epochs at most); estimated time {estimate}",
        highlight=False,
    )
    for plan in plans:
        extra = (
            f" (also read at {', '.join(map(str, plan.test_at))} epochs)" if plan.test_at else ""
        )
        out.print(
            f"  {compare.describe(asdict(plan.config))}, seed {plan.seed}{extra}", highlight=False
        )


def _print_report(result: dict[str, Any], shown_notes: tuple[str, ...]) -> None:
    from lsearch.analysis.verdict import LABELS, show, show_interval, show_level

    metrics = result["metrics"]
    for note in result["notes"][len(shown_notes) :]:  # the request's notes came first
        err.print(note, highlight=False, markup=False)
    table = Table(title=f"{result['study']}: mean [95 % CI] over seeds")
    table.add_column("cell")
    table.add_column("n", justify="right")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for cell in result["cells"]:
        row = [cell["label"], str(len(cell["seeds"]))]
        for metric in metrics:
            s = cell["metrics"][metric]
            row.append("-" if s is None else show_level(metric, s).replace(" [", "\n["))
        table.add_row(*row)
    out.print(table)
    cells = result["cells"]
    for metric in metrics:
        pairs = [p for p in result["comparisons"][metric] if p["n"]]
        if not pairs:
            continue
        notes = {p["wilcoxon_note"] for p in pairs if p["wilcoxon_note"]}
        table = Table(
            title=f"{LABELS[metric]}: paired differences (first − second)",
            caption="Wilcoxon: " + "; ".join(sorted(notes)) if notes else None,
        )
        for column in (
            "first",
            "second",
            "n",
            "diff [95 % t]",
            "bootstrap",
            "p",
            "p Holm",
            "p Wilcoxon",
            "wins",
            "seeds 80 %",
        ):
            table.add_column(column, justify="left" if column in ("first", "second") else "right")
        for pair in pairs:
            table.add_row(
                cells[pair["first"]]["label"],
                cells[pair["second"]]["label"],
                str(pair["n"]),
                f"{show(metric, pair['mean'], True)} {show_interval(metric, pair['ci'])}",
                show_interval(metric, pair["bootstrap_ci"]),
                "-" if pair["t_pvalue"] is None else f"{pair['t_pvalue']:.3g}",
                "-" if pair["t_pvalue_holm"] is None else f"{pair['t_pvalue_holm']:.3g}",
                "-" if pair["wilcoxon_pvalue"] is None else f"{pair['wilcoxon_pvalue']:.3g}",
                f"{pair['wins']:.2f}",
                "-" if pair["seeds_needed"] is None else str(pair["seeds_needed"]),
            )
        out.print(table)
    if result["verdicts"]:
        out.print("[bold]verdicts[/]")
        for verdict in result["verdicts"]:
            out.print(f"- {verdict}", highlight=False, markup=False)


@app.command()
@user_errors
def export(
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="Output format: csv or json (required)", show_default=False),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option("--study", help="Study name [default: the only search study in the storage]"),
    ] = None,
    storage: StorageOption = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Write to this file, atomically [default: standard output]"
        ),
    ] = None,
) -> None:
    """Export a study as one row per trial and seed: parameters, seed and every per-seed
    metric, as CSV or JSON (columns: see lsearch/export.py)."""
    from pathlib import Path

    from lsearch.outputs.export import check_format, export_rows, render, write_atomic
    from lsearch.outputs.results import pick_study
    from lsearch.store.storage import open_storage, resolve_url

    fmt = check_format(fmt)
    quiet_libraries()
    found = pick_study(open_storage(resolve_url(storage), must_exist=True), study)
    columns, rows = export_rows(found.study_name, found.get_trials(deepcopy=False))
    text = render(fmt, columns, rows)
    if output is None:
        sys.stdout.write(text)
        return
    write_atomic(Path(output), text)
    err.print(f"wrote {len(rows)} rows to {output}", highlight=False, markup=False)


@app.command()
@user_errors
def dashboard(
    storage: StorageOption = None,
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; any but loopback exposes it (it has no login)"),
    ] = "127.0.0.1",
    artifacts: Annotated[
        str,
        typer.Option(help="Checkpoint store to list kept checkpoints from: folder, s3://, gs://"),
    ] = "artifacts",
) -> None:
    """Serve optuna-dashboard for a storage, with its kept checkpoints, on 127.0.0.1:8080.
    Ctrl-C stops it."""
    from lsearch.outputs.dashboard import exposure_warning, is_loopback, open_dashboard, url_of
    from lsearch.store.storage import mask_url, resolve_url

    try:
        quiet_libraries()
        url = resolve_url(storage)
        server = open_dashboard(url, host=host, port=port, artifacts=artifacts)
        try:
            if not is_loopback(host):
                warning = exposure_warning(host, server.server_address[1])
                err.print(warning, highlight=False, markup=False, soft_wrap=True)
            err.print(
                f"serving {mask_url(url)} on {url_of(server)} (Ctrl-C to stop)",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            server.serve_forever()
        finally:
            server.server_close()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
@user_errors
def report(
    study: StudyNameOption = None,
    storage: StorageOption = None,
    output: Annotated[
        str, typer.Option("-o", "--output", help="HTML file, or folder for --format png/svg")
    ] = "report.html",
    image_format: Annotated[
        str, typer.Option("--format", help="html (one self-contained file), png or svg")
    ] = "html",
) -> None:
    """Draw a search and its comparisons: one self-contained HTML file (plotly.js embedded,
    opens offline), and the same figures and verdicts stored in the studies for
    optuna-dashboard."""
    from pathlib import Path

    from lsearch.outputs import html_report as reporting
    from lsearch.outputs.export import write_atomic
    from lsearch.outputs.results import pick_study
    from lsearch.store.storage import open_storage, resolve_url

    if image_format not in ("html", "png", "svg"):
        raise UserError(f"--format {image_format!r}: use html, png or svg")
    quiet_libraries()
    opened = open_storage(resolve_url(storage), must_exist=True)
    search = pick_study(opened, study, search_only=True)
    sections, verdicts = reporting.publish(opened, search.study_name)
    if not sections:
        raise UserError(f"study '{search.study_name}' has nothing to report yet; run it first")
    target = Path(output)
    if image_format == "html":
        write_atomic(target, reporting.render_html(search, sections))
        figures = sum(len(section.figures) for section in sections)
        err.print(
            f"wrote {target} ({figures} figures, {len(verdicts)} verdicts; opens offline); "
            "figures and verdicts also stored in the studies for optuna-dashboard",
            highlight=False,
        )
    else:
        written = reporting.write_images(target, sections, image_format)
        err.print(f"wrote {len(written)} {image_format} files to {target}/", highlight=False)


@app.command()
@user_errors
def bench(
    study: StudyFileOption = "digits",
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
    trials: Annotated[int, typer.Option(help="Trials per search, with --search")] = 100,
    sampler_seeds: Annotated[
        int, typer.Option(help="Sampler seeds (searches per arm), with --search")
    ] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Time one seed of the study's [baseline] configuration as a trial trains it: images
    per second for training and evaluation, seconds per epoch, that seed's peak memory, and
    what a --trials 100 search would take; then measure the memory a whole trial (every seed,
    the feature cache) holds, the figure to size workers by. Needs no storage (and, but for
    --search, no Optuna)."""
    from lsearch.bench import speed as benchmark
    from lsearch.spec import load_spec
    from lsearch.training.devices import resolve_device, set_determinism

    spec = load_spec(study, list(set_ or []))
    chosen = resolve_device(device)
    set_determinism(chosen, spec.train.deterministic)
    if search:
        _bench_search(spec, chosen, trials, sampler_seeds, as_json)
        return
    if not as_json:
        err.print(
            f"timing {spec.name} ({spec.model.name}) on {benchmark.describe_device(chosen)}: "
            f"{epochs} epochs after a warm-up" + (", then the usual way" if baseline else ""),
            highlight=False,
        )
    result = benchmark.measure_speed(spec, chosen, epochs, synthetic, baseline)
    seeds, mean_epochs = len(spec.seeds), benchmark.mean_epochs(spec)
    if as_json:
        out.print_json(json.dumps(result.to_json(seeds, mean_epochs), allow_nan=False))
        return
    table = Table(title=f"{result.study}: {result.model} at {result.image_size} px, "
                  f"{result.trainable_layers} trainable layer groups, {result.device}")  # fmt: skip
    # One seed's peak: torch's allocated memory on CUDA, the process's on the CPU.
    peak = "1-seed peak alloc. MB" if chosen.type == "cuda" else "peak RSS MB"
    for column in ("", "train img/s", "eval img/s", "s/epoch", peak):
        table.add_column(column, justify="right")
    rows = [("lsearch", result.lsearch)]
    if result.baseline is not None:
        rows.append(("usual way", result.baseline))
    for label, speed in rows:
        table.add_row(
            label, f"{speed.train_images_per_s:,.0f}", f"{speed.eval_images_per_s:,.0f}",
            f"{speed.seconds_per_epoch:.3f}", f"{speed.peak_memory_mb:,.0f}",
        )  # fmt: skip
    out.print(table)
    if result.speedup is not None:
        out.print(f"lsearch trains {result.speedup:.1f}x the images per second of the usual way")
    if result.trial_memory is not None:
        _print_trial_memory(result.trial_memory)
    minutes = result.search_estimate_s(seeds, mean_epochs) / 60
    out.print(
        f"a --trials 100 search ({seeds} seeds, {mean_epochs:g} epochs on average) would take "
        f"at most {minutes:,.1f} min here with no trial pruned",
        highlight=False,
    )
    for note in result.notes:
        err.print(f"note: {note}", highlight=False)


def _print_trial_memory(memory: Any) -> None:
    """The whole trial's memory, led by the figure to size workers by."""
    cache = memory.feature_cache
    cached = (
        f"feature cache {memory.feature_cache_mb:,.1f} MB ({cache['hits']} hits, "
        f"{cache['misses']} misses; budget {cache['budget']})"
    )
    if memory.peak_reserved_mb is None:
        out.print(
            f"a whole trial ({memory.seeds} seeds) peaked at {memory.per_worker_mb:,.0f} MB of "
            f"process memory (peak RSS): size workers per machine by this; {cached}",
            highlight=False,
        )
        return
    out.print(
        f"a whole trial ({memory.seeds} seeds) needs {memory.per_worker_mb:,.0f} MB of the GPU: "
        f"size workers per GPU by this (peak reserved {memory.peak_reserved_mb:,.0f} MB + the "
        f"CUDA context); peak allocated {memory.peak_allocated_mb:,.0f} MB; device used "
        f"{memory.device_used_mb:,.0f} MB (context and other processes included); {cached}",
        highlight=False,
    )


def _bench_search(spec: Any, device: Any, trials: int, sampler_seeds: int, as_json: bool) -> None:
    from lsearch.bench import speed as benchmark

    if trials < 1 or sampler_seeds < 1:
        raise UserError("--trials and --sampler-seeds must be at least 1")
    quiet_libraries()
    # Progress goes to stderr even with --json (whose object alone is on stdout): the
    # searches take many minutes.
    err.print(
        f"{sampler_seeds} sampler seeds x (pruned, unpruned) searches of {trials} trials "
        f"of {spec.name} on {benchmark.describe_device(device)}",
        highlight=False,
    )

    def on_run(run: Any) -> None:
        err.print(
            f"  sampler seed {run.sampler_seed}, {'pruned' if run.pruned else 'unpruned'}: "
            f"{run.seed_epochs} seed-epochs, {run.wall_s:.0f} s, best {run.best_value:.4f}, "
            f"its configuration on the test set {run.test_value:.4f}",
            highlight=False,
        )

    test_seeds = 5
    runs = benchmark.bench_search(spec, device, trials, sampler_seeds, on_run, test_seeds)
    summary = benchmark.summarise_search(runs)
    if as_json:
        summary["runs"] = [asdict(run) for run in runs]
        out.print_json(json.dumps(summary, allow_nan=False))
        return
    table = Table(title=f"{spec.name}: {trials} trials, median \\[min, max] over "
                  f"{sampler_seeds} sampler seeds")  # fmt: skip
    columns = (("seed_epochs", "seed-epochs", ",.0f"), ("wall_s", "wall s", ".0f"),
               ("best_value", "best value", ".4f"),
               ("test_value", f"best config, test ({test_seeds} new seeds)", ".4f"))  # fmt: skip
    table.add_column("")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for arm in ("pruned", "unpruned"):
        row = summary[arm]
        table.add_row(arm, *(
            f"{row[k]['median']:{fmt}} [{row[k]['min']:{fmt}}, {row[k]['max']:{fmt}}]"
            for k, _, fmt in columns
        ))  # fmt: skip
    out.print(table)

    def pp(diff: dict[str, float]) -> str:
        return (f"{diff['median'] * 100:+.2f} pp [{diff['min'] * 100:+.2f}, "
                f"{diff['max'] * 100:+.2f}]")  # fmt: skip

    share = summary["work_share"]
    out.print(
        f"pruning trained {share['median']:.0%} of the unpruned seed-epochs "
        f"[{share['min']:.0%}, {share['max']:.0%}]; pruned minus unpruned, paired by sampler "
        f"seed: best value {pp(summary['best_value_difference'])}, its configuration on the "
        f"test set {pp(summary['test_value_difference'])}",
        highlight=False,
    )


@app.command()
@user_errors
def doctor(
    study: StudyFileOption = "digits",
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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Check this machine before a long search: torch and CUDA, each GPU and the precision
    lsearch trains in there, the storage (reachable, writable), the study's data and
    weights, and one synthetic training epoch. Changes nothing; exit code 1 if a check
    failed."""
    from rich.text import Text

    from lsearch import doctor as checkup
    from lsearch.spec import load_spec
    from lsearch.store.storage import resolve_url

    spec = load_spec(study, list(set_ or []))
    checkup.parse_device(device)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    if train and not as_json:
        err.print(f"checking {spec.name}; training one synthetic epoch last", highlight=False)
    checks = checkup.run_checks(spec, resolve_url(storage), device, train)
    ok = checkup.passed(checks)
    if as_json:
        payload = {"checks": [check.to_json() for check in checks], "ok": ok}
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        styles = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        table = Table(title=f"lsearch doctor: {spec.name}")
        for column in ("check", "status", "detail"):
            table.add_column(column)
        for check in checks:
            table.add_row(check.name, Text(check.status, styles[check.status]), Text(check.detail))
        out.print(table)
        counts = {s: sum(c.status == s for c in checks) for s in ("fail", "warn")}
        failed = f"{counts['fail']} check{'s' * (counts['fail'] != 1)} failed"
        warned = (
            f" ({counts['warn']} warning{'s' * (counts['warn'] != 1)})" if counts["warn"] else ""
        )
        out.print(("ready" if ok else failed) + warned, highlight=False)
    if not ok:
        raise typer.Exit(1)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
