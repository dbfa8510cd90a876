"""CPU time per test, beside pytest's wall-clock ``--durations``.

The suite's time budget (issue 14: a warm run within 25 minutes on 2 cores) is spent in
QEMU guests under TCG, kernel builds and drgn, and whether two streams of tests can share
the machine depends on how much of each test's wall time is CPU and how much is waiting
(a guest booting its firmware, Prometheus evaluating an alert's ``for:``).  Wall time alone
cannot tell those apart, so this plugin adds, per test, the CPU seconds of pytest and of
every child it reaped (guests, CLI runs), and one line for the whole session: CPU seconds,
wall seconds, and their ratio (cores kept busy on average).
"""
from __future__ import annotations

import resource
import time

import pytest

_spent: dict[str, tuple[float, float]] = {}     # nodeid -> (cpu s, wall s)
_start: tuple[float, float] = (0.0, 0.0)


def _cpu() -> float:
    """User + system seconds of this process and of its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def pytest_sessionstart(session) -> None:
    global _start
    _start = (_cpu(), time.monotonic())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    c0, t0 = _cpu(), time.monotonic()
    yield
    _spent[item.nodeid] = (_cpu() - c0, time.monotonic() - t0)


def pytest_terminal_summary(terminalreporter) -> None:
    cpu, wall = _cpu() - _start[0], time.monotonic() - _start[1]
    if not _spent or wall <= 0:
        return
    tr = terminalreporter
    tr.section("CPU time (pytest + reaped children: guests, CLI runs)")
    for nodeid, (c, w) in sorted(_spent.items(), key=lambda kv: -kv[1][0])[:8]:
        tr.write_line(f"{c:8.1f}s cpu {w:8.1f}s wall  {nodeid}")
    tr.write_line(f"session: {cpu:.0f} s CPU in {wall:.0f} s wall = {cpu / wall:.2f} cores "
                  "busy on average")
