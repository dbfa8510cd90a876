"""``mmrwatch check``: a one-shot live check for Nagios, Icinga and NRPE.

Plugin API: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (usage errors and anything that
keeps us from judging, too), one status line with performance data, details below it.
A live problem is confirmed by a second walk before it is reported, as in ``serve``.
"""
from __future__ import annotations

import argparse
import time

from mmrwatch.collectors.vocab import CRITICAL, WARNING

from .exits import NAGIOS_CRITICAL, NAGIOS_OK, NAGIOS_UNKNOWN, NAGIOS_WARNING
from .snapshot import Snapshot

LABEL = {NAGIOS_OK: "OK", NAGIOS_WARNING: "WARNING", NAGIOS_CRITICAL: "CRITICAL",
         NAGIOS_UNKNOWN: "UNKNOWN"}


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
    """Run the check; return (exit code, output).  Raises ``MmrwatchError`` (the CLI makes
    it UNKNOWN through ``exits``), a timeout included."""
    from mmrwatch.collectors import engine
    from mmrwatch.collectors.deadline import Deadline

    from . import onecheck, targetopts
    sources = engine.default_sources(args.ranges)
    started, deadline = time.time(), Deadline(time.monotonic() + args.timeout)
    snap = onecheck.run(lambda: targetopts.open_target(args), sources, deadline, args.timeout,
                        started)
    code = {CRITICAL: NAGIOS_CRITICAL, WARNING: NAGIOS_WARNING}.get(snap.verdict, NAGIOS_OK)
    text = snap.status_line()
    if code != NAGIOS_OK:
        text = f"{snap.problem_ranges} of {len(snap.ranges)} ranges: {text}"
    details = "".join(f"\n{p}" for p in snap.problems)
    return code, line(code, text, snap) + details
