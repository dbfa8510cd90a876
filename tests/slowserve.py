"""``mmrwatch serve`` (the real daemon, its real signal handling) on a synthetic kernel whose
check is slow, for the shutdown tests (issue 15 item 12).

    python -m tests.slowserve MODE [serve options ...]

The kernel is a ``SynthKernel`` whose 64 MiB direct map is made of 4 KiB pages (one PTE
table per 2 MiB: every check reads each), checked as one configured range in both mms.
Its physical memory is read through a callback that makes the check slow in one way:

- ``cpu``: each table read computes for 0.1 s (a compute-bound walk holding the GIL);
- ``sleep``: each table read waits 0.2 s (slow I/O, like /proc/kcore under TCG);
- ``hang``: the 20th read never returns (a read stuck in the kernel; the GIL released);
- ``hang-open``: opening the kernel never returns (stuck loading debug info).
"""
from __future__ import annotations

import sys
import threading
import time

from mmrwatch.agent import cli, serve
from mmrwatch.collectors import engine
from mmrwatch.collectors.ranges import DIRECT, Expectation, Range
from mmrwatch.collectors.target import Target
from tests.synth import SynthKernel

MODES = ("cpu", "sleep", "hang", "hang-open")


def main() -> int:
    mode = sys.argv[1]
    if mode not in MODES:
        print(f"slowserve: MODE must be one of {', '.join(MODES)}", file=sys.stderr)
        return 64
    k = SynthKernel(ram_mib=64)
    k.direct_map_ram(page=4096)
    k.new_efi_root()
    prog = k.program(live=True)
    ram, reads = k.ram, [0]

    def read(address: int, count: int, offset: int, physical: bool) -> bytes:
        reads[0] += 1
        if mode == "cpu":
            end = time.thread_time() + 0.1
            while time.thread_time() < end:
                pass
        elif mode == "sleep":
            time.sleep(0.2)
        elif mode == "hang" and reads[0] >= 20:
            threading.Event().wait()
        return bytes(ram[offset:offset + count])
    prog.add_memory_segment(0, len(ram), read, True)     # takes precedence over the first

    def opener(_self) -> Target:
        if mode == "hang-open":
            threading.Event().wait()
        return Target(prog, "synth", True, "synth", None, None)
    exps = tuple(Expectation(mm, DIRECT, k.pob, frozenset({"WB"})) for mm in ("init_mm",
                                                                             "efi_mm"))
    rng = Range("direct-map", 0, len(ram), "config", "RAM", expectations=exps)
    serve.Daemon._open = opener                          # type: ignore[method-assign]
    serve.Daemon._sources = lambda _self: [lambda ctx: engine.Collected([rng])]   # type: ignore[method-assign]
    return cli.main(["serve", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
