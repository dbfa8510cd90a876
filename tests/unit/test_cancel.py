"""Cancelling a check from another thread (issue 15 item 12): the walker consults its
``Deadline`` before every table read and every 64 tables walked, so a stopping daemon's
check ends at once; the monitor publishes nothing for a cancelled check."""
import threading
import time

import pytest

from mmrwatch.agent.monitor import Monitor
from mmrwatch.collectors import engine, x86
from mmrwatch.collectors.pagetable import (Deadline, TableReader, WalkCancelled, WalkTimeout,
                                           Walker, extents)
from mmrwatch.collectors.ranges import DIRECT, Expectation, Range
from mmrwatch.collectors.target import Target
from tests.synth import KERNEL, SynthKernel

ARCH = x86.X86_64(4, (1 << 52) - 1)


def _kernel() -> SynthKernel:
    k = SynthKernel(ram_mib=16)
    k.direct_map_ram(page=4096)          # 8 PTE tables: 8 reads below the upper levels
    return k


def test_cancel_between_table_reads():
    k = _kernel()
    prog = k.program()
    cancel = threading.Event()
    reads = []

    def read(pa, n):
        reads.append(pa)
        if len(reads) == 3:
            cancel.set()                   # as SIGTERM's handler does, from another thread
        return prog.read(pa, n, True)
    w = Walker(TableReader(read, deadline=Deadline(None, cancel)), ARCH)
    with pytest.raises(WalkCancelled):
        list(extents(w, k.init_root, k.pob, k.pob + len(k.ram)))
    assert len(reads) == 3                 # not one read more
    assert issubclass(WalkCancelled, WalkTimeout)   # callers that only know timeouts stop too


def test_cancel_reaches_a_walk_that_reads_nothing():
    """A walk over cached tables (a page of pointers to one PTE table, not linear: every
    other entry read-only) reads no page, so the check every 64 tables walked must stop it."""
    k = SynthKernel(ram_mib=8)
    pte = k.alloc()
    for i in range(512):
        k.write_entry(pte, i, (i << 12) | (KERNEL & ~(x86.RW if i & 1 else 0)))
    pmd = k.table_for(k.init_root, k.pob, x86.PMD)
    for i in range(512):
        k.write_entry(pmd, i, pte | 0x63)
    prog = k.program()
    cancel = threading.Event()
    r = TableReader(lambda pa, n: prog.read(pa, n, True), deadline=Deadline(None, cancel))
    w = Walker(r, ARCH)
    list(extents(w, k.init_root, k.pob, k.pob + (1 << 30)))       # warm: every page cached
    n = r.reads
    cancel.set()
    with pytest.raises(WalkCancelled):
        list(extents(Walker(r, ARCH), k.init_root, k.pob, k.pob + (1 << 30)))
    assert r.reads == n
    assert r.deadline.cancel is cancel


def test_plain_deadline_still_times_out():
    k = _kernel()
    prog = k.program()
    w = Walker(TableReader(lambda pa, n: prog.read(pa, n, True),
                           deadline=time.monotonic() - 1), ARCH)
    with pytest.raises(WalkTimeout) as e:
        list(extents(w, k.init_root, k.pob, k.pob + len(k.ram)))
    assert not isinstance(e.value, WalkCancelled)


def test_monitor_stop_cancels_the_check_and_publishes_nothing():
    k = _kernel()
    k.new_efi_root()
    prog = k.program(live=True)
    ram = k.ram
    started = threading.Event()

    def slow(addr, n, off, phys):
        started.set()
        time.sleep(0.05)
        return bytes(ram[off:off + n])
    prog.add_memory_segment(0, len(ram), slow, True)
    t = Target(prog, "synth", True, "synth", None, None)
    exps = tuple(Expectation(mm, DIRECT, k.pob, frozenset({"WB"})) for mm in ("init_mm",
                                                                             "efi_mm"))
    rng = Range("ram", 0, len(ram), "config", "RAM", expectations=exps)
    m = Monitor(lambda: t, lambda: [lambda ctx: engine.Collected([rng])], 300, 600)
    before = m.state
    th = threading.Thread(target=m.run_once)
    th.start()
    assert started.wait(10)
    t0 = time.monotonic()
    m.stop()
    th.join(10)
    assert not th.is_alive() and time.monotonic() - t0 < 1.0     # one 50 ms read, not 8+
    assert m.state is before and m.busy_since is None          # no "timeout" published
    m2 = Monitor(lambda: t, lambda: [lambda ctx: engine.Collected([rng])], 300, 600)
    prog.add_memory_segment(0, len(ram), lambda a, n, off, p: bytes(ram[off:off + n]), True)
    m2.run_once()                                   # the same check, not stopped: succeeds
    assert m2.state[0].success and m2.state[0].runs == 1
