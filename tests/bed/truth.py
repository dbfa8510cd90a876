"""The kernel's own ptdump (``/sys/kernel/debug/page_tables/{kernel,efi}``), captured so
that it describes exactly the memory a dump holds.

The capture must not change what it captures: a forked ``cat`` has its own vmalloc'd stack,
mapped while it reads and gone by the dump, and a process that exited just before may still
have its stack mapped (freed a moment later, deferred).  So one shell reads debugfs with
builtins only (no fork) and stays alive, busy-waiting on builtins, through the whole
sequence:

1. it reads both files twice in a row until the two reads agree (the kernel's page tables
   are quiet: no stack being freed, no kworker being spawned), and says so;
2. the host pauses the guest, keeps that read and dumps; then resumes and releases it;
3. it reads once more, after the dump: if that differs, something changed in the short
   window between step 1 and the pause (a kworker spawned there: seen on 6.12), and the
   host captures again (up to ``ATTEMPTS``).
"""
from __future__ import annotations

import threading
from typing import Callable

from .cache import log
from .qemu import Guest

ATTEMPTS = 3
SETTLE_READS = 20
MMS = ("kernel", "efi")

_SCRIPT = r"""
read_all() {
  for mm in kernel efi; do
    : > /xfer/truth-$1-$mm
    [ -e /sys/kernel/debug/page_tables/$mm ] || continue
    while IFS= read -r line; do printf '%s\n' "$line"; done \
      < /sys/kernel/debug/page_tables/$mm > /xfer/truth-$1-$mm
  done
}
n=0
while :; do
  read_all a$n; read_all b$n
  : > /xfer/truth-ready-$n
  while [ ! -e /xfer/truth-go-$n ] && [ ! -e /xfer/truth-again-$n ]; do :; done
  [ -e /xfer/truth-go-$n ] && break
  n=$((n+1))
done
while [ ! -e /xfer/truth-release ]; do :; done
read_all after
: > /xfer/truth-after-done
"""


def _read(guest: Guest, tag: str) -> dict[str, str]:
    out = {}
    for mm in MMS:
        f = guest.xfer / f"truth-{tag}-{mm}"
        out[mm] = f.read_text() if f.exists() else ""
    return out


def _clean(guest: Guest) -> None:
    for f in guest.xfer.glob("truth-*"):
        f.unlink()


def _once(guest: Guest, dump: Callable[[], None]) -> tuple[dict[str, str], bool]:
    """One capture around ``dump()`` (run with the guest paused): (truth, stable)."""
    _clean(guest)
    t = threading.Thread(target=guest.run, args=(_SCRIPT,), kwargs={"timeout": 900},
                         daemon=True)
    t.start()
    try:
        for n in range(SETTLE_READS):
            guest.wait_file(guest.xfer / f"truth-ready-{n}", 300)
            truth = _read(guest, f"a{n}")
            if truth == _read(guest, f"b{n}") or n == SETTLE_READS - 1:
                break
            (guest.xfer / f"truth-again-{n}").touch()
        with guest.paused():
            (guest.xfer / f"truth-go-{n}").touch()     # seen when it runs again
            dump()
        (guest.xfer / "truth-release").touch()
        guest.wait_file(guest.xfer / "truth-after-done", 300)
    finally:
        (guest.xfer / "truth-release").touch()
        t.join(120)
    return truth, _read(guest, "after") == truth


def capture(guest: Guest, dump: Callable[[], None]) -> dict[str, str]:
    """The kernel's ptdump of the state ``dump()`` saves (called with the guest paused)."""
    for attempt in range(1, ATTEMPTS + 1):
        truth, stable = _once(guest, dump)
        if stable:
            break
        log(f"kernel page tables changed around the dump (attempt {attempt}): capturing "
            "again")
    _clean(guest)
    return truth
