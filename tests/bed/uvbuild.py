"""The UV kernel build as something a person can wait for: started in the background, with
a progress line and an estimate (the demo's first result must not wait for it, issue 16).

The estimate counts the compiler's ``CC`` lines in the build log against the count a
finished build of the same series logged (measured here: 1269 for 6.1, 1351 for 6.12, with
the allnoconfig-based fragment), and extrapolates the rate seen so far; the final link (vmlinux with BTF and kallsyms) follows.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from . import cache
from .kernels import UV_TAGS, uv_cache_name

CC_LINES = {"6.1": 1269, "6.12": 1351}


def cached(series: str = "6.1") -> bool:
    return cache.cached(uv_cache_name(series))


class Build:
    """``python -m tests.bed.kernels uv`` in a session of its own, niced, logged."""

    def __init__(self, series: str = "6.1") -> None:
        self.series = series
        self.log = cache.cache_root() / f"{UV_TAGS[series]}-build.log"
        self.scratch = cache.scratch(uv_cache_name(series))
        self.t0 = time.monotonic()
        self.first_cc: Optional[float] = None
        self.first_done = 0
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["nice", "-n", "10", sys.executable, "-m", "tests.bed.kernels", UV_TAGS[series]],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=Path(__file__).resolve().parents[2])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait()

    def _compiled(self) -> int:
        try:
            with open(self.scratch / "build.log", "rb") as f:
                return sum(1 for line in f if line.startswith(b"  CC "))
        except OSError:
            return 0

    def progress(self) -> str:
        """One line: what the build is doing, how far, and roughly how long is left (the
        rate is measured from the first sample that saw the compiler at work)."""
        mins = (time.monotonic() - self.t0) / 60
        done, total = self._compiled(), CC_LINES[self.series]
        if not done:
            return (f"UV kernel {self.series}: fetching and configuring the source "
                    f"({mins:.0f} min so far; ~{total} objects to compile)")
        now = time.monotonic()
        if self.first_cc is None:
            self.first_cc, self.first_done = now, done
        if done >= total:
            return f"UV kernel {self.series}: linking vmlinux (BTF, kallsyms), nearly done"
        pct = 100 * done // total
        rate = (done - self.first_done) / (now - self.first_cc) if now > self.first_cc else 0
        left = f"about {(total - done) / rate / 60 + 1:.0f} min left" if rate > 0 else \
            "estimating"
        return f"UV kernel {self.series}: {pct}% compiled ({done}/~{total} objects), {left}"

    def wait(self, every: float = 2.0) -> int:
        """Wait for the build, showing progress: redrawn in place on a terminal, one line a
        minute otherwise.  Returns its exit status."""
        tty = sys.stderr.isatty()
        last = 0.0
        while self.proc.poll() is None:
            line = self.progress()
            if tty:
                print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
            elif time.monotonic() - last >= 60:
                print(line, file=sys.stderr, flush=True)
                last = time.monotonic()
            time.sleep(every)
        if tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        return self.proc.returncode
