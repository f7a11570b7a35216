"""`lsearch run --workers W`: start W worker processes on this machine, one GPU each where
`--gpus` lists them, and wait for them. The workers are plain `lsearch run` processes on the
same study; they coordinate only through the storage, like workers on other machines."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from lsearch import interrupts
from lsearch.errors import UserError
from lsearch.storage import STORAGE_ENV


def parse_gpus(text: str | None) -> list[str]:
    """`0,1,2,3` -> ["0", "1", "2", "3"] (CUDA device indices or UUIDs)."""
    if not text:
        return []
    gpus = [part.strip() for part in text.split(",")]
    if not all(gpus):
        raise UserError(f"--gpus {text!r}: give a comma-separated list such as 0,1,2,3")
    return gpus


GPU_LOCKS_ENV = "LSEARCH_GPU_LOCKS"
DEFAULT_GPU_LOCKS = "/tmp/lsearch-gpu-locks"


def claim_gpu(count: int, lock_dir: str | Path) -> tuple[int, IO[str]]:
    """Claim the least-shared of `count` GPUs through lock files in a folder every worker on
    the machine sees: workers fill slot 0 of every GPU, then slot 1, and so on. The lock
    lives as long as the returned file is open, and dies with the process.

    Needed where workers cannot be told their GPU, such as `docker compose --scale`, which
    gives every replica the same device reservation."""
    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        for index in range(count):
            handle = open(folder / f"cuda-{index}-slot-{slot}.lock", "w")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return index, handle
        slot += 1


def worker_env(index: int, gpus: Sequence[str], storage_url: str) -> dict[str, str]:
    """The environment of worker `index`: its GPU (round robin) and the storage URL, passed
    in the environment rather than on the command line, where `ps` would show a password."""
    env = dict(os.environ)
    env[STORAGE_ENV] = storage_url
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def start_workers(
    count: int, args: Sequence[str], gpus: Sequence[str], storage_url: str, stagger_s: float
) -> list[subprocess.Popen[bytes]]:
    """Start `count` workers running `lsearch *args --quiet` (args start with the command:
    `run ...` or `compare ...`). Each numbers itself through the storage (register_worker)."""
    workers = []
    for index in range(count):
        command = [sys.executable, "-m", "lsearch", *args]
        command += ["--quiet"]
        workers.append(
            subprocess.Popen(
                command, env=worker_env(index, gpus, storage_url), stdin=subprocess.DEVNULL
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
