"""Errors caused by what the user gave (a config, a data folder, a checkpoint, a flag) rather than by a bug.

The entry points print them as one `error: ...` line and exit with status 2 instead of a traceback. `UserError`
is a ValueError, so library callers that catch ValueError keep working.
"""

import functools
import sys

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's status for a SIGINT


class UserError(ValueError):
    """A problem with the input the message names, and what was expected instead."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a FileNotFoundError)."""


def report_user_errors(main):
    """Decorate an entry point `main(argv=None, ...) -> int`: a UserError becomes `error: <message>` on stderr and
    exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE

    return wrapper
