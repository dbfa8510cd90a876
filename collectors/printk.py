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
once per program (``prog.cache``): crash forensics and the UV boot-line parser share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import drgn

from .kernel import lookup

LOG_BUF_LEN_MAX = 1 << 31        # kernel/printk/printk.c: "log_buf over 2G is not supported"
_CACHE_KEY = "mmrwatch.printk"
_ID_BITS = 62                    # DESC_FLAGS_SHIFT on 64-bit: ids are 62 bits


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


def _lockless(prog: drgn.Program, prb: drgn.Object) -> Log:
    from drgn.helpers.linux.printk import get_printk_records
    ring = prb.desc_ring
    count_bits = int(ring.count_bits)
    if not 0 <= count_bits < 32:
        raise ValueError(f"printk desc_ring.count_bits {count_bits} (a ring of 2^{count_bits} "
                         "descriptors is no kernel's)")
    head = ring.head_id.counter.value_() & ((1 << _ID_BITS) - 1)
    tail = ring.tail_id.counter.value_() & ((1 << _ID_BITS) - 1)
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
