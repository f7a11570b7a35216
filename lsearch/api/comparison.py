"""Comparisons and evaluations: check the request, train what is missing (here or in
worker processes), record the test-set use, summarise once, and publish."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lsearch.api.common import DEFAULT_STUDY, at_least, quiet_libraries, silent, worker_args
from lsearch.api.results import ComparisonPlan, ComparisonResult, PlannedRun
from lsearch.api.studyfile import Overrides, load_with_texts
from lsearch.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from lsearch.comparison import Request

Grid = Mapping[str, Sequence[float | int]] | Sequence[str]
Seeds = str | Sequence[int] | None


@dataclass(frozen=True)
class Job:
    """A checked comparison request, its storage, and the command line of its workers."""

    request: Request
    url: str
    device: str
    workers: int
    threads: int | None
    args: list[str]


def _grid_texts(grid: Grid | None) -> list[str]:
    if grid is None:
        return []
    if isinstance(grid, Mapping):
        return [f"{factor}={','.join(map(str, levels))}" for factor, levels in grid.items()]
    return [str(text) for text in grid]


def _seeds_text(seeds: Seeds) -> str | None:
    if seeds is None or isinstance(seeds, str):
        return seeds
    return ",".join(str(seed) for seed in seeds)


def comparison_job(
    grid: Grid | None, study: str = DEFAULT_STUDY, overrides: Overrides = None, *,
    seeds: Seeds = None, from_best: bool = False, metrics: Sequence[str] | None = None,
    storage: str | None = None, name: str | None = None, device: str = "auto",
    workers: int = 1, threads: int | None = None, max_seeds: int = 30,
    margin: float | None = None, decide_on: Sequence[str] | None = None,
) -> Job:  # fmt: skip
    """Check every input of a comparison before anything is created (``seeds="auto"``
    races; ``max_seeds``, ``margin`` and ``decide_on`` are the race's)."""
    from lsearch.comparison import comparison_request
    from lsearch.comparison.request import RaceOptions
    from lsearch.store.storage import open_storage, resolve_url
    from lsearch.training.models import layer_group_count

    at_least("--workers", workers, 1)
    at_least("--threads", threads, 1)
    quiet_libraries()
    url = resolve_url(storage)
    spec, texts = load_with_texts(study, overrides)
    # Only --from-best reads the storage now; nothing is created before every input is checked.
    read_only = open_storage(url, must_exist=True) if from_best else None
    grid_texts = _grid_texts(grid)
    options = RaceOptions(max_seeds, margin, tuple(decide_on or ()))
    request = comparison_request(
        spec, read_only, grid_texts, layer_group_count(spec.model), _seeds_text(seeds),
        from_best, name, list(metrics or []), options,
    )  # fmt: skip
    race = request.race
    args = worker_args(
        "compare", study=study, name=request.name, device=device, set=texts, grid=grid_texts,
        seeds="auto" if race else ",".join(map(str, request.seeds)), from_best=from_best,
        threads=threads, max_seeds=race and race.max_seeds, margin=race and race.margin,
        decide_on=list(race.decide_on) if race else None,
    )  # fmt: skip
    return Job(request, url, device, workers, threads, args)


def evaluation_job(
    study: str | None = None, trial: int | None = None, *, seeds: Seeds = None,
    metrics: Sequence[str] | None = None, storage: str | None = None, name: str | None = None,
    device: str = "auto", workers: int = 1, threads: int | None = None,
) -> Job:  # fmt: skip
    """Check every input of an evaluation (a one-cell comparison) before anything is made."""
    from lsearch.comparison import evaluation_request
    from lsearch.store.storage import open_storage, resolve_url

    at_least("--workers", workers, 1)
    at_least("--threads", threads, 1)
    quiet_libraries()
    url = resolve_url(storage)
    read_only = open_storage(url, must_exist=True)
    request = evaluation_request(
        read_only, study, trial, _seeds_text(seeds), name, list(metrics or [])
    )
    args = worker_args(
        "evaluate", study=request.search_study, name=request.name, device=device,
        seeds=",".join(map(str, request.seeds)), trial=trial, threads=threads,
    )  # fmt: skip
    return Job(request, url, device, workers, threads, args)


def plan(job: Job) -> ComparisonPlan:
    """What the comparison would train (``--dry-run``): reads, creates nothing."""
    from lsearch.comparison import existing_comparison, pending_plans, seconds_per_seed_epoch
    from lsearch.comparison.race import check_identity, race_start
    from lsearch.store.storage import mask_url, open_storage

    request = job.request
    try:
        existing = existing_comparison(open_storage(job.url, must_exist=True), request.name)
    except UserError:  # no database yet: everything is still to train
        existing = None
    if existing is not None:
        check_identity(existing, request, record=False)
    pending = [
        PlannedRun(asdict(p.config), p.seed, tuple(p.test_at))
        for p in pending_plans(request, existing)
    ]
    return ComparisonPlan(
        request.name, mask_url(job.url), request.notes,
        [(cell.label, asdict(cell.config)) for cell in request.cells], list(request.seeds),
        pending, seconds_per_seed_epoch(job.url, request),
        None if request.race is None else race_start(request),
    )  # fmt: skip


def carry_out(
    job: Job, console: Console | None = None, train_only: bool = False
) -> ComparisonResult | None:
    """Train what the comparison is missing (here, or in `job.workers` worker processes),
    then, unless `train_only` (a worker's part), record the test-set use, summarise the
    comparison once, and store its figures and verdicts for optuna-dashboard."""
    import torch

    from lsearch import comparison
    from lsearch.comparison.race import check_identity
    from lsearch.search.launch import check_and_load, open_spec_storage
    from lsearch.training.data import load_test_set
    from lsearch.training.devices import describe_device

    console = console or silent()
    request, here = job.request, job.workers == 1
    device, pool, cores = check_and_load(request.spec, job.device, here, job.threads)
    try:  # the process's share of the cores ends with the call (see CoreShare)
        test_set = load_test_set(request.spec.data, device if here else torch.device("cpu"))
        storage, liveness = open_spec_storage(request.spec, job.url)
        found = comparison.open_comparison(
            storage, request.name, request.spec, request.search_study, describe_device(device)
        )
        check_identity(found, request)
        _train(job, (storage, found, liveness), (device, pool, test_set, cores), console)
        if train_only:
            return None
        comparison.record_test_use(storage, request, found)
        summary = comparison.summarise(request, found)
        # The figures and verdicts go into the studies too, for optuna-dashboard.
        from lsearch.outputs.html_report import publish  # plotly: not needed to train

        publish(storage, request.search_study, summaries={request.name: summary})
        return ComparisonResult(summary, request.notes)
    finally:
        if cores is not None:
            cores.close()


def _train(job: Job, opened: tuple[Any, Any, Any], data: tuple[Any, ...], console: Any) -> None:
    from lsearch import comparison, interrupts
    from lsearch.outputs.live import SeedRunProgress
    from lsearch.search.workers import start_workers, wait_for
    from lsearch.store.storage import mask_url

    request, (_, found, liveness), (device, pool, test_set, cores) = job.request, opened, data
    for note in request.notes:
        console.print(note, highlight=False, markup=False)
    total = len(comparison.pending_plans(request, found))
    if request.race is None:
        what = f"{len(request.seeds)} seeds, {total} seed-runs to train"
    else:
        what = f"a race of up to {len(request.seeds)} seeds, {total} seed-runs to train now"
    console.print(
        f"comparison [bold]{request.name}[/] in {mask_url(job.url)}: {len(request.cells)} "
        f"cells x {what} on {device}",
        highlight=False,
    )
    with interrupts.handling_signals(), SeedRunProgress(console, total) as progress:
        if job.workers > 1:
            started = start_workers(job.workers, job.args, [], job.url, stagger_s=0.5)
            codes = wait_for(started, lambda: progress.poll(found))
            if any(codes):
                console.print(f"worker exit codes: {codes}")
        else:
            comparison.train_pending(
                request, found, (pool, test_set), device, liveness, progress, cores
            )


def compare(
    grid: Grid, study: str = DEFAULT_STUDY, overrides: Overrides = None, *,
    seeds: Seeds = None, from_best: bool = False, metrics: Sequence[str] | None = None,
    storage: str | None = None, name: str | None = None, device: str = "auto",
    workers: int = 1, threads: int | None = None, console: Console | None = None,
    max_seeds: int = 30, margin: float | None = None, decide_on: Sequence[str] | None = None,
) -> ComparisonResult:  # fmt: skip
    """Train a full factorial grid on shared seeds, evaluate every seed on the held-out test
    set and compare the cells pairwise (``lsearch compare``). ``grid`` maps a factor to its
    levels (``{"label_smoothing": [0, 0.1]}``) or is ``--grid`` texts; ``seeds`` is a list or
    text (``"0-4"``), or ``"auto"`` for a race: seeds are added only to cells of a
    comparison still undecided, up to ``max_seeds``, deciding on ``decide_on`` (default
    test accuracy) with an interval valid however often it is looked at, and ``margin`` (in
    display units) for equivalence. A rerun trains only what is missing. The result's
    ``to_dict()`` is what ``--json`` prints; its answer and tables are what the command prints.

    >>> import lsearch, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> tiny = {"data.train_per_class": 15, "data.val_per_class": 15,
    ...         "data.test_per_class": 20, "model.width": 8, "baseline.epochs": 2,
    ...         "checkpoint.location": f"{folder}/artifacts"}
    >>> result = lsearch.compare({"label_smoothing": [0, 0.2]}, "digits", tiny, seeds=[0, 1],
    ...                          storage=f"sqlite:///{folder}/lsearch.db", device="cpu")
    >>> [cell["label"] for cell in result.to_dict()["cells"]]
    ['ε 0', 'ε 0.2']
    >>> result.cell_table().header[:3], len(result.verdicts) > 0
    (['cell', 'n', 'val_acc'], True)
    """
    job = comparison_job(
        grid, study, overrides, seeds=seeds, from_best=from_best, metrics=metrics,
        storage=storage, name=name, device=device, workers=workers, threads=threads,
        max_seeds=max_seeds, margin=margin, decide_on=decide_on,
    )  # fmt: skip
    result = carry_out(job, console)
    assert result is not None
    return result


def evaluate(
    study: str | None = None, trial: int | None = None, *, seeds: Seeds = None,
    metrics: Sequence[str] | None = None, storage: str | None = None, name: str | None = None,
    device: str = "auto", workers: int = 1, threads: int | None = None,
    console: Console | None = None,
) -> ComparisonResult:  # fmt: skip
    """Train one configuration of a search (its best trial by default) on fresh seeds and
    record its held-out test metrics: a one-cell comparison (``lsearch evaluate``).

    >>> import lsearch, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> url = f"sqlite:///{folder}/lsearch.db"
    >>> tiny = {"space.epochs": {"low": 1, "high": 2}, "seeds": [0, 1],
    ...         "data.train_per_class": 20, "data.val_per_class": 20,
    ...         "data.test_per_class": 20, "checkpoint.location": f"{folder}/artifacts"}
    >>> _ = lsearch.run("digits", tiny, storage=url, trials=2, device="cpu")
    >>> result = lsearch.evaluate("digits", seeds=[5, 6], storage=url, device="cpu")
    >>> len(result.to_dict()["cells"]), result.to_dict()["cells"][0]["seeds"]
    (1, [5, 6])
    """
    job = evaluation_job(
        study, trial, seeds=seeds, metrics=metrics, storage=storage, name=name,
        device=device, workers=workers, threads=threads,
    )  # fmt: skip
    result = carry_out(job, console)
    assert result is not None
    return result
