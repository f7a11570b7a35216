"""The exception type for mistakes a user can fix, the one for a storage that stayed full,
and exceptions as one line for the attrs that record why a trial failed or trained from the
start."""


class UserError(Exception):
    """A problem the user caused and can fix: bad study file, bad URL, missing data, no GPU.

    The message is one line that names the problem and the fix. The CLI prints it and
    exits with code 2, without a traceback.
    """


class StorageUnavailable(Exception):
    """The storage had no free connection for longer than `storage.reconnect_timeout` as a
    command opened it: a state of the server, not the user's mistake. The CLI prints the
    one-line message and exits with code 1 (as for an outage), so that a Kubernetes Job
    replaces the worker instead of failing as it does on a user error (code 2)."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Class: message` on one line (whitespace and newlines collapsed), at most `limit`
    characters.

    >>> one_line(ValueError("bad\\n  input"))
    'ValueError: bad input'
    >>> one_line(KeyError(), limit=10)
    'KeyError'
    """
    text = " ".join(str(error).split())
    return shorten(f"{type(error).__name__}: {text}" if text else type(error).__name__, limit)


def shorten(text: str, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters with "..."."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
