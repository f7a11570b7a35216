"""What every use case shares: quiet libraries, range checks, worker command lines, the
line that says what an interrupt did, and a console that prints nothing.

Nothing here imports torch or Optuna at module level: `import lsearch` stays light, and
`lsearch bench` runs on a machine without Optuna.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lsearch.errors import UserError
from lsearch.interrupts import Interrupted

if TYPE_CHECKING:
    from rich.console import Console

# The study every command runs when no --study is given: the user's transfer experiment in
# miniature (a pretrained small CNN fine-tuned on digits 5-9). `digits` trains from scratch.
DEFAULT_STUDY = "digits-transfer"


def quiet_libraries() -> None:
    """Optuna logs every failed trial with a traceback; lsearch prints one line per failure."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def at_least(option: str, value: float | None, low: float, why: str = "") -> None:
    """The one range check: `value` (None: not given) below `low` is a one-line user error
    naming the option, e.g. "--trials must be at least 1 (got 0)".

    >>> at_least("--workers", 2, 1)
    >>> at_least("--workers", 0, 1)
    Traceback (most recent call last):
    lsearch.errors.UserError: --workers must be at least 1 (got 0)
    """
    if value is not None and value < low:
        raise UserError(f"{option} must be at least {low:g} (got {value:g})" + (why and f": {why}"))


def positive(option: str, value: float | None, unit: str) -> None:
    """`value` (None: not given) must be above zero."""
    if value is not None and value <= 0:
        raise UserError(f"{option} must be a positive number of {unit} (got {value:g})")


def silent() -> Console:
    """A console that prints nothing: the default display of the Python API."""
    from rich.console import Console

    return Console(stderr=True, quiet=True)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    """A Python value as a TOML value, for a worker's `--set key=VALUE`.

    >>> toml_value({"low": 1, "high": 2.5}), toml_value([True, "a b"]), toml_value(math.inf)
    ('{low = 1, high = 2.5}', '[true, "a b"]', 'inf')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        parts = (
            f"{k if _BARE_KEY.match(str(k)) else json.dumps(str(k))} = {toml_value(v)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise UserError(f"override value {value!r} cannot be written in a study file")


def worker_args(command: str, **options: Any) -> list[str]:
    """The command line of a worker process (after `lsearch`): the one place it is built.
    Each option becomes `--name value` (underscores as dashes); a list repeats the option,
    True is a bare flag, and None or False leaves it out. Workers add `--quiet` themselves.

    >>> worker_args("run", study="digits", set=["a=1", "b=2"], timeout=None, from_best=True)
    ['run', '--study', 'digits', '--set', 'a=1', '--set', 'b=2', '--from-best']
    """
    args = [command]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def interrupt_message(exc: Interrupted, what: str) -> str:
    """One line on what an interrupt did to the trial in flight."""
    stopped = "--timeout passed" if exc.reason == "timeout" else f"{exc.reason} received"
    if len(exc.handed_back) > 1:
        stopped_trials = ", ".join(str(number) for number, _ in exc.handed_back)
        retries = ", ".join(str(retry) for _, retry in exc.handed_back)
        return (
            f"{stopped}: trials {stopped_trials} were stopped and handed back as trials "
            f"{retries}; run the same command again to resume them from their last finished "
            f"epoch and continue {what}"
        )
    if exc.handed_back_as is not None:
        return (
            f"{stopped}: trial {exc.trial_number} was stopped and handed back as trial "
            f"{exc.handed_back_as}; run the same command again to resume it from its last "
            f"finished epoch and continue {what}"
        )
    return f"{stopped}: run the same command again to continue {what}"


def outage_message(exc: BaseException) -> str | None:
    """The one line that ends a command whose storage stayed away past its reconnect window
    (lsearch.store.resilient.outage_message); None for any other exception.

    >>> outage_message(ValueError("not an outage")) is None
    True
    """
    from lsearch.store.resilient import outage_message as message  # (imports Optuna)

    return message(exc)
