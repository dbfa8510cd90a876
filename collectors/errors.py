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
