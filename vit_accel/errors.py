"""The one error type for the user's mistakes, so that every command line prints them as one line.

Each check of user input (a flag, a file, a key, a column, a row) raises `UserError` where the check is made, with a
message that names the culprit. Command lines catch `UserError` alone and print it (`report`); any other exception is
a bug or a library failure and keeps its traceback.
"""

from __future__ import annotations

import re
import sys

# Hugging Face access tokens: never shown, whatever path a value takes to a message.
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")


class UserError(ValueError):
    """A mistake in what the user gave; the message names the flag, file, key, column or row at fault.

    A subclass of ValueError, so that library callers catching ValueError keep working.
    """

    def __init__(self, message: str = "", shown: bool = True) -> None:
        # `shown=False`: another process of the same run prints this very error; this one exits without repeating it.
        self.shown = shown
        # A DataLoader worker's exception reaches the main process re-created from a text that holds the worker's
        # whole traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."); what the user needs is
        # the message the check wrote, which is the traceback's last line.
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and "Original Traceback" in message and marker in message:
            message = message[message.rindex(marker) + len(marker) :].strip()
        super().__init__(message)


def redact(text: str) -> str:
    """`text` with anything shaped like a Hugging Face token replaced by `hf_***`."""
    return _TOKEN_RE.sub("hf_***", text)


def report(program: str, error: UserError) -> int:
    """Print `error` as one line on stderr, prefixed by the program's name; returns the exit status 2."""
    if getattr(error, "shown", True):
        message = " ".join(str(error).split("\n"))
        print(f"{program}: error: {redact(message)}", file=sys.stderr)
    return 2
