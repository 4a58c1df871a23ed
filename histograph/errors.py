"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (an unknown name, a bad value, missing data).
The command-line entry points print its one-sentence message and exit with status 2 instead of
showing a stack trace; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Iterable


class UserError(Exception):
    """An error caused by the user's input; its message says what to change."""


def unknown_choice(kind: str, value: object, valid: Iterable[str], hint: str = "") -> UserError:
    """Build the standard "unknown <kind>" error that lists the valid names."""
    names = ", ".join(sorted(valid))
    return UserError(f"Unknown {kind} {value!r}; valid names: {names}.{(' ' + hint) if hint else ''}")
