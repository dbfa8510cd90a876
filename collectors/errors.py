"""The one error model: every failure a user can cause is an ``MmrwatchError``, a *kind* and
a one-line message, whichever layer raises it.

The *kind* (``vocab.ERROR_KINDS``) says what went wrong in terms a user acts on (the input
is missing, unusable, lacks matching debug info, may not be read; a check ran out of time;
a command line or a configuration is wrong); ``agent/exits.py`` maps it, in one table, to
the CLI exit code, the ``collector_error{kind}`` label and the Nagios code.  A raiser never
picks an exit code, and a catcher never picks a kind: both ends name the same word.

``config`` on an error says that the file at fault is mmrwatch's own configuration (the
ranges file), not the kernel it reads: the daemon treats that differently from a one-shot
command (see ``exits.outcome``).  Nothing here imports drgn, so the BTF reader, the symbol
loaders and the CLI's ``--help`` can use it.
"""
from __future__ import annotations

import sys

from .vocab import DATA, DEBUGINFO, NOINPUT, PERMISSION, TIMEOUT  # noqa: F401 - re-exported


class MmrwatchError(Exception):
    """A failure with a ``kind`` (``vocab.ERROR_KINDS``) and a one-line message."""

    config = False           # about mmrwatch's own configuration file (not the target)
    limit = sys.maxsize      # the longest message shown (``one_line``)

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(one_line(message, self.limit))
        self.kind = kind


class TargetError(MmrwatchError):
    """A target (dump, live kernel, debug info) that cannot be used."""


class RangesError(MmrwatchError, ValueError):
    """A ranges file that cannot be used: ``noinput`` when it does not exist, else ``data``.
    Here, not in userranges.py, so that the CLI can name it without importing drgn."""

    config = True
    limit = 400

    def __init__(self, message: str, kind: str = DATA) -> None:
        super().__init__(kind, message)


class CheckTimeout(MmrwatchError):
    """A check that did not finish within its deadline (``serve --timeout``, ``check
    --timeout``); the walk is abandoned as a whole."""

    def __init__(self, seconds: float) -> None:
        super().__init__(TIMEOUT, f"check did not finish within {seconds:g} s")


def bug_line(e: BaseException) -> str:
    """An exception that is no ``MmrwatchError`` (a bug: kind ``internal``) as the one line
    the CLI, the plugin and the daemon show: its type and its message's first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one printable line for a message: every character that is not printable
    (newlines, escapes, NUL, an undecodable byte's surrogate) shown as a Python escape
    (``\\n``, ``\\x1b``, ``\\udcff``), and cut to ``limit`` characters."""
    s = str(text)
    if not s.isprintable():
        s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[:limit - 3] + "..."
