"""What the UV kernel says it mapped, from its own boot messages in the printk ring.

``map_high()`` (v5.10+) logs every high mapping it makes:
``UV: Map MMR_HI 0x<start> - 0x<end> UC (<n> segments)`` (likewise ``GRU_HI`` and, on UV2
only, ``MMIOH_HI``).  Two things are nowhere else in kernel memory:

* MMIOH: the kernel keeps no record of it besides this line;
* MMR_HI as mapped: ``map_mmr_high()`` maps from the MMR overlay *register*, while
  ``hub_info->global_mmr_base`` (what discovery reads) comes from the BIOS GAM table on
  UV4/UV5.  The log line is the kernel's own account of which one it used.

Only kernel records (facility 0) count: userspace writing to /dev/kmsg always gets a
non-zero facility, so it cannot forge these lines.  On a long-running system the boot lines
may have been overwritten: then there is simply nothing to add.  Read once per program
(``prog.cache``): boot messages never change.

The ring can be large (UV machines often boot with a log buffer of many MiB, and drgn's
generic reader copies the whole descriptor and info arrays, several times the text), so on
v5.10+ lockless rings the text ring is scanned for the line's prefix and only the matching
records' descriptor and info are read; older logs go through ``printk.read_log`` (bounded).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import drgn

from . import faults, printk
from .kernel import lookup

_MAP = re.compile(r"UV: Map (\w+)_HI 0x([0-9a-fA-F]+) - 0x([0-9a-fA-F]+)"
                  r"(?: (UC|WB|uc|wb))?(?: \((\d+) segments\))?\s*$")
_CACHE_KEY = "mmrwatch.uv_boot_maps"
_PREFIX = b"UV: Map "
_U64 = (1 << 64) - 1
_FLAGS_SHIFT = 62                 # DESC_FLAGS_SHIFT on 64-bit
_ID_MASK = (1 << _FLAGS_SHIFT) - 1


@dataclass(frozen=True)
class LoggedMap:
    """One ``UV: Map <id>_HI`` line: a range the kernel mapped at boot."""

    id: str                    # "MMR", "GRU", "MMIOH", ... (without "_HI")
    start: int
    end: int
    mode: Optional[str]        # "UC" / "WB" (v5.10+)
    segments: Optional[int]

    @property
    def size(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.id}_HI 0x{self.start:x}-0x{self.end:x}"


def parse(text: str) -> Optional[LoggedMap]:
    """A ``LoggedMap`` from one log line, or None when the line is something else."""
    m = _MAP.match(text)
    if not m:
        return None
    start, end = int(m.group(2), 16), int(m.group(3), 16)
    if end <= start:
        return None
    mode = m.group(4).upper() if m.group(4) else None
    return LoggedMap(m.group(1), start, end, mode, int(m.group(5)) if m.group(5) else None)


def boot_maps(prog: drgn.Program) -> dict[str, LoggedMap]:
    """Every high mapping the kernel logged, by id (the last line of an id wins); none
    when the log cannot be read (``faults``): there is then nothing to add."""
    cached = prog.cache.get(_CACHE_KEY)
    if cached is not None:
        return cached
    lines, _ = faults.catch(lambda: _lines(prog))
    out: dict[str, LoggedMap] = {}
    for line in lines or []:
        m = parse(line)
        if m is not None:
            out[m.id] = m
    prog.cache[_CACHE_KEY] = out
    return out


def _lines(prog: drgn.Program) -> list[str]:
    lines = _lockless_lines(prog)
    if lines is None:
        lines = [r.text for r in printk.read_log(prog).records if r.facility == 0]
    return lines


def _lockless_lines(prog: drgn.Program) -> Optional[list[str]]:
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
    count_bits = int(dr.count_bits)
    if not 0 <= count_bits < 32:
        raise ValueError(f"printk desc_ring.count_bits {count_bits}")
    mask = (1 << count_bits) - 1
    desc_t, info_t = prog.type("struct prb_desc"), prog.type("struct printk_info")
    descs, infos = dr.descs.value_(), dr.infos.value_()
    good = {int(prog[n].value_()) for n in ("desc_committed", "desc_finalized")}
    out = []
    pos = raw.find(_PREFIX)
    while pos >= 8:
        rid = int.from_bytes(raw[pos - 8:pos], "little") & _ID_MASK
        d = drgn.Object(prog, desc_t, address=descs + (rid & mask) * desc_t.size)
        sv = d.state_var.counter.value_() & _U64
        begin = d.text_blk_lpos.begin.value_() & _U64
        nxt = d.text_blk_lpos.next.value_() & _U64
        wrapped = pos == 8 and begin // size != nxt // size   # data moved to the ring start
        if sv & _ID_MASK == rid and sv >> _FLAGS_SHIFT in good and \
                ((begin & (size - 1)) == pos - 8 or wrapped):
            info = drgn.Object(prog, info_t, address=infos + (rid & mask) * info_t.size)
            if info.facility.value_() == 0:
                out.append(raw[pos:pos + info.text_len.value_()].decode(errors="replace"))
        pos = raw.find(_PREFIX, pos + 1)
    return out
