"""One page-table walker for every consumer (checks, ptdump, reverse lookups).

Modelled on the kernel's ``mm/pagewalk.c`` + ``mm/ptdump.c``: the walker visits a VA range
of one table tree and reports *runs* to callbacks; what a consumer does with them (merge
extents, print ptdump lines, check a range) is not the walker's business.  What an entry
means (leaf or table, present, its address, its protection) the walker asks the ``Arch``
object it is given (``arch``; ``x86.X86_64``), as ``mm/ptdump.c`` asks its arch callbacks.

Cost model: table pages come from a ``tables.TableReader`` (each read once, cached).
Runs of linear leaves (same flags, contiguous physical addresses) are coalesced; a fully
linear table (``linear.py``) or an empty one is recognised without a per-entry Python loop,
and below a table whole linear children are decided without a call per child.

Robustness: corrupt tables (a loop back to an ancestor, a pointer outside the dump, a PS
bit where the architecture forbids it, a misaligned huge page) end that branch with a
recorded ``WalkError``; the walk never raises for table contents and never loops forever.
Nor does one check walk a shared subtree over and over: a table page is walked at most
once per VA it serves, and for at most ``MAX_SERVED`` VAs (PTE tables ``MAX_SERVED_LEAF``:
the kernel's ESPfix area shares one 2048 times).  A sane tree puts a table page
at one VA (efi_mm reaches init_mm's kernel-half tables at the VAs init_mm does), seldom
two (the UV1 EFI prolog's 1:1 copy of the direct map, Xen PV's ident map); entries beyond
that pointing at an already walked table (a corrupt entry into another part of the tree,
a page of pointers to one table) end their branch with a walk error.  So a check's work is
bounded by the table pages the dump can hold, not by the number of references to them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

from .arch import Arch
from .deadline import Deadline, WalkCancelled, WalkTimeout  # noqa: F401 (the walker's API)
from . import linear
from .tables import TableFault, TableReader  # noqa: F401 (the walker's API)

LeafFn = Callable[[int, int, int, int, int], None]   # level, va, size, val, eff
HoleFn = Callable[[int, int, int], None]              # level, va, size
# distinct VAs one table page is walked for, per check: a PTE table (leaves only: a re-walk
# costs one memo lookup or 512 entries) and a table of tables (a re-walk repeats a subtree).
# The kernel itself shares its ESPfix PTE page 2048 times and the PMD page above it 4 times
# (arch/x86/kernel/espfix_64.c: ESPFIX_PTE_CLONES x ESPFIX_PMD_CLONES x ESPFIX_PUD_CLONES).
MAX_SERVED = 4
MAX_SERVED_LEAF = MAX_SERVED * 512     # every entry of each allowed walk of its parent


@dataclass(frozen=True)
class WalkError:
    """Why one branch of a walk was abandoned."""

    level: int
    va: int
    table_pa: int
    message: str
    level_name: str

    def __str__(self) -> str:
        return (f"{self.level_name} entry for 0x{self.va:016x} "
                f"(table at PA 0x{self.table_pa:x}): {self.message}")


class Walker:
    """Walks one table tree over a VA range, reporting leaf and hole runs."""

    def __init__(self, reader: TableReader, arch: Arch, max_tables: int = 1 << 21) -> None:
        self.reader = reader
        self.arch = arch
        self.linear = linear.for_arch(arch)
        self.max_tables = max_tables
        self.errors: list[WalkError] = []
        # table PA -> (VA base << 3 | level) where it was first walked, for the walker's
        # life (one check); a table met at another VA or level is shared: the other places
        # it was walked (at most MAX_SERVED - 1) are in _also.
        self._served: dict[int, int] = {}
        self._also: dict[int, set[int]] = {}
        # (parent PA, child PA) -> (index in errors, entries, message), for one walk
        self._shared: dict[tuple[int, int], tuple[int, int, str]] = {}
        self._budget = max_tables
        self._follow = False
        self._on_leaf: LeafFn = lambda level, va, size, val, eff: None
        self._on_hole: Optional[HoleFn] = None
        self._shifts = tuple(arch.level_shift(lvl) for lvl in range(len(arch.level_names)))
        self._last_level = len(arch.level_names) - 1
        self._leafy = frozenset(arch.leaf_levels)
        self._last = arch.entries - 1
        self._tmask, self._tbits = arch.table_mask, arch.table_bits

    # -- public API --------------------------------------------------------------------
    def walk(self, root_pa: int, start: int, end: int, on_leaf: LeafFn,
             on_hole: Optional[HoleFn] = None, follow_nonpresent: bool = False) -> None:
        """Visit ``[start, end)`` (canonical VAs within one half; ``end`` may be 2**64).

        ``on_leaf(level, va, size, val, eff)`` gets runs of leaves whose entries differ only
        by a contiguous physical address (``val`` is the first entry, ``eff`` the effective
        protection through the upper levels); ``on_hole(level, va, size)`` gets runs of empty
        entries at the level where the tree ends, as the kernel's ``pte_hole`` does.

        By default the walk has the MMU's semantics: a non-present table entry ends the
        branch as a hole.  ``follow_nonpresent`` gives ``mm/pagewalk.c``'s semantics, which
        ptdump needs to print what the kernel prints: a non-present, non-none entry is
        followed or skipped as the architecture says (``Arch.nonpresent_child``).
        """
        mask = (1 << self.arch.va_bits) - 1
        lo, hi = start & mask, ((end - 1) & mask) + 1
        if hi <= lo:
            raise ValueError("walk range crosses the non-canonical hole")
        self._budget = self.max_tables
        self._follow = follow_nonpresent
        self._shared = {}
        self._on_leaf, self._on_hole = on_leaf, on_hole
        self._table(self.arch.top, root_pa, 0, lo, hi, 0, (root_pa,))

    def translate(self, root_pa: int, va: int) -> Optional[tuple[int, int, int]]:
        """(pa, level, entry) mapping ``va``, or None when unmapped or unreadable."""
        found: list[tuple[int, int, int]] = []
        arch = self.arch

        def leaf(level: int, lva: int, size: int, val: int, eff: int) -> None:
            if arch.present(val):
                base = arch.entry_pa(val, level)
                found.append((base + (va - lva), level,
                              val + ((va - lva) & ~(arch.level_size(level) - 1))))

        self.walk(root_pa, va, va + 1, leaf)
        return found[0] if found else None

    # -- the walk ------------------------------------------------------------------------
    def _table(self, level: int, pa: int, base: int, lo: int, hi: int, eff: int,
               path: tuple[int, ...]) -> None:
        """Report the part ``[lo, hi)`` of the table at ``pa`` (mapping from ``base``);
        ``eff`` is the protection through the levels above, ``path`` the tables above."""
        shift = self._shifts[level]
        i0 = (lo - base) >> shift
        i1 = min(self._last, (hi - 1 - base) >> shift)
        self._budget -= 1
        if self._budget < 0:
            self._error(level, base + (i0 << shift), pa, "walk budget exhausted (table cycle?)")
            return
        if not self._budget & 63 and self.reader.deadline is not None:
            self.reader.deadline.check()       # walks of cached tables read nothing
        arr = self._linear(level, pa, base, i0, i1, eff)
        if arr is not None:
            self._entries(level, pa, arr, base, lo, hi, eff, path)

    def _linear(self, level: int, pa: int, base: int, i0: int, i1: int,
                eff: int) -> Optional[memoryview]:
        """The fast path: entries ``i0..i1`` reported at once when they are one linear run
        of leaves or all empty, or recorded as unreadable (None); else the table's entries
        for the per-entry path."""
        arch = self.arch
        shift = self._shifts[level]
        leafy = level in self._leafy
        last = self._last
        try:
            if leafy and i1 - i0 == last:
                v0 = self.reader.leaf_run(pa, level, self.linear)   # a linear table: not kept
                if v0:
                    self._on_leaf(level, arch.canonical(base), arch.entries << shift, v0,
                                  arch.effective(eff, v0, level == arch.top))
                    return None
            arr = self.reader.table(pa)
        except TableFault as e:
            self._error(level, base + (i0 << shift), pa, f"table unreadable: {e}")
            return None
        if arr is None:
            if self._on_hole:
                self._on_hole(level, arch.canonical(base + (i0 << shift)), (i1 - i0 + 1) << shift)
            return None
        if leafy and 0 < i1 - i0 < last:      # a full table was tested above
            v0 = self.linear.part(arr, level, i0, i1)
            if v0:
                self._on_leaf(level, arch.canonical(base + (i0 << shift)), (i1 - i0 + 1) << shift,
                              v0, arch.effective(eff, v0, level == arch.top))
                return None
        return arr

    def _entries(self, level: int, pa: int, arr: memoryview, base: int, lo: int, hi: int,
                 eff: int, path: tuple[int, ...]) -> None:
        """The per-entry path: runs of whole linear child tables, of empty entries and of
        contiguous leaves are reported as one each; other table entries are descended."""
        arch = self.arch
        shift = self._shifts[level]
        size = 1 << shift
        i = (lo - base) >> shift
        i1 = min(self._last, (hi - 1 - base) >> shift)
        canon, on_hole = arch.canonical, self._on_hole
        fast = level + 1 in self._leafy
        tmask, tbits = self._tmask, self._tbits
        while i <= i1:
            val = arr[i]
            va = base + (i << shift)
            # only an entry mapping wholly inside [lo, hi) may have its child decided whole
            if fast and val & tmask == tbits and lo <= va and va + size <= hi:
                stop = i1 if base + ((i1 + 1) << shift) <= hi else i1 - 1
                i = self._linear_children(level, arr, base, i, stop, eff, path)
                if i > i1:
                    break
                val = arr[i]
                va = base + (i << shift)
            if not val:
                j = i + 1
                while j <= i1 and not arr[j]:
                    j += 1
                if on_hole:
                    on_hole(level, canon(va), (j - i) << shift)
                i = j
            elif arch.is_leaf(val, level, self._follow):
                j = i + 1
                nxt = val + size
                while j <= i1 and arr[j] == nxt:
                    j += 1
                    nxt += size
                if arch.misaligned(val, level):
                    self._error(level, canon(va), pa, f"misaligned huge page entry 0x{val:x}")
                else:
                    self._on_leaf(level, canon(va), (j - i) << shift, val,
                                  arch.effective(eff, val, level == arch.top))
                i = j
            else:
                self._descend(level, pa, val, va, (max(lo, va), min(hi, va + size)), eff, path)
                i += 1

    def _linear_children(self, level: int, arr: memoryview, base: int, i: int, stop: int,
                         eff: int, path: tuple[int, ...]) -> int:
        """Entries ``i..stop`` that point at whole linear leaf tables (the bulk of any big
        mapping), decided without a call per child table; consecutive ones are reported as
        one run.  Returns the first entry not decided so (the per-entry path's)."""
        arch = self.arch
        size = 1 << self._shifts[level]
        clevel = level + 1
        pfn, flags, tmask, tbits = arch.pfn_mask, arch.flags_mask, arch.table_mask, arch.table_bits
        leaf_run, test, path_eff = self.reader.leaf_run, self.linear, arch.effective
        pend = False
        pva = pv0 = pn = peff = pflags = 0
        while i <= stop:
            val = arr[i]
            if val & tmask != tbits:
                break
            child = val & pfn
            try:
                v0 = leaf_run(child, clevel, test)     # memoised
            except TableFault:
                break      # walked the ordinary way, which records the fault
            if not v0 or self._budget <= 0 or child in path:
                break
            self._budget -= 1
            # same table-entry flags -> same effective protection for the child
            if pend and pv0 + pn == v0 and pflags == val & flags:
                pn += size
            else:
                if pend:
                    self._on_leaf(clevel, arch.canonical(pva), pn, pv0, peff)
                pend, pva, pv0, pn = True, base + (i << self._shifts[level]), v0, size
                pflags = val & flags
                peff = path_eff(path_eff(eff, val, level == arch.top), v0, False)
            i += 1
        if pend:
            self._on_leaf(clevel, arch.canonical(pva), pn, pv0, peff)
        return i

    def _descend(self, level: int, pa: int, val: int, va: int, span: tuple[int, int],
                 eff: int, path: tuple[int, ...]) -> None:
        """Walk the part ``span`` of the table the entry ``val`` (mapping ``va``) points at,
        unless it is not present, reserved, a loop, or a subtree already walked enough."""
        arch = self.arch
        if val & self._tmask == self._tbits:        # the common case: a table pointer
            child = val & arch.pfn_mask
        elif arch.present(val):
            bad = arch.table_problem(val, level)
            if bad:
                self._error(level, arch.canonical(va), pa, bad)
                return
            child = arch.entry_pa(val, level)
        elif not self._follow:
            if self._on_hole:
                self._on_hole(level, arch.canonical(va), 1 << self._shifts[level])
            return
        else:
            child = arch.nonpresent_child(val, level)
            if child is None:
                return
        if child in path:
            self._error(level, arch.canonical(va), pa, f"table loop back to PA 0x{child:x}")
            return
        tag = va << 3 | (level + 1)
        served = self._served.setdefault(child, tag)
        if served != tag and not self._serve_again(child, tag):
            self._shared_subtree(level, va, pa, child, served)
            return
        self._table(level + 1, child, va, span[0], span[1],
                    arch.effective(eff, val, level == arch.top), path + (child,))

    def _serve_again(self, child: int, tag: int) -> bool:
        """Whether the table at ``child``, already walked elsewhere, may be walked for
        ``tag`` (VA base << 3 | level): it was already, or it serves fewer than the limit."""
        also = self._also.setdefault(child, set())
        if tag in also:
            return True
        if len(also) + 1 < self._limit(tag):
            also.add(tag)
            return True
        return False

    def _limit(self, tag: int) -> int:
        return MAX_SERVED_LEAF if tag & 7 == self._last_level else MAX_SERVED

    def _shared_subtree(self, level: int, va: int, pa: int, child: int, served: int) -> None:
        """Record a table entry whose child table was already walked for ``MAX_SERVED``
        other VAs; the entries of one table that point at the same child make one error,
        with a count."""
        key = (pa, child)
        rec = self._shared.get(key)
        if rec is not None:
            idx, n, msg = rec
            self._shared[key] = (idx, n + 1, msg)
            e = self.errors[idx]
            self.errors[idx] = replace(e, message=f"{msg} ({n + 1} entries)")
            return
        msg = (f"shared subtree: table at PA 0x{child:x} already walked for "
               f"{self._limit(served)} VAs "
               f"(first as the {self.arch.level_names[served & 7]} table for "
               f"0x{self.arch.canonical(served >> 3):016x}); not walked again")
        self._shared[key] = (len(self.errors), 1, msg)
        self._error(level, self.arch.canonical(va), pa, msg)

    def _error(self, level: int, va: int, table_pa: int, msg: str) -> None:
        self.errors.append(WalkError(level, va, table_pa, msg, self.arch.level_names[level]))


@dataclass(frozen=True)
class Extent:
    """A merged run of present leaves: contiguous VA and PA, same flags and page size."""

    va: int
    pa: int
    size: int
    level: int
    val: int        # the first entry (flags are the same for the whole extent)
    eff: int        # effective protection through upper levels
    page_size: int

    def clipped(self, va: int, size: int) -> Optional[Extent]:
        """This extent cut to ``[va, va + size)`` (a 2 MiB leaf may start before a 4 KiB
        range), or None when they do not meet."""
        lo, hi = max(self.va, va), min(self.va + self.size, va + size)
        if lo >= hi:
            return None
        return Extent(lo, self.pa + (lo - self.va), hi - lo, self.level, self.val, self.eff,
                      self.page_size)     # not dataclasses.replace(): 10x slower


def extents(walker: Walker, root_pa: int, start: int, end: int) -> Iterator[Extent]:
    """Present leaves of ``[start, end)`` merged across tables into ``Extent`` records."""
    runs: list[list[int]] = []      # [va, pa, size, level, val, eff], mutable while merging
    arch = walker.arch
    flags = arch.flags_mask

    def leaf(level: int, va: int, size: int, val: int, eff: int) -> None:
        if not arch.present(val):
            return
        pa = arch.entry_pa(val, level)
        if runs:
            r = runs[-1]
            if (r[0] + r[2] == va and r[1] + r[2] == pa and r[3] == level
                    and r[4] & flags == val & flags and r[5] == eff):
                r[2] += size
                return
        runs.append([va, pa, size, level, val, eff])

    walker.walk(root_pa, start, end, leaf)
    return (Extent(*r, arch.level_size(r[3])) for r in runs)
