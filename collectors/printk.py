"""The kernel's log records, read with bounds a corrupt buffer cannot break.

drgn's ``get_printk_records`` trusts the buffer's indices: on a pre-5.10 structured log
(``log_buf`` + ``struct printk_log``) a corrupt ``log_next_idx`` it never reaches sends it
round the buffer forever (a zero-length record means "wrapped, back to 0"), and on a v5.10+
lockless ring a ``tail_id`` .. ``head_id`` span larger than the descriptor ring walks up to
2^62 ids.  A report must never hang on a dump, so:

* structured logs are walked here: the indices must lie in the buffer (``log_buf_len`` at
  most ``LOG_BUF_LEN_MAX``, 2 GiB, kernel/printk/printk.c), a record must hold its own
  header and stay inside the buffer, the buffer wraps at most once, and no more bytes are
  walked than it has;
* lockless rings go to drgn only once the span it will walk fits the descriptor ring.

What stops the walk early is returned as ``Log.problem`` (the records before it are kept);
an unreadable buffer raises the kernel fault for the caller's boundary (``faults``).  Read
once per program (``prog.cache``).  This module is the one reader of the log: crash
forensics takes every record (``read_log``), the UV boot-line parser only the kernel's own
lines with a prefix (``kernel_lines``).

A UV machine often boots with a log buffer of many MiB, and drgn's generic reader copies the
whole descriptor and info arrays (several times the text), so ``kernel_lines`` scans a
v5.10+ text ring for the prefix and reads only the matching records' descriptor and info.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import drgn

from .kernel import lookup

LOG_BUF_LEN_MAX = 1 << 31        # kernel/printk/printk.c: "log_buf over 2G is not supported"
_CACHE_KEY = "mmrwatch.printk"
_ID_BITS = 62                    # DESC_FLAGS_SHIFT on 64-bit: ids are 62 bits
_ID_MASK = (1 << _ID_BITS) - 1
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Record:
    text: str
    facility: int


@dataclass(frozen=True)
class Log:
    records: list[Record] = field(default_factory=list)
    problem: str = ""            # why the walk stopped before log_next_idx ("" when it did not)


def read_log(prog: drgn.Program) -> Log:
    """Every record of the kernel's log buffer, oldest first (see the module doc)."""
    cached = prog.cache.get(_CACHE_KEY)
    if cached is None:
        prb = lookup(prog, "prb")
        cached = _lockless(prog, prb) if prb is not None else _structured(prog)
        prog.cache[_CACHE_KEY] = cached
    return cached


def kernel_lines(prog: drgn.Program, prefix: str) -> list[str]:
    """The text of every kernel record (facility 0: userspace writing to /dev/kmsg always
    gets a non-zero one, so it cannot forge these) that starts with ``prefix``, oldest
    first.  Raises like ``read_log``."""
    lines = _scan_text_ring(prog, prefix.encode())
    if lines is None:
        lines = [r.text for r in read_log(prog).records
                 if r.facility == 0 and r.text.startswith(prefix)]
    return lines


def _count_bits(ring: drgn.Object) -> int:
    """``desc_ring.count_bits``, checked: both ring readers size their work by it."""
    count_bits = int(ring.count_bits)
    if not 0 <= count_bits < 32:
        raise ValueError(f"printk desc_ring.count_bits {count_bits} (a ring of 2^{count_bits} "
                         "descriptors is no kernel's)")
    return count_bits


def _lockless(prog: drgn.Program, prb: drgn.Object) -> Log:
    from drgn.helpers.linux.printk import get_printk_records
    ring = prb.desc_ring
    count_bits = _count_bits(ring)
    head = ring.head_id.counter.value_() & _ID_MASK
    tail = ring.tail_id.counter.value_() & _ID_MASK
    if (head - tail) % (1 << _ID_BITS) >= 1 << count_bits:
        raise ValueError(f"printk desc_ring tail_id {tail:#x} .. head_id {head:#x} spans more "
                         f"ids than its {1 << count_bits} descriptors")
    return Log([Record(r.text.decode(errors="replace"), r.facility)
                for r in get_printk_records(prog)])


