"""Study files with overrides given as a dict (the Python API) or as `--set` text (the CLI)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lsearch.api.common import toml_value
from lsearch.errors import UserError

if TYPE_CHECKING:
    from lsearch.spec import StudySpec

# Overrides: a mapping of dotted keys (or nested tables) to values, or `key=value` texts.
Overrides = Mapping[str, Any] | Sequence[str] | None


def read_study_file(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A study file's raw table and its path; every failure is a one-line UserError."""
    from lsearch.spec import find_study_file

    path = find_study_file(name_or_path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), str(path)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); fix the file's syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None


def leaves(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The overrides as (dotted key, value) pairs, each of which replaces one value as
    `--set key=value` does. A mapping given for a key where the file has a table is merged
    into it key by key (so `{"train": {"batch_size": 64}}` is `train.batch_size=64`); any
    other value replaces what is there.

    >>> raw = {"train": {"batch_size": 128, "patience": 5}, "seeds": [0, 1, 2]}
    >>> leaves(raw, {"train": {"batch_size": 64}, "seeds": [0, 1]})
    [('train.batch_size', 64), ('seeds', [0, 1])]
    >>> leaves(raw, {"space.epochs": {"low": 1, "high": 2}})
    [('space.epochs', {'low': 1, 'high': 2})]
    """
    found: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        keys = str(key).split(".")
        if not all(keys):
            raise UserError(f"override key '{key}' is not a dotted key like train.batch_size")
        here: Any = raw
        for part in keys:
            here = here.get(part) if isinstance(here, Mapping) else None
        if isinstance(value, Mapping) and isinstance(here, Mapping) and value:
            found += [(f"{key}.{inner}", v) for inner, v in leaves(here, value)]
        else:
            found.append((str(key), value))
    return found


def override_texts(raw: Mapping[str, Any], overrides: Overrides) -> list[str]:
    """The overrides as `key=value` texts, for a worker's `--set` (texts stay as given)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={toml_value(value)}" for key, value in leaves(raw, overrides)]
    return [str(text) for text in overrides]


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    table = raw
    for depth, key in enumerate(keys[:-1]):
        inner = table.setdefault(key, {})
        if not isinstance(inner, dict):
            where = ".".join(keys[: depth + 1])
            raise UserError(
                f"override {dotted}: {where} is a plain value, not a table; set it whole instead"
            )
        table = inner
    table[keys[-1]] = value


def apply(raw: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """A copy of the raw study table with the overrides set (texts as `--set` parses them)."""
    from lsearch.spec import apply_overrides

    if overrides is None:
        return apply_overrides(raw, [])
    if isinstance(overrides, str):
        raise UserError("give overrides as a dict or a list of key=value texts, not one string")
    if not isinstance(overrides, Mapping):
        return apply_overrides(raw, list(overrides))
    result = apply_overrides(raw, [])  # a deep copy
    for dotted, value in leaves(raw, overrides):
        _set(result, dotted, _plain(value))
    return result


def _plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, as TOML would give them."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def load_study_file(name_or_path: str, overrides: Overrides = None) -> StudySpec:
    """Read a study file (a path, or a bundled name: ``digits``, ``cifar10-resnet18``), set
    the overrides and validate it into a frozen ``StudySpec``. Overrides are a dict of dotted
    keys or nested tables (``{"train.batch_size": 64}`` or ``{"train": {"batch_size": 64}}``)
    or a list of ``key=value`` texts as ``--set`` takes them; a mistake is a one-line
    ``UserError``.

    >>> import lsearch
    >>> spec = lsearch.load_study_file("digits", {"space.epochs": {"low": 1, "high": 2}})
    >>> spec.space.epochs.bounds(), spec.seeds
    ((1.0, 2.0), (0, 1, 2))
    >>> spec == lsearch.load_study_file("digits", ["space.epochs={low = 1, high = 2}"])
    True
    """
    from lsearch.spec import validate

    raw, source = read_study_file(name_or_path)
    return validate(apply(raw, overrides), source)


def load_with_texts(
    name_or_path: str, overrides: Overrides, settings: Mapping[str, Any] | None = None
) -> tuple[StudySpec, list[str]]:
    """The spec with the overrides and then `settings` (typed options as values, None: not
    given) set, and the overrides as `--set` texts for workers that load it again."""
    from lsearch.spec import validate

    raw, source = read_study_file(name_or_path)
    table = apply(raw, overrides)
    given = {key: value for key, value in (settings or {}).items() if value is not None}
    for dotted, value in leaves(table, given):
        _set(table, dotted, _plain(value))
    return validate(table, source), override_texts(raw, overrides)
