"""Render a table tree exactly like the kernel's ``/sys/kernel/debug/page_tables/*``.

This re-implements ``note_page()`` of ``arch/x86/mm/dump_pagetables.c`` (the generic
ptdump since v5.6, "x86: mm: convert dump_pagetables to use walk_page_range") on top of our
walker, with the architecture's ``printk_prot()``, walk ranges and fallback markers taken
from the walker's ``Arch`` object, so engineers can ``diff`` our output against the
kernel's own.  The walker reports coalesced runs; the kernel reports every entry.  The
two print the same lines because a run has one set of flags, except where the kernel
would notice a marker boundary at an entry inside a run: runs are split there, one entry
at a time while a marker is pending, just as the kernel's per-entry calls would.

Markers come from the kernel's own ``address_markers`` array when it is in memory (DWARF
names the static), so randomised bases (KASLR) and config-dependent entries are exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import drgn

from .arch import Arch
from .kernel import KernelFacts, lookup
from .pagetable import Walker

_UNITS = "BKMGTPE"
_END = 1 << 64
_MAX_MARKERS = 64           # x86 has about 20


@dataclass(frozen=True)
class Marker:
    start: int
    name: Optional[str]
    max_lines: int = 0


def kernel_markers(prog: drgn.Program, facts: KernelFacts) -> list[Marker]:
    """The kernel's ``address_markers`` (exact), or the architecture's v6.1-shaped
    fallback."""
    arr = lookup(prog, "address_markers")
    if arr is not None:
        out = []
        # DWARF knows the array's length; BTF-declared it is incomplete: both end at the
        # kernel's terminator { -1, NULL } (a bound keeps garbage from running on)
        n = arr.type_.length if arr.type_.length is not None else _MAX_MARKERS
        for i in range(min(n, _MAX_MARKERS)):
            m = arr[i]
            name = m.name.string_().decode() if m.name.value_() else None
            out.append(Marker(m.start_address.value_(), name, int(m.max_lines)))
            if name is None and m.start_address.value_() == _END - 1:
                break
        return out
    vals = [lookup(prog, n) for n in ("vmalloc_base", "vmemmap_base")]
    bases = [v.value_() if v is not None else 0 for v in vals]
    return [Marker(*m) for m in facts.arch.fallback_markers(facts.page_offset_base, *bases)]


class _State:
    """``struct pg_state`` and ``note_page()``."""

    def __init__(self, markers: list[Marker], arch: Arch) -> None:
        self.markers = markers
        self.arch = arch
        self.mi = 0
        self.level = -1
        self.prot = self.eff = 0
        self.start = 0
        self.nlines = 0
        self.out: list[str] = []

    def next_marker(self) -> int:
        return self.markers[self.mi + 1].start if self.mi + 1 < len(self.markers) else _END

    def note(self, addr: int, level: int, val: int, eff: int) -> None:
        new_prot = val & self.arch.flags_mask
        new_eff = eff if val else 0
        if self.level == -1:
            self.prot, self.eff, self.level, self.mi, self.nlines = new_prot, new_eff, level, 0, 0
            self.out.append(f"---[ {self.markers[0].name} ]---")
            return
        nm = self.next_marker()
        if new_prot == self.prot and new_eff == self.eff and level == self.level and addr < nm:
            return
        m = self.markers[self.mi]
        if not m.max_lines or self.nlines < m.max_lines:
            delta, u = (addr - self.start) & (_END - 1), 0
            while not delta & 1023 and u < len(_UNITS) - 1 and delta:
                delta >>= 10
                u += 1
            self.out.append(f"0x{self.start:016x}-0x{addr:016x}   {delta:9d}{_UNITS[u]} "
                            + self.arch.prot_columns(self.prot, self.level))
        self.nlines += 1
        if addr >= nm:
            if m.max_lines and self.nlines > m.max_lines:
                skip = self.nlines - m.max_lines
                self.out.append(f"... {skip} entr{'y' if skip == 1 else 'ies'} skipped ... ")
            self.mi += 1
            self.nlines = 0
            self.out.append(f"---[ {self.markers[self.mi].name} ]---")
        self.start, self.prot, self.eff, self.level = addr, new_prot, new_eff, level

    def run(self, level: int, va: int, size: int, val: int, eff: int, esz: int) -> None:
        """A run of equal-flag entries: one note per entry only where a marker intervenes.

        ``esz`` is the size of one entry (not derived from ``level``: a folded p4d table
        has 512 GiB entries but reports its holes as "pgd").
        """
        end = va + size
        while va < end:
            self.note(va, level, val, eff)
            nm = self.next_marker()
            nxt = va + esz
            if nm > nxt:
                # Nothing can change before the entry that reaches the pending marker.
                nxt = max(nxt, min(end, (nm + esz - 1) // esz * esz))
            va = nxt


def render(walker: Walker, root_pa: int, markers: list[Marker]) -> list[str]:
    """The kernel-format dump of the table tree at ``root_pa``."""
    arch = walker.arch
    st = _State(markers, arch)

    def leaf(level: int, va: int, size: int, val: int, eff: int) -> None:
        st.run(level, va, size, val, eff, arch.level_size(level))

    def hole(level: int, va: int, size: int) -> None:
        # real_depth() in mm/pagewalk.c: with the levels above the root folded (x86's
        # 4-level p4d table, PTRS_PER_P4D == 1) a hole in the root is reported at depth
        # 0, "pgd".
        st.run(0 if level == arch.top else level, va, size, 0, 0, arch.level_size(level))

    for lo, hi in arch.ptdump_ranges():
        walker.walk(root_pa, lo, hi, leaf, hole, follow_nonpresent=True)
    st.note(0, -1, 0, 0)   # "Flush out the last page"
    return st.out
