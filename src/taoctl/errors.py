"""Errors every part of taoctl raises for the user to read.

A TaoctlError is printed as one line (``taoctl: <message>``) and the process exits with
``exit_code``; any other exception is a bug and shows its traceback only with ``-v``.
This module is shared by the launcher, the engine and the tasks, so it imports nothing heavy.
"""

import difflib


class TaoctlError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SpecError(TaoctlError):
    """A spec file that does not parse or validate; the message starts with file:line:col."""


def did_you_mean(word: str, choices, n: int = 1) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f'"{c}"' for c in close) + "?)"
