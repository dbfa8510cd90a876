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

The ring is read by ``printk`` (the one reader of the kernel's log, shared with crash
forensics): ``printk.kernel_lines`` finds the lines by their prefix without copying a large
ring's descriptors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import drgn

from . import faults, printk

_MAP = re.compile(r"UV: Map (\w+)_HI 0x([0-9a-fA-F]+) - 0x([0-9a-fA-F]+)"
                  r"(?: (UC|WB|uc|wb))?(?: \((\d+) segments\))?\s*$")
_CACHE_KEY = "mmrwatch.uv_boot_maps"
_PREFIX = "UV: Map "


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
    lines, _ = faults.catch(lambda: printk.kernel_lines(prog, _PREFIX))
    out: dict[str, LoggedMap] = {}
    for line in lines or []:
        m = parse(line)
        if m is not None:
            out[m.id] = m
    prog.cache[_CACHE_KEY] = out
    return out
