"""Pretrained weights that ship inside the package, found by a stable name.

`model.weights = "digits-0-4"` names `digits-0-4.pt` in this folder (a state dict of tensors,
read with `torch.load(..., weights_only=True)`) and `digits-0-4.json` beside it: what
`scripts/pretrain_digits.py` measured when it made the file, and the input statistics the
network was trained with. A study's spec records the sha256 of whatever file its weights
name, so a changed file cannot silently continue an old study. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent
NOT_FILES = ("none", "imagenet")


def bundled_names() -> list[str]:
    """The names of the weights that ship.

    >>> "digits-0-4" in bundled_names()
    True
    """
    return sorted(path.stem for path in FOLDER.glob("*.pt"))


def weights_file(weights: str) -> Path | None:
    """The file `model.weights` reads: a bundled name (resolved in this package, whatever the
    current folder), else a path; None for `none` and `imagenet` (torchvision's own).

    >>> weights_file("digits-0-4").name, weights_file("none")
    ('digits-0-4.pt', None)
    """
    if weights in NOT_FILES:
        return None
    bundled = FOLDER / f"{weights}.pt"
    if "/" not in weights and bundled.is_file():
        return bundled
    return Path(weights)


def missing_message(path: Path | None) -> str:
    """The one line for weights that name no file (what loading and `lsearch doctor` say).

    >>> missing_message(Path("x.pth")).startswith("model.weights: no file at x.pth;")
    True
    """
    return (
        f"model.weights: no file at {path}; give a state-dict file, 'imagenet', 'none' or the "
        f"name of weights that ship with lsearch ({', '.join(bundled_names())})"
    )


@functools.lru_cache(maxsize=16)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def file_sha256(weights: str) -> str | None:
    """The sha256 of the file `model.weights` names; None when it names no file (or none
    exists: loading the weights then says so).

    >>> len(file_sha256("digits-0-4")), file_sha256("imagenet")
    (64, None)
    """
    path = weights_file(weights)
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return _digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


def recorded_figures(weights: str) -> dict[str, Any] | None:
    """What the script that made bundled weights recorded beside them (the JSON), or None
    for weights that do not ship with lsearch.

    >>> recorded_figures("digits-0-4")["source_classes"]
    [0, 1, 2, 3, 4]
    """
    path = weights_file(weights)
    if path is None or path.parent != FOLDER:
        return None
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
