"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem the user caused and can fix: bad study file, bad URL, missing data, no GPU.

    The message is one line that names the problem and the fix. The CLI prints it and
    exits with code 2, without a traceback.
    """
