"""The one error type for the user's mistakes, so that every command line prints them as one line.

Each check of user input (a flag, a file, a key, a column, a row) raises `UserError` where the check is made, with a
message that names the culprit. Command lines catch `UserError` alone and print it; any other exception is a bug or a
library failure and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user gave; the message names the flag, file, key, column or row at fault.

    A subclass of ValueError, so that library callers catching ValueError keep working.
    """


# Transitional: the command lines still classify errors raised before UserError existed by their innermost frame.
from pathlib import Path  # noqa: E402

_PACKAGE = Path(__file__).resolve().parent


def raised_by_our_checks(error: BaseException, *scripts: str | Path) -> bool:
    """True when the innermost frame of `error` is in vit_accel (or in one of `scripts`): a deliberate check of
    bad input with its own message, rather than a failure deep inside a library, which keeps its traceback."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None:
        return False
    filename = Path(traceback.tb_frame.f_code.co_filename).resolve()
    return _PACKAGE in filename.parents or filename in {Path(s).resolve() for s in scripts}
