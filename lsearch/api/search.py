"""Searches: run one (here or in worker processes), serve a storage to workers, and read
the studies of a storage back (status, best trials)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lsearch.api.common import (
    DEFAULT_STUDY,
    at_least,
    interrupt_message,
    positive,
    quiet_libraries,
    silent,
    worker_args,
)
from lsearch.api.results import BestTrials, StatusReport
from lsearch.api.studyfile import Overrides, load_with_texts
from lsearch.errors import UserError
from lsearch.interrupts import Interrupted

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

    from lsearch.search.launch import Prepared


def run(
    study: str = DEFAULT_STUDY,
    overrides: Overrides = None,
    *,
    storage: str | None = None,
    trials: int = 100,
    timeout: float | None = None,
    device: str = "auto",
    name: str | None = None,
    workers: int | None = None,
    gpus: str | Sequence[str] | None = None,
    threads: int | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    artifacts: str | None = None,
    console: Console | None = None,
    notify: Callable[[str], None] | None = None,
) -> optuna.Study:
    """Run (or continue) the search of a study file until its study holds ``trials``
    finished (complete or pruned) trials, and return the ``optuna.Study``. What
    ``lsearch run`` does: ``overrides`` are ``--set`` (a dict of dotted keys, or ``key=value``
    texts), the other keywords its options; ``workers``/``gpus`` start worker processes on
    this machine. Progress and notes go to ``console`` (a ``rich.console.Console``; none:
    silent). A ``timeout`` that passes ends the run normally (what it did to the trial in
    flight goes to ``notify``, default the console); a stop request (Ctrl-C, SIGTERM) raises
    ``lsearch.Interrupted`` after handing the trial in flight back.

    >>> import lsearch, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> tiny = {"space.epochs": {"low": 1, "high": 2}, "seeds": [0, 1],
    ...         "data.train_per_class": 20, "data.val_per_class": 20}
    >>> study = lsearch.run("digits", tiny, storage=f"sqlite:///{folder}/lsearch.db",
    ...                     trials=2, device="cpu", artifacts=f"{folder}/artifacts")
    >>> study.study_name, len(study.trials), sorted(study.best_trial.user_attrs["config"])
    ('digits', 2, ['epochs', 'label_smoothing', 'lr', 'trainable_layers'])
    """
    from lsearch.search.launch import prepare_search
    from lsearch.store.storage import resolve_url
    from lsearch.training.devices import parse_gpus, worker_device

    at_least("--trials", trials, 1, "it is the study's total of finished trials")
    positive("--timeout", timeout, "seconds")
    gpu_list = parse_gpus(gpus if gpus is None or isinstance(gpus, str) else ",".join(gpus))
    workers = len(gpu_list) or 1 if workers is None else workers
    at_least("--workers", workers, 1)
    at_least("--threads", threads, 1)
    device = worker_device(device, gpu_list)
    spec, texts = load_with_texts(study, overrides, {
        "storage.heartbeat_interval": heartbeat_interval, "storage.grace_period": grace_period,
        "checkpoint.location": artifacts,
    })  # fmt: skip
    quiet_libraries()
    url = resolve_url(storage)
    args = None
    if workers > 1 or gpu_list:
        args = worker_args(
            "run", study=study, trials=trials, device=device, set=texts, timeout=timeout,
            name=name, threads=threads, heartbeat_interval=heartbeat_interval,
            grace_period=grace_period, artifacts=artifacts,
        )  # fmt: skip
    prepared = prepare_search(spec, url, device, name, args is None, threads)
    console = console or silent()
    try:
        _search(prepared, url, trials, timeout, (workers, gpu_list, args), console)
    except Interrupted as exc:
        if exc.reason != "timeout":
            raise
        (notify or (lambda line: console.print(line, highlight=False)))(
            interrupt_message(exc, "the study")
        )
    finally:  # the process's share of the cores ends with the call (see CoreShare)
        if prepared.cores is not None:
            prepared.cores.close()
    return prepared.study


def _search(
    prepared: Prepared,
    url: str,
    trials: int,
    timeout: float | None,
    started: tuple[int, list[str], list[str] | None],
    console: Console,
) -> None:
    """Announce the study, then run its trials here, or start the workers and watch them."""
    from lsearch import interrupts
    from lsearch.outputs.live import SearchProgress
    from lsearch.search.loop import run_until
    from lsearch.search.objective import SearchObjective
    from lsearch.search.study import count_finished
    from lsearch.search.workers import start_workers, wait_for
    from lsearch.store.storage import mask_url

    spec, found = prepared.spec, prepared.study
    workers, gpu_list, args = started
    done = count_finished(found)
    console.print(
        f"study [bold]{found.study_name}[/] in {mask_url(url)}: {done} of {trials} trials "
        f"finished, {len(spec.seeds)} seeds each, on {prepared.device}"
        + (f", {workers} workers" if args is not None else ""),
        highlight=False,
    )
    if len(spec.objective.directions) > 1 and spec.pruner.type != "none":
        console.print("note: Optuna cannot prune a multi-objective study; pruning is off")
    with (
        interrupts.handling_signals(),
        SearchProgress(console, trials, done, spec.objective.metric) as progress,
    ):
        if args is not None:
            codes = wait_for(
                start_workers(workers, args, gpu_list, url, stagger_s=0.5),
                lambda: progress.poll(found),
            )
            if interrupts.requested() in ("SIGINT", "SIGTERM"):
                raise Interrupted(str(interrupts.requested()))
            if any(codes):
                console.print(f"worker exit codes: {codes}")
            return
        objective = SearchObjective(
            spec, prepared.pool, prepared.device, on_epoch=progress.on_epoch,
            checkpoints=prepared.checkpoints, cores=prepared.cores,
        )  # fmt: skip
        run_until(
            found, objective, trials, timeout, callbacks=[progress.on_trial],
            liveness=prepared.liveness, on_wait=progress.poll,
        )  # fmt: skip


def count_finished(study: optuna.Study) -> int:
    """The study's finished (complete or pruned) trials: what ``trials`` counts."""
    from lsearch.search.study import count_finished as count

    return count(study)


