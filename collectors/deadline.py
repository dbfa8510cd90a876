"""When a check must stop: a deadline, a cancellation from another thread, or both.

The walker consults it between table reads (``tables.TableReader``), so a check on a
huge or hostile table ends at its deadline, and a daemon that is asked to stop (SIGTERM)
ends the check it is running within one table read instead of waiting for it to finish.
Checking costs one attribute test and, for the cancellation, one ``Event.is_set()``: far
below the cost of the physical read it precedes (``tests/bench/walk.py``).
"""
from __future__ import annotations

import threading
import time
from typing import Optional, Union


class WalkTimeout(Exception):
    """The check ran past its deadline; it is abandoned as a whole, not per branch."""


class WalkCancelled(WalkTimeout):
    """The check was cancelled from another thread (the daemon is stopping)."""


class Deadline:
    """``at`` (a ``time.monotonic()`` value) and/or ``cancel`` (set from any thread)."""

    __slots__ = ("at", "cancel")

    def __init__(self, at: Optional[float] = None,
                 cancel: Optional[threading.Event] = None) -> None:
        self.at, self.cancel = at, cancel

    def check(self) -> None:
        """Raise ``WalkCancelled`` or ``WalkTimeout`` when the check must stop now."""
        if self.cancel is not None and self.cancel.is_set():
            raise WalkCancelled("check cancelled")
        if self.at is not None and time.monotonic() > self.at:
            raise WalkTimeout("check deadline exceeded")


DeadlineSpec = Union[None, float, Deadline]


def as_deadline(spec: DeadlineSpec) -> Optional[Deadline]:
    """A ``Deadline`` for what callers pass (None, a monotonic time, or a ``Deadline``)."""
    if spec is None or isinstance(spec, Deadline):
        return spec
    return Deadline(float(spec))
