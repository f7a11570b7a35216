"""Export a study's trials as one row per trial and seed, for pandas, R or a spreadsheet.

The row contract (`lsearch export`):

- One row per trial and seed, trials in number order, seeds in the order of the trial's
  `seeds` attr. A trial without a `seeds` attr (it failed before recording anything) gives
  no rows. Every state is exported (COMPLETE, PRUNED, FAIL, RUNNING, ...); a trial that
  failed or is still running has rows with empty metrics.
- Fixed columns, in this order: `study`, `trial` (number), `state` (the state's name),
  the four parameters `label_smoothing`, `epochs`, `lr`, `trainable_layers` (from the
  `config` attr, which holds them whether searched or fixed; else the trial's params),
  `seed`, and the trial-level `chosen_epoch` and `epochs_run` (repeated on each seed's row).
- Then one column per per-seed metric, sorted by name: every user attr named `X_per_seed`
  whose value is a list with one number (or null) per seed gives column `X`, the seed's item
  (`val_acc_per_seed` -> `val_acc`, `temperature_per_seed` -> `temperature`). `_per_seed`
  attrs whose items are not numbers (the reliability data), whose length is not the number of
  seeds, or whose name would shadow a fixed column are skipped.
- Every row has every column; a value a trial lacks is None (an empty cell in CSV, null in
  JSON). Numbers are the attrs' values unchanged: CSV writes floats with `str`, the shortest
  text that reads back as the same float; JSON writes non-finite floats as null.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from lsearch.errors import UserError
from lsearch.store.catalog import CHOSEN_EPOCH_ATTR, CONFIG_ATTR, EPOCHS_RUN_ATTR, SEEDS_RUN_ATTR

FORMATS = ("csv", "json")
PARAMS = ("label_smoothing", "epochs", "lr", "trainable_layers")
FIXED_COLUMNS = ("study", "trial", "state", *PARAMS, "seed", "chosen_epoch", "epochs_run")
PER_SEED_SUFFIX = "_per_seed"

Row = dict[str, Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def per_seed_metrics(trial: FrozenTrial, n_seeds: int) -> dict[str, list[Any]]:
    """The trial's per-seed numeric metrics by column name (attr name less `_per_seed`)."""
    found = {}
    for name, value in trial.user_attrs.items():
        column = name.removesuffix(PER_SEED_SUFFIX)
        if not name.endswith(PER_SEED_SUFFIX) or not column or column in FIXED_COLUMNS:
            continue
        if not isinstance(value, list) or len(value) != n_seeds:
            continue
        if all(v is None or _is_number(v) for v in value) and any(map(_is_number, value)):
            found[column] = value
    return found


def trial_rows(study: str, trial: FrozenTrial) -> list[Row]:
    """The trial's rows, one per seed, holding only the columns it has (see the module doc)."""
    attrs = trial.user_attrs
    seeds = attrs.get(SEEDS_RUN_ATTR)
    if not isinstance(seeds, list) or not seeds:
        return []
    config = attrs.get(CONFIG_ATTR)
    params = config if isinstance(config, dict) else trial.params
    common: Row = {
        "study": study,
        "trial": trial.number,
        "state": trial.state.name,
        **{name: params.get(name) for name in PARAMS},
        "chosen_epoch": attrs.get(CHOSEN_EPOCH_ATTR),
        "epochs_run": attrs.get(EPOCHS_RUN_ATTR),
    }
    metrics = per_seed_metrics(trial, len(seeds))
    return [
        {**common, "seed": seed, **{name: values[i] for name, values in metrics.items()}}
        for i, seed in enumerate(seeds)
    ]


def export_rows(study: str, trials: Iterable[FrozenTrial]) -> tuple[list[str], list[Row]]:
    """The columns (fixed ones, then metrics sorted) and every trial's rows, each row holding
    every column in that order (None where a trial lacks the value)."""
    partial = [row for t in sorted(trials, key=lambda t: t.number) for row in trial_rows(study, t)]
    metrics = sorted({key for row in partial for key in row} - set(FIXED_COLUMNS))
    columns = [*FIXED_COLUMNS, *metrics]
    return columns, [{column: row.get(column) for column in columns} for row in partial]


def to_csv(columns: list[str], rows: list[Row]) -> str:
    """CSV with a header line; None is an empty cell; lines end in a newline."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_json(rows: list[Row]) -> str:
    """A JSON list of row objects (keys in column order), non-finite floats as null."""
    safe = [{key: _json_safe(value) for key, value in row.items()} for row in rows]
    return json.dumps(safe, indent=2, allow_nan=False) + "\n"


def check_format(fmt: str | None) -> str:
    """The format name, lower-cased; a missing or unknown one is a one-line UserError."""
    if fmt is None:
        raise UserError("no export format given; add --format csv or --format json")
    if fmt.lower() not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use --format csv or --format json")
    return fmt.lower()


def render(fmt: str, columns: list[str], rows: list[Row]) -> str:
    """The rows as `fmt` ("csv" or "json") text; another format is a UserError."""
    return to_csv(columns, rows) if check_format(fmt) == "csv" else to_json(rows)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename, so
    the file is either the old one or the whole new one; OS errors become a UserError."""
    folder = path.parent
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file private (0600); give it the mode a plain open would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
