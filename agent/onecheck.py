"""One live-or-dump check as the daemon and the Nagios plugin both run it:
open -> check -> confirm -> snapshot.

``serve`` (``monitor.Monitor``) and ``mmrwatch check`` (``nagios.run``) must judge a kernel
the same way: the same deadline over opening and walking, the same second walk that drops
live mismatches the page tables no longer show (``engine.confirm``), the same snapshot.  So
the sequence is written once, here; they differ only in how the target is opened (the
daemon keeps it open between checks) and in what they do with the snapshot.
"""
from __future__ import annotations

from typing import Callable

from mmrwatch.collectors import engine
from mmrwatch.collectors.deadline import Deadline, WalkCancelled, WalkTimeout
from mmrwatch.collectors.errors import CheckTimeout
from mmrwatch.collectors.target import Target

from .snapshot import Snapshot, from_result


def run(open_target: Callable[[], Target], sources: list[engine.RangeSource],
        deadline: Deadline, timeout: float, started: float) -> Snapshot:
    """Open (``open_target``), check and confirm before ``deadline``; the snapshot of it.

    ``started`` is the wall-clock start the snapshot reports.  Past the deadline this raises
    ``CheckTimeout`` (kind ``timeout``, naming ``timeout`` seconds); a cancellation
    (``WalkCancelled``: the daemon is stopping) propagates as is, since it is no failure."""
    target = open_target()
    try:
        deadline.check()                 # the time ran out (or a stop came) while opening
        res = engine.run_check(target, sources, deadline=deadline)
        res = engine.confirm(res, deadline)      # a new result: the second walk's verdict
    except WalkCancelled:
        raise
    except WalkTimeout:
        raise CheckTimeout(timeout) from None
    return from_result(res, started)
