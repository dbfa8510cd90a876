"""``mmrwatch check``: a one-shot live check for Nagios, Icinga and NRPE.

Plugin API: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (usage errors and anything that
keeps us from judging, too), one status line with performance data, details below it.
A live problem is confirmed by a second walk before it is reported, as in ``serve``.
"""
from __future__ import annotations

import argparse
import time

from mmrwatch.collectors.check import CRITICAL, WARNING

from .snapshot import Snapshot, from_result

OK_, WARN_, CRIT_, UNKNOWN = 0, 1, 2, 3
LABEL = {OK_: "OK", WARN_: "WARNING", CRIT_: "CRITICAL", UNKNOWN: "UNKNOWN"}


def line(code: int, text: str, snap: Snapshot | None = None) -> str:
    out = f"MMRWATCH {LABEL[code]} - {text}"
    if snap is not None:
        perf = [f"ranges={len(snap.ranges)};;;0"]
        for mm in snap.mm_names:
            perf.append(f"mismatched_{mm}={snap.mismatched(mm)};;0;0;{len(snap.ranges)}")
            perf.append(f"unmapped_{mm}={snap.total('unmapped', mm)}B;;0;0")
        perf.append(f"duration={snap.duration:.3f}s;;;0")
        out += " | " + " ".join(perf)
    return out


def run(args: argparse.Namespace) -> tuple[int, str]:
    """Run the check; return (exit code, output).  Raises the collectors' errors."""
    from mmrwatch.collectors import engine

    from . import targetopts
    from mmrwatch.collectors.pagetable import WalkTimeout
    sources = engine.default_sources(args.ranges)
    t0 = time.time()
    deadline = time.monotonic() + args.timeout
    tgt = targetopts.open_target(args)
    try:
        res = engine.run_check(tgt, sources, deadline=deadline)
        res = engine.confirm(res, deadline)
    except WalkTimeout:
        return UNKNOWN, line(UNKNOWN, f"check did not finish within {args.timeout:g} s")
    snap = from_result(res, t0, res.unconfirmed)
    code = {CRITICAL: CRIT_, WARNING: WARN_}.get(snap.verdict, OK_)
    text = snap.status_line()
    if code != OK_:
        text = f"{snap.problem_ranges} of {len(snap.ranges)} ranges: {text}"
    details = "".join(f"\n{p}" for p in snap.problems)
    return code, line(code, text, snap) + details
