"""`lsearch run --workers W`: start W worker processes on this machine, one GPU each where
`--gpus` lists them, and wait for them. The workers are plain `lsearch run` processes on the
same study; they coordinate only through the storage, like workers on other machines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from optuna.trial import FrozenTrial, TrialState

from lsearch import interrupts
from lsearch.store.storage import STORAGE_ENV


def worker_env(index: int, gpus: Sequence[str], storage_url: str, count: int = 1) -> dict[str, str]:
    """The environment of worker `index` of `count`: its GPU (round robin), its share of the
    cores for OpenMP (each worker then keeps its torch threads to its share, see
    devices.CoreShare) and the storage URL, passed in the environment rather than on the
    command line, where `ps` would show a password."""
    env = dict(os.environ)
    env[STORAGE_ENV] = storage_url
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // count)))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def start_workers(
    count: int, args: Sequence[str], gpus: Sequence[str], storage_url: str, stagger_s: float
) -> list[subprocess.Popen[bytes]]:
    """Start `count` workers running `lsearch *args --quiet` (args start with the command:
    `run ...` or `compare ...`). They need no number: each trial's number, which the storage
    makes unique, keeps their draws apart (search.study.TrialSeeded, picking_rank)."""
    workers = []
    for index in range(count):
        command = [sys.executable, "-m", "lsearch", *args]
        command += ["--quiet"]
        workers.append(
            subprocess.Popen(
                command, env=worker_env(index, gpus, storage_url, count), stdin=subprocess.DEVNULL
            )
        )
        # Staggered starts spread the first database writes (SQLite locks) and trial starts.
        time.sleep(stagger_s)
    return workers


def wait_for(
    workers: Sequence[subprocess.Popen[bytes]], poll: Callable[[], None], every_s: float = 1.0
) -> list[int]:
    """Wait until every worker has exited, calling `poll` meanwhile; their exit codes.
    A stop asked of this process is passed on to the workers once, as SIGTERM, so each
    hands its trial back: `docker stop` signals only this process, and a Ctrl-C that also
    reached the workers stays a first stop request for them (only a second SIGINT would
    stop them at once)."""
    forwarded = False
    while any(worker.poll() is None for worker in workers):
        if interrupts.requested() in ("SIGINT", "SIGTERM") and not forwarded:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
            forwarded = True
        poll()
        time.sleep(every_s)
    poll()
    return [worker.returncode for worker in workers]


def picking_rank(trials: Sequence[FrozenTrial], own_number: int) -> int:
    """How many trials numbered before `own_number` are RUNNING with no parameters yet: the
    workers that asked for a trial at about the same moment and are still choosing what it
    runs. 0 for a lone worker. A worker that takes item `rank % len(free)` of the free
    items (as a comparison picks its next seed-run) then takes another item than the ones
    earlier workers are taking, as long as there are as many free items as workers choosing:
    either an earlier one has chosen, and its item is no longer free, or it has not, and it
    counts here. With fewer, two may take one item; a comparison checks its claim after
    writing it (comparison.run.SeedRunObjective). Nothing is written to the storage for it.

    >>> from optuna.trial import create_trial
    >>> running = [create_trial(state=TrialState.RUNNING) for _ in range(3)]
    >>> for number, trial in enumerate(running):
    ...     trial.number = number
    >>> [picking_rank(running, n) for n in range(3)]
    [0, 1, 2]
    """
    return sum(
        1
        for trial in trials
        if trial.number < own_number and trial.state == TrialState.RUNNING and not trial.params
    )
