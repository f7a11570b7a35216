"""Storage calls and storage time per trial of a search, by method.

Runs `lsearch.run` on a fresh SQLite file (or the storage given) with every call into
Optuna's RDBStorage counted and timed: a call is one transaction. Prints JSON: trials, wall
seconds, and per trial the calls and milliseconds in all and by method.

    python scripts/storage_calls.py --trials 20 [--study digits] [--storage URL]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage

import lsearch
from lsearch.store import resilient

# Each of these is one transaction; Optuna's cache creates and reads trials through the
# private two. Not counted: helpers that run inside another call's transaction.
NOT_TRANSACTIONS = {
    "check_trial_is_updatable",
    "get_current_version",
    "get_head_version",
    "get_all_versions",
    "upgrade",
    "remove_session",
}
COUNTED = [
    name
    for name in dir(RDBStorage)
    if (not name.startswith("_") or name in {"_create_new_trial", "_get_trials"})
    and callable(getattr(RDBStorage, name)) and name not in NOT_TRANSACTIONS
]  # fmt: skip


def count_calls(calls: Counter[str], seconds: Counter[str]) -> None:
    """Wrap RDBStorage's methods, and lsearch's write of several user attrs in one
    transaction, so that each call adds to `calls` and `seconds`."""
    batched = [(resilient, "write_user_attrs")] if hasattr(resilient, "write_user_attrs") else []
    for owner, name in [(RDBStorage, name) for name in COUNTED] + batched:
        method = getattr(owner, name)

        @functools.wraps(method)
        def timed(
            self: RDBStorage, *args: Any, _method: Any = method, _name: str = name, **kw: Any
        ) -> Any:
            start = time.perf_counter()
            try:
                return _method(self, *args, **kw)
            finally:
                calls[_name] += 1
                seconds[_name] += time.perf_counter() - start

        setattr(owner, name, timed)


def measure(study: str, trials: int, storage: str | None, sets: list[str]) -> dict[str, Any]:
    calls: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as folder:
        url = storage or f"sqlite:///{Path(folder) / 'calls.db'}"
        lsearch.load_study_file(study, sets)  # a bad study fails before anything is counted
        count_calls(calls, seconds)
        started = time.perf_counter()
        lsearch.run(study, sets, storage=url, trials=trials, device="cpu",
                    artifacts=str(Path(folder) / "artifacts"))  # fmt: skip
        wall = time.perf_counter() - started
    total_s = sum(seconds.values())
    return {
        "study": study,
        "trials": trials,
        "wall_s": wall,
        "storage_s": total_s,
        "storage_share_of_wall": total_s / wall,
        "calls_per_trial": sum(calls.values()) / trials,
        "storage_ms_per_trial": 1000 * total_s / trials,
        "by_method": {
            name: {
                "calls_per_trial": calls[name] / trials,
                "ms_per_trial": 1000 * seconds[name] / trials,
            }
            for name, _ in calls.most_common()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="digits")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    print(json.dumps(measure(args.study, args.trials, args.storage, args.sets), indent=2))


if __name__ == "__main__":
    main()
