"""One check's verdict (`Check`: ok, warn or fail, one line, its figures), and the one-line
form of an exception a check reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "warn", "fail")


@dataclass
class Check:
    """One check's verdict: `status` is ok, warn or fail; `detail` is one line; `figures`
    are the numbers and facts behind it (for --json).

    >>> Check("data", "ok", "digits ships with scikit-learn").to_json()
    {'name': 'data', 'status': 'ok', 'detail': 'digits ships with scikit-learn'}
    """

    name: str
    status: str
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")

    def to_json(self) -> dict[str, Any]:
        """What `lsearch doctor --json` prints for this check: its figures, name, verdict."""
        return {**self.figures, "name": self.name, "status": self.status, "detail": self.detail}


def first_line(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The exception's class and the first line of its message, with each secret replaced
    by *** (drivers sometimes echo the connection string).

    >>> first_line(ValueError("bad password s3cret\\nmore"), ("s3cret",))
    'ValueError: bad password ***'
    """
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def passed(checks: list[Check]) -> bool:
    """True when no check failed (warnings pass).

    >>> passed([Check("a", "ok", ""), Check("b", "warn", "")])
    True
    """
    return all(check.status != "fail" for check in checks)
