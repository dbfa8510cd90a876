"""Reverse lookup: every virtual address that maps a physical address, in each mm.

A support engineer holding an address from a firmware log ("MMR at 0xfa000000") asks
"where can the kernel or the firmware reach this?".  The answer needs a full walk of each
table (nothing indexes PA -> VA), done with the same walker as everything else; each
table page is still read once, and linear runs are matched arithmetically, not per page.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Optional

from .mm import AddressSpace
from .pagetable import Walker
from .ptdump import Marker


@dataclass(frozen=True)
class Hit:
    mm: str
    pa: int
    va: int
    page_size: int
    cache_mode: str
    perms: str
    area: str                # the kernel's address marker for va ("Low Kernel Mapping", ...)


def _area(markers: list[Marker], starts: list[int], va: int, user_end: int) -> str:
    i = bisect.bisect_right(starts, va) - 1
    name = markers[i].name if i >= 0 else None
    if va < user_end or name == "User Space":
        return "user half (1:1 when VA == PA)"
    return name or "?"


def reverse(walker: Walker, space: AddressSpace, pas: list[int],
            markers: list[Marker], progress: Callable[[str], None] = lambda s: None
            ) -> list[Hit]:
    """Every mapping of each of ``pas`` in ``space`` (empty when it has no table)."""
    if not space.has_table:
        return []
    want = sorted(set(pas))
    hits: list[Hit] = []
    arch = walker.arch
    user, kernel = arch.halves()
    starts = [m.start for m in markers]

    def leaf(level: int, va: int, size: int, val: int, eff: int) -> None:
        if not arch.present(val):
            return
        base = arch.entry_pa(val, level)
        i = bisect.bisect_left(want, base)
        while i < len(want) and want[i] < base + size:
            pa = want[i]
            va_hit = va + (pa - base)
            hits.append(Hit(space.name, pa, va_hit, arch.level_size(level),
                            arch.cache_mode(val, level), arch.perms(eff),
                            _area(markers, starts, va_hit, user[1])))
            i += 1

    for (lo, hi), half in ((user, "user"), (kernel, "kernel")):
        progress(f"walking {space.name} ({half} half)")
        walker.walk(space.root_pa, lo, hi, leaf)
    return sorted(hits, key=lambda h: (h.pa, h.va))


def parse_phys(text: str) -> Optional[int]:
    """A physical address as typed: 0x-hex, or plain hex like crash's (``fa000000``)."""
    t = text.strip().lower()
    try:
        v = int(t, 16) if not t.startswith("0x") else int(t, 0)
    except ValueError:
        return None
    return v if 0 <= v < 1 << 52 else None
