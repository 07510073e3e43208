"""Telling the user's mistakes from our bugs, so that command lines can print the former as one line."""

from __future__ import annotations

from pathlib import Path

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
