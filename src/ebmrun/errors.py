"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad config value, missing data, wrong
checkpoint). The CLI prints its message as one line on stderr and exits with code 2, with no
traceback. Messages should name the problem *and* the fix.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line with exit code 2."""

    exit_code = 2
