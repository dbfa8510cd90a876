"""Kernel mapping churn inside a guest, for the no-false-alarms test (issue 15 item 13).

Run in the guest (``python -m tests.bed.churn --seconds N --out FILE``): for N seconds it
keeps the kernel changing its own page tables the ways a busy fleet machine does, while the
agent checks:

* **vmalloc**: threads started and joined in bursts; every kernel stack is a vmalloc'd
  area mapped into init_mm's vmalloc space and unmapped again (``CONFIG_VMAP_STACK``);
* **BPF programs**: classic BPF socket filters attached and dropped; each is a vmalloc'd
  ``bpf_prog`` (``bpf_prog_alloc()``), and on kernels with the JIT (``bpf_jit_enable``;
  not the test kernels) also compiled into executable module-area memory, then freed;
* **ioremap**: reads of ``/dev/mem`` below 1 MiB outside RAM (the legacy video/BIOS
  window): ``xlate_dev_mem_ptr()`` memremap()s and unmaps each page on every read.

Module load/unload and memory hot-add are not exercised: the test kernel is built without
modules, and the bed's guests have no hot-pluggable memory slots.  Writes a JSON summary
of what was done (counts per kind) to ``--out``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import struct
import threading
import time

SO_ATTACH_FILTER = 26
# "accept every packet": ret #-1
_PROG = struct.pack("HBBI", 0x06, 0, 0, 0xFFFFFFFF)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _threads(n: int = 16) -> int:
    ts = [threading.Thread(target=time.sleep, args=(0.01,)) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n


def _bpf_filters(n: int = 8) -> int:
    """Attach a one-instruction "accept" filter to ``n`` fresh sockets (closed at once)."""
    buf = ctypes.create_string_buffer(_PROG)
    prog = _SockFprog(1, ctypes.addressof(buf))
    raw = bytes(ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog)))
    done = 0
    for _ in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, raw)
            done += 1
    return done


def _devmem(fd: int, pages: int = 8) -> int:
    done = 0
    for i in range(pages):
        try:
            os.pread(fd, 64, 0xC0000 + ((i * 4096) % 0x40000))
            done += 1
        except OSError:
            break
    return done


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    counts = {"thread_stacks": 0, "bpf_filters": 0, "devmem_remaps": 0, "rounds": 0}
    try:
        fd = os.open("/dev/mem", os.O_RDONLY)
    except OSError:
        fd = -1
    jit = open("/proc/sys/net/core/bpf_jit_enable").read().strip() \
        if os.path.exists("/proc/sys/net/core/bpf_jit_enable") else "absent"
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        counts["thread_stacks"] += _threads()
        counts["bpf_filters"] += _bpf_filters()
        if fd >= 0:
            counts["devmem_remaps"] += _devmem(fd)
        counts["rounds"] += 1
    with open(a.out + ".tmp", "w") as f:
        json.dump({**counts, "bpf_jit_enable": jit, "seconds": a.seconds}, f)
    os.rename(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
