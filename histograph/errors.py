"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (an unknown name, a bad value, missing data).
The command-line entry points print its one-sentence message and exit with status 2 instead of
showing a stack trace; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
import signal
from typing import Iterable

#: Exit status of a run stopped by a signal: resumable by running the same command again
#: (``EX_TEMPFAIL``).
EXIT_INTERRUPTED = 75
#: Exit status of a run stopped by Ctrl+C (the shell's 128 + SIGINT).
EXIT_CTRL_C = 130


class UserError(Exception):
    """An error caused by the user's input; its message says what to change."""


class RunInterrupted(Exception):
    """A run stopped by a signal (not a failure: the same command resumes it); see
    :mod:`histograph.training.interrupt`."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_CTRL_C` for Ctrl+C, else :data:`EXIT_INTERRUPTED`."""
        return EXIT_CTRL_C if self.signum == signal.SIGINT else EXIT_INTERRUPTED


def unknown_choice(kind: str, value: object, valid: Iterable[str], hint: str = "") -> UserError:
    """Build the standard "unknown <kind>" error that lists the valid names."""
    names = ", ".join(sorted(valid))
    return UserError(f"Unknown {kind} {value!r}; valid names: {names}.{(' ' + hint) if hint else ''}")


def invalid_choice(arg: str, value: object, valid: Iterable[str]) -> ValueError:
    """The library-level error for an unknown option (``nn/``, ``data/``): it names the
    constructor argument; :func:`config_error` turns it into the command line's message."""
    return ValueError(f"{arg}={value!r} is not one of {', '.join(sorted(valid))}; use one of "
                      f"them.")


_ARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def config_error(group: str, keys: Iterable[str], exc: BaseException) -> UserError:
    """A constructor's ``ValueError``/``TypeError`` as a one-line :class:`UserError` naming the
    config key: ``"layers must be ..."`` from group ``model`` -> ``"model.layers must be ..."``
    when ``layers`` is one of ``keys`` (the group's config keys), else ``"model: ..."``."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".") + "."
    unexpected = _UNEXPECTED.search(text)
    if unexpected:  # an option the chosen class does not take (e.g. from another option's file)
        return UserError(f"{group}.{unexpected.group(1)} is not an option of this {group}; "
                         f"remove it (or pick a {group} that has it).")
    first = _ARG.match(text)
    if first and first.group() in set(keys):
        return UserError(f"{group}.{text}")
    return UserError(f"{group}: {text}")