def serve_proxy(storage: str | None, host: str, port: int, console: Console | None = None) -> None:
    """Serve a storage to many workers through Optuna's gRPC proxy (``lsearch proxy``), and
    fail and re-queue the trials of workers that stopped beating, until Ctrl-C."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from optuna.storages import run_grpc_proxy_server

    from lsearch.search.launch import watch_stale_trials
    from lsearch.store.storage import mask_url, open_storage, resolve_url

    quiet_libraries()
    url = resolve_url(storage)
    if url.startswith("grpc://"):
        raise UserError("lsearch proxy serves a database URL, not another proxy")
    # Optuna's proxy answers with 10 threads (its default pool, made explicit here); each may
    # hold a connection, and the stale-trial sweep one more.
    threads = 10
    backend = open_storage(url, connections=threads + 1)
    (console or silent()).print(f"serving {mask_url(url)} on grpc://{host}:{port}", highlight=False)
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_stale_trials, args=(backend, stop), name="lsearch-sweep", daemon=True
    )
    watcher.start()
    try:
        pool = ThreadPoolExecutor(max_workers=threads)
        run_grpc_proxy_server(backend, host=host, port=port, thread_pool=pool)
    finally:
        stop.set()


def status(storage: str | None = None, study: str | None = None) -> StatusReport:
    """The studies of a storage (all, or the one named) with their trial counts by state,
    best value and kept checkpoints: what ``lsearch status`` prints.

    >>> import lsearch, tempfile
    >>> lsearch.status(f"sqlite:///{tempfile.mkdtemp()}/none.db")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    lsearch.errors.UserError: no study database at ...
    """
    from lsearch.outputs.results import study_rows
    from lsearch.store.catalog import pick_study
    from lsearch.store.storage import mask_url, open_storage, resolve_url

    quiet_libraries()
    url = resolve_url(storage)
    opened = open_storage(url, must_exist=True)
    if study is not None:
        pick_study(opened, study)  # a name that is not there is a user error
    rows = [row for row in study_rows(opened) if study is None or row.name == study]
    return StatusReport(mask_url(url), rows)


def best(study: str | None = None, storage: str | None = None) -> BestTrials:
    """The best trial of a search (the Pareto front if multi-objective), with its
    parameters and metrics: what ``lsearch best`` prints; ``to_dict()`` is its ``--json``.

    >>> import lsearch, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> url = f"sqlite:///{folder}/lsearch.db"
    >>> tiny = {"space.epochs": {"low": 1, "high": 2}, "seeds": [0, 1],
    ...         "data.train_per_class": 20, "data.val_per_class": 20,
    ...         "checkpoint.location": f"{folder}/artifacts"}
    >>> study = lsearch.run("digits", tiny, storage=url, trials=2, device="cpu")
    >>> lsearch.best(storage=url).to_dict()["best"]["number"] == study.best_trial.number
    True
    >>> [row[:4] for row in lsearch.status(url).table().rows]
    [['digits', 'search', 'maximize', '2']]
    """
    from lsearch.outputs.results import best_trials, trial_summary
    from lsearch.store.catalog import pick_study
    from lsearch.store.storage import open_storage, resolve_url

    quiet_libraries()
    found = pick_study(open_storage(resolve_url(storage), must_exist=True), study)
    return BestTrials(found.study_name, [trial_summary(t) for t in best_trials(found)])
