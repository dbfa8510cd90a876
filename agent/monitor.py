"""The background check loop of ``mmrwatch serve``.

One thread owns drgn: it opens the kernel once (retrying each interval until that works),
runs a check every interval under its own deadline, confirms live problems with a second
walk, and publishes an immutable ``(Health, Snapshot)`` pair.  Readers (scrapes, textfile,
systemd status) take that pair with one attribute read and never wait on a walk.  A failed
check keeps the last good snapshot and is logged once per change of state, not per run.
"""
from __future__ import annotations

import logging
import resource
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import psutil

from mmrwatch.collectors import engine
from mmrwatch.collectors.deadline import Deadline, WalkCancelled
from mmrwatch.collectors.errors import MmrwatchError, bug_line
from mmrwatch.collectors.target import Target
from mmrwatch.collectors.vocab import INTERNAL, STARTING

from . import exits, onecheck
from .snapshot import Snapshot

log = logging.getLogger("mmrwatch")


@dataclass(frozen=True)
class Health:
    """How the collector itself is doing (always exported, even before the first success)."""

    success: bool = False
    error_kind: str = STARTING     # "" when fine, else a collector_error label (exits.LABELS)
    error: str = "no check run yet"
    runs: int = 0
    failures: int = 0
    unconfirmed_total: int = 0
    duration: float = 0.0          # seconds, last attempt
    last_success: Optional[float] = None   # unix time the last good check started
    walk_cpu: float = 0.0          # CPU seconds of the last attempt (walk thread only)
    walk_cpu_total: float = 0.0
    peak_rss: int = 0              # bytes, process high-water mark
    rss: int = 0                   # bytes, after the last attempt


Opener = Callable[[], Target]
SourcesFn = Callable[[], list[engine.RangeSource]]


class Monitor:
    """Runs checks and publishes results; see the module docstring."""

    def __init__(self, opener: Opener, sources: SourcesFn, interval: float, timeout: float,
                 on_cycle: Callable[["Monitor"], None] = lambda m: None,
                 ping: Callable[[], None] = lambda: None, ping_every: float = 0.0) -> None:
        self.opener, self.sources_fn = opener, sources
        self.interval, self.timeout = interval, timeout
        self.on_cycle, self.ping, self.ping_every = on_cycle, ping, ping_every
        self.target: Optional[Target] = None
        self.state: tuple[Health, Optional[Snapshot]] = (Health(), None)
        self.stop_event, self.wake_event = threading.Event(), threading.Event()
        self._sources: Optional[list[engine.RangeSource]] = None
        self._logged: Optional[tuple] = None
        self._proc = psutil.Process()
        self.busy_since: Optional[float] = None   # monotonic start of the check running now
        self.phase = ""                  # what it is doing: "opening the kernel" | "checking"

    # -- one check ------------------------------------------------------------------------
    def run_once(self) -> None:
        """Open the kernel if needed, check it, publish the outcome (never raises).

        ``stop()`` cancels a check in progress at its next table read: nothing is
        published for it."""
        self.busy_since = time.monotonic()
        try:
            self._run_once()
        finally:
            self.busy_since = None

    def _run_once(self) -> None:
        health, snap = self.state
        t_wall, t0, c0 = time.time(), time.monotonic(), time.thread_time()
        new_snap, kind, err = snap, "", ""
        try:
            if self._sources is None:
                self._sources = self.sources_fn()
            new_snap = onecheck.run(self._target, self._sources,
                                    Deadline(t0 + self.timeout, self.stop_event), self.timeout,
                                    t_wall)
        except WalkCancelled:
            log.debug("check cancelled after %.2f s", time.monotonic() - t0)
            return
        except MmrwatchError as e:
            # (usage and oserr have no label: only serve's startup raises them)
            kind, err = exits.outcome(e, daemon=True).label or INTERNAL, str(e)
        except Exception as e:  # a walk must never take the daemon down
            kind, err = INTERNAL, bug_line(e)
            log.debug("check failed", exc_info=True)
        cpu = time.thread_time() - c0
        ok = not kind
        health = replace(
            health, success=ok, error_kind=kind, error=err, runs=health.runs + 1,
            failures=health.failures + (not ok), duration=time.monotonic() - t0,
            last_success=t_wall if ok else health.last_success,
            unconfirmed_total=health.unconfirmed_total + (new_snap.unconfirmed if ok and new_snap else 0),
            walk_cpu=cpu, walk_cpu_total=health.walk_cpu_total + cpu,
            peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            rss=self._proc.memory_info().rss)
        self.state = (health, new_snap)      # one reference swap: readers see old or new
        self._log_change(health, new_snap if ok else None)
        self.on_cycle(self)

    def _target(self) -> Target:
        """The kernel, opened at the first check (and after none succeeded) and kept open."""
        if self.target is None:
            self.phase = "opening the kernel"
            self.target = self.opener()
        self.phase = "checking"
        return self.target

    def reload(self) -> None:
        """Re-read configuration (the ranges file) at the next check, and run it now."""
        self._sources = None
        self.wake_event.set()

    # -- the loop ---------------------------------------------------------------------------
    def loop(self) -> None:
        """Check every ``interval`` until stopped, pinging the watchdog while idle."""
        while not self.stop_event.is_set():
            self.run_once()
            if self.stop_event.is_set():
                return
            self.ping()
            self._sleep(self.interval)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            step = min(left, self.ping_every) if self.ping_every else left
            if self.wake_event.wait(step):
                self.wake_event.clear()
                return
            self.ping()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake_event.set()

    # -- logging ----------------------------------------------------------------------------
    def _log_change(self, health: Health, snap: Optional[Snapshot]) -> None:
        """One log line per change of outcome (journald must not fill with repeats)."""
        key = (health.error_kind, snap.verdict if snap else None, snap.problems if snap else (),
               len(snap.ranges) if snap else 0)
        if key == self._logged:
            return
        self._logged = key
        if not health.success:
            log.error("check failed (%s): %s", health.error_kind, health.error)
        elif snap is not None and snap.problems:
            level = logging.CRITICAL if snap.verdict == "critical" else logging.WARNING
            for line in snap.problems:
                log.log(level, "%s", line)
        elif snap is not None:
            log.info("check ok: %s", snap.status_line())