def _structured(prog: drgn.Program) -> Log:
    """The pre-5.10 log: ``struct printk_log`` records from ``log_first_idx`` on."""
    buf = lookup(prog, "log_buf")
    if buf is None:
        return Log()
    size = int(prog["log_buf_len"])
    first, nxt = int(prog["log_first_idx"]), int(prog["log_next_idx"])
    if not 0 < size <= LOG_BUF_LEN_MAX:
        raise ValueError(f"log_buf_len {size:#x} is no log buffer size (1..2 GiB)")
    if first >= size or nxt > size:            # next == size: a buffer filled to its end
        raise ValueError(f"log_first_idx {first:#x} / log_next_idx {nxt:#x} outside the "
                         f"{size:#x}-byte log buffer")
    try:
        rec_t = prog.type("struct printk_log")
    except LookupError:
        rec_t = prog.type("struct log")        # before v3.11 (RHEL 7)
    return _walk(prog, buf.value_(), size, first, nxt, rec_t)


def _walk(prog: drgn.Program, base: int, size: int, first: int, nxt: int,
          rec_t: drgn.Type) -> Log:
    hdr = drgn.sizeof(rec_t)
    out: list[Record] = []
    pos, walked, wrapped = first, 0, False
    while pos != nxt:
        if walked > size:
            return Log(out, f"log records run past log_next_idx {nxt:#x}")
        if pos + hdr > size:
            return Log(out, f"log record at {pos:#x} has no room for its header")
        rec = drgn.Object(prog, rec_t, address=base + pos).read_()
        length = int(rec.len)
        if length == 0:                    # the writer wrapped here
            if wrapped:
                return Log(out, f"log buffer wraps twice (at {pos:#x})")
            wrapped, walked, pos = True, walked + size - pos, 0
            continue
        if length < hdr or pos + length > size:
            return Log(out, f"log record at {pos:#x} has length {length:#x}")
        text = prog.read(base + pos + hdr, min(int(rec.text_len), length - hdr))
        out.append(Record(text.decode(errors="replace"), int(rec.facility)))
        pos, walked = pos + length, walked + length
    return Log(out)


def _scan_text_ring(prog: drgn.Program, prefix: bytes) -> Optional[list[str]]:
    """Kernel records that start with the prefix, found in the v5.10+ text ring; None on
    kernels without it.  A hit counts only when its block's descriptor still carries the
    block's id in a committed/finalized state and points at it (text of overwritten records
    lingers in the ring), and its info says facility 0."""
    prb = lookup(prog, "prb")
    if prb is None or not prb.type_.type.has_member("text_data_ring"):
        return None
    dr, tr = prb.desc_ring, prb.text_data_ring
    bits = int(tr.size_bits)
    if not 0 < bits <= 31:            # the ring is the log buffer: at most 2 GiB
        raise ValueError(f"printk text_data_ring.size_bits {bits}")
    size = 1 << bits
    raw = prog.read(tr.data.value_(), size)
    mask = (1 << _count_bits(dr)) - 1
    desc_t, info_t = prog.type("struct prb_desc"), prog.type("struct printk_info")
    descs, infos = dr.descs.value_(), dr.infos.value_()
    good = {int(prog[n].value_()) for n in ("desc_committed", "desc_finalized")}
    out = []
    pos = raw.find(prefix)
    while pos >= 8:
        rid = int.from_bytes(raw[pos - 8:pos], "little") & _ID_MASK
        d = drgn.Object(prog, desc_t, address=descs + (rid & mask) * desc_t.size)
        sv = d.state_var.counter.value_() & _U64
        begin = d.text_blk_lpos.begin.value_() & _U64
        nxt = d.text_blk_lpos.next.value_() & _U64
        wrapped = pos == 8 and begin // size != nxt // size   # data moved to the ring start
        if sv & _ID_MASK == rid and sv >> _ID_BITS in good and \
                ((begin & (size - 1)) == pos - 8 or wrapped):
            info = drgn.Object(prog, info_t, address=infos + (rid & mask) * info_t.size)
            if info.facility.value_() == 0:
                out.append(raw[pos:pos + info.text_len.value_()].decode(errors="replace"))
        pos = raw.find(prefix, pos + 1)
    return out
