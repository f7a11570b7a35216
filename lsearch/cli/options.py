"""What every command shares: the two consoles, the one-line user error, and the options
several commands take (as `Annotated` types)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from lsearch.api.common import outage_message
from lsearch.errors import StorageUnavailable, UserError

# Off a terminal rich assumes 80 columns and would cut table cells; give tables room.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Turn a UserError into one line on stderr and exit code 2, and a storage that stayed
    away or full past its reconnect window into one line and exit code 1, with no
    traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (UserError, StorageUnavailable) as exc:  # a full server: no user error (below)
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2 if isinstance(exc, UserError) else 1) from None
        except Exception as exc:
            # Not a user error (exit 2 fails a Kubernetes Job at once; 1 lets it restart the
            # worker), and where in lsearch the outage struck is no news.
            message = outage_message(exc)
            if message is None:
                raise
            err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def display(quiet: bool) -> Console:
    """Where progress and notes go: stderr, or nowhere with --quiet."""
    return Console(stderr=True, quiet=True) if quiet else err


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
        "--study",
        help="Study file: a path, or a bundled name (digits-transfer, digits, cifar10-resnet18)",
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
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object")]
