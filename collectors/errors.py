"""The error every collector layer raises for a target it cannot use: a kind and one line.

The *kind* says what went wrong in terms a user acts on (the input is missing, unusable,
lacks matching debug info, or may not be read); the agent maps it to an exit code and a
``collector_error{kind}`` label.  Nothing here imports drgn, so the BTF reader and the
symbol loaders can raise it too.
"""
from __future__ import annotations

NOINPUT, DATA, DEBUGINFO, PERMISSION = "noinput", "data", "debuginfo", "permission"


class TargetError(Exception):
    """A target that cannot be used; ``kind`` selects the exit code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class RangesError(ValueError):
    """A ranges file that cannot be used; the message is one line for the user.  Here, not
    in userranges.py, so that the CLI can name it without importing drgn (``--help``)."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(one_line(message, 400))
        self.missing = missing      # the file does not exist (vs. exists but is unusable)


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one printable line for a message: every character that is not printable
    (newlines, escapes, NUL, an undecodable byte's surrogate) shown as a Python escape
    (``\\n``, ``\\x1b``, ``\\udcff``), and cut to ``limit`` characters."""
    s = str(text)
    if not s.isprintable():
        s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[:limit - 3] + "..."
