"""One x86-64 page-table walker for every consumer (checks, ptdump, reverse lookups).

Modelled on the kernel's ``mm/pagewalk.c`` + ``mm/ptdump.c``: the walker visits a VA range
of one table tree and reports *runs* to callbacks; what a consumer does with them (merge
extents, print ptdump lines, check a range) is not the walker's business.

Cost model (see ``tests/bench``): each table page is read once with one physical read and
viewed as 512 uint64s without copying; pages are cached for the life of the reader (a
whole linear leaf table only as its first entry), so efi_mm's kernel half, which shares
init_mm's lower tables, costs nothing the second time.
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

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from . import linear, x86
from .deadline import Deadline, DeadlineSpec, WalkCancelled, WalkTimeout, as_deadline  # noqa: F401
from .x86 import NX, P, PMD, PSE, PTE, PUD, RW, US, ENTRIES

ReadPhys = Callable[[int, int], bytes]
LeafFn = Callable[[int, int, int, int, int], None]   # level, va, size, val, eff
HoleFn = Callable[[int, int, int], None]              # level, va, size
_ZERO = bytes(x86.PAGE_SIZE)
_MISS = object()
_LEAFY = linear.LEAFY
_FLAGS = x86.PTE_FLAGS_MASK
# distinct VAs one table page is walked for, per check: a PTE table (leaves only: a re-walk
# costs one memo lookup or 512 entries) and a table of tables (a re-walk repeats a subtree).
# The kernel itself shares its ESPfix PTE page 2048 times and the PMD page above it 4 times
# (arch/x86/kernel/espfix_64.c: ESPFIX_PTE_CLONES x ESPFIX_PMD_CLONES x ESPFIX_PUD_CLONES).
MAX_SERVED = 4
MAX_SERVED_LEAF = MAX_SERVED * 512     # every entry of each allowed walk of its parent


class TableFault(Exception):
    """A table page could not be read (outside the dump, or not RAM on a live kernel)."""


@dataclass(frozen=True)
class WalkError:
    """Why one branch of a walk was abandoned."""

    level: int
    va: int
    table_pa: int
    message: str

    def __str__(self) -> str:
        return (f"{x86.LEVEL_NAMES[self.level]} entry for 0x{self.va:016x} "
                f"(table at PA 0x{self.table_pa:x}): {self.message}")


class TableReader:
    """Reads and decodes table pages by physical address, caching them for one check.

    The cache is bounded (oldest pages dropped first) so a full walk of a huge direct map
    cannot grow memory without limit; shared upper-level tables stay hot regardless.
    A leaf table that is one whole linear run is not cached at all: its memo (``linear``,
    one int) says everything a walk needs, and keeping thousands of 4 KiB pages alive costs
    more in allocation than reading them (measured in ``tests/bench``).
    """

    def __init__(self, read_phys: ReadPhys, limit: int = 8192,
                 deadline: DeadlineSpec = None) -> None:
        self._read = read_phys
        # checked before every page read, and every 64 tables walked (cache hits included)
        self.deadline: Optional[Deadline] = as_deadline(deadline)
        # OrderedDict: evicting the oldest page is O(1); next(iter(dict)) is not once many
        # slots have been deleted (CPython scans past them).
        self._cache: OrderedDict[int, Optional[memoryview]] = OrderedDict()
        self._limit = limit
        self.reads = 0
        # pa * 8 + level -> v0 when the whole table is one linear run of leaves, else 0:
        # efi_mm revisits init_mm's tables.  Bounded on its own (cleared when full).
        self.linear: dict[int, int] = {}
        self._linear_limit = limit * 8      # ints, ~100 bytes each: a few MB at most

    def table(self, pa: int) -> Optional[memoryview]:
        """The 512 entries of the table at ``pa`` (a uint64 view of the bytes read, whose
        ``.obj`` is those bytes); None for an all-zero page."""
        arr = self._cache.get(pa, _MISS)
        if arr is _MISS:
            arr = self._keep(pa, self._fetch(pa))
        return arr

    def leaf_run(self, pa: int, level: int) -> int:
        """v0 when the whole table at ``pa`` is one linear run of ``level`` leaves, else 0
        (also for an empty table).  Memoised; raises ``TableFault`` when unreadable."""
        key = pa * 8 + level
        v0 = self.linear.get(key)
        if v0 is not None:
            return v0
        arr = self._cache.get(pa, _MISS)
        if arr is not _MISS:
            v0 = linear.whole(arr.obj, level) if arr is not None else 0
        else:
            raw = self._fetch(pa)
            v0 = linear.whole(raw, level)        # 0 for an all-zero page (not present)
            if not v0:
                self._keep(pa, raw)
        if len(self.linear) >= self._linear_limit:
            self.linear.clear()
        self.linear[key] = v0
        return v0

    def _fetch(self, pa: int) -> bytes:
        if self.deadline is not None:
            self.deadline.check()
        try:
            raw = self._read(pa, x86.PAGE_SIZE)
        except Exception as e:  # drgn.FaultError, OSError on /proc/kcore, ...
            raise TableFault(str(e).split("\n")[0]) from None
        self.reads += 1
        return bytes(raw)

    def _keep(self, pa: int, raw: bytes) -> Optional[memoryview]:
        """Cache the page read at ``pa`` as its uint64 view (None when all zero)."""
        arr = None if raw == _ZERO else memoryview(raw).cast("Q")
        if len(self._cache) >= self._limit:
            self._cache.popitem(last=False)
        self._cache[pa] = arr
        return arr


def _eff(prev: int, val: int, first: bool) -> int:
    """Effective protection after this level, as ``effective_prot()`` in dump_pagetables.c."""
    prot = val & x86.PTE_FLAGS_MASK
    if first:
        return prot
    return (prev & prot & (US | RW)) | ((prev | prot) & NX)


class Walker:
    """Walks one x86-64 table tree over a VA range, reporting leaf and hole runs."""

    def __init__(self, reader: TableReader, levels: int, phys_mask: int,
                 max_tables: int = 1 << 21) -> None:
        if levels not in (4, 5):
            raise ValueError(f"unsupported paging depth {levels}")
        self.reader = reader
        self.levels = levels
        self.phys_mask = phys_mask
        self.max_tables = max_tables
        self.errors: list[WalkError] = []
        # table PA -> (VA base << 3 | level) where it was first walked, for the walker's
        # life (one check); a table met at another VA or level is shared: the other places
        # it was walked (at most MAX_SERVED - 1) are in _also.
        self._served: dict[int, int] = {}
        self._also: dict[int, set[int]] = {}
        # (parent PA, child PA) -> (index in errors, entries, message), for one walk
        self._shared: dict[tuple[int, int], tuple[int, int, str]] = {}
        self._bits = 57 if levels == 5 else 48
        self._budget = max_tables
        self._follow = False

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
        ptdump needs to print what the kernel prints: a non-present, non-none pud/pmd entry
        is skipped silently, pgd/p4d entries are descended whatever their P bit.
        """
        mask = (1 << self._bits) - 1
        lo, hi = start & mask, ((end - 1) & mask) + 1
        if hi <= lo:
            raise ValueError("walk range crosses the non-canonical hole")
        self._budget = self.max_tables
        self._follow = follow_nonpresent
        self._shared = {}
        top = x86.top_level(self.levels)
        self._table(top, root_pa, 0, lo, hi, 0, (root_pa,), on_leaf, on_hole)

    def translate(self, root_pa: int, va: int) -> Optional[tuple[int, int, int]]:
        """(pa, level, entry) mapping ``va``, or None when unmapped or unreadable."""
        found: list[tuple[int, int, int]] = []

        def leaf(level: int, lva: int, size: int, val: int, eff: int) -> None:
            if val & P:
                base = x86.entry_pa(val, level, self.phys_mask)
                found.append((base + (va - lva), level, val + ((va - lva) & ~(x86.level_size(level) - 1))))

        self.walk(root_pa, va, va + 1, leaf)
        return found[0] if found else None

    # -- the walk ------------------------------------------------------------------------
    def _table(self, level: int, pa: int, base: int, lo: int, hi: int, eff: int,
               path: tuple[int, ...], on_leaf: LeafFn, on_hole: Optional[HoleFn]) -> None:
        shift = x86.level_shift(level)
        size = 1 << shift
        i0 = (lo - base) >> shift
        i1 = min(ENTRIES - 1, (hi - 1 - base) >> shift)
        self._budget -= 1
        if self._budget < 0:
            self._error(level, base + (i0 << shift), pa, "walk budget exhausted (table cycle?)")
            return
        if not self._budget & 63 and self.reader.deadline is not None:
            self.reader.deadline.check()       # walks of cached tables read nothing
        canon = self._canon
        first = level == x86.top_level(self.levels)
        leafy = level in _LEAFY
        try:
            if leafy and i1 - i0 == ENTRIES - 1:
                v0 = self.reader.leaf_run(pa, level)    # a linear table is never kept
                if v0:
                    on_leaf(level, canon(base), ENTRIES << shift, v0, _eff(eff, v0, first))
                    return
            arr = self.reader.table(pa)
        except TableFault as e:
            self._error(level, base + (i0 << shift), pa, f"table unreadable: {e}")
            return
        if arr is None:
            if on_hole:
                on_hole(level, canon(base + (i0 << shift)), (i1 - i0 + 1) << shift)
            return
        if leafy and 0 < i1 - i0 < ENTRIES - 1:      # a full table was tested above
            v0 = linear.part(arr, level, i0, i1)
            if v0:
                on_leaf(level, canon(base + (i0 << shift)), (i1 - i0 + 1) << shift, v0,
                        _eff(eff, v0, first))
                return
        # Children that are whole linear leaf tables (the bulk of any big mapping) are
        # decided here without a call per table, and consecutive ones reported as one run.
        clevel = level + 1
        fast = clevel in _LEAFY
        tmask = x86.PTE_PFN_MASK & self.phys_mask
        pend = False
        pva = pv0 = pn = peff = pflags = 0
        i = i0
        while i <= i1:
            val = arr[i]
            va = base + (i << shift)
            if fast and val & P and not val & PSE and lo <= va and va + size <= hi:
                child = val & tmask
                try:
                    v0 = self.reader.leaf_run(child, clevel)     # memoised
                except TableFault:
                    v0 = 0     # walked the ordinary way below, which records the fault
                if v0 and self._budget > 0 and child not in path:
                    self._budget -= 1
                    # same table-entry flags -> same effective protection for the child
                    if pend and pva + pn == va and pv0 + pn == v0 and pflags == val & _FLAGS:
                        pn += size
                    else:
                        if pend:
                            on_leaf(clevel, canon(pva), pn, pv0, peff)
                        pend, pva, pv0, pn = True, va, v0, size
                        pflags, peff = val & _FLAGS, _eff(_eff(eff, val, first), v0, False)
                    i += 1
                    continue
            if pend:
                on_leaf(clevel, canon(pva), pn, pv0, peff)
                pend = False
            if not val:
                j = i + 1
                while j <= i1 and not arr[j]:
                    j += 1
                if on_hole:
                    on_hole(level, canon(va), (j - i) << shift)
                i = j
                continue
            # pmd_large() tests PSE alone; pud_large() wants PSE and P (x86 pgtable.h)
            is_leaf = level == PTE or (val & PSE and (level == PMD or (level == PUD and (
                val & P or not self._follow))))
            if is_leaf:
                j = i + 1
                nxt = val + size
                while j <= i1 and arr[j] == nxt:
                    j += 1
                    nxt += size
                if level != PTE and val & P and (x86.entry_pa(val, level, (1 << 64) - 1)
                                     != val & x86.PTE_PFN_MASK & ~x86.PAT_LARGE):
                    self._error(level, canon(va), pa, f"misaligned huge page entry 0x{val:x}")
                else:
                    on_leaf(level, canon(va), (j - i) << shift, val, _eff(eff, val, first))
                i = j
                continue
            i += 1
            if not val & P:
                if not self._follow:
                    if on_hole:
                        on_hole(level, canon(va), size)
                    continue
                if level >= PUD:
                    continue   # pagewalk: !pud/pmd_present -> neither noted nor descended
                child = val & x86.PTE_PFN_MASK & self.phys_mask   # p4d_pgtable(): no un-invert
            elif val & PSE and level < PUD:
                self._error(level, canon(va), pa, f"PS bit set at {x86.LEVEL_NAMES[level]} (reserved)")
                continue
            else:
                child = x86.entry_pa(val, level, self.phys_mask)
            if child in path:
                self._error(level, canon(va), pa, f"table loop back to PA 0x{child:x}")
                continue
            served = self._served.setdefault(child, va << 3 | clevel)
            if served != va << 3 | clevel and not self._serve_again(child, va << 3 | clevel):
                self._shared_subtree(level, va, pa, child, served)
                continue
            clo, chi = max(lo, va), min(hi, va + size)
            self._table(level + 1, child, va, clo, chi, _eff(eff, val, first), path + (child,),
                        on_leaf, on_hole)
        if pend:
            on_leaf(clevel, canon(pva), pn, pv0, peff)

    def _canon(self, u: int) -> int:
        return x86.canonical(u, self.levels)

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

    @staticmethod
    def _limit(tag: int) -> int:
        return MAX_SERVED_LEAF if tag & 7 == x86.PTE else MAX_SERVED

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
            self.errors[idx] = WalkError(e.level, e.va, e.table_pa, f"{msg} ({n + 1} entries)")
            return
        msg = (f"shared subtree: table at PA 0x{child:x} already walked for "
               f"{self._limit(served)} VAs "
               f"(first as the {x86.LEVEL_NAMES[served & 7]} table for "
               f"0x{self._canon(served >> 3):016x}); not walked again")
        self._shared[key] = (len(self.errors), 1, msg)
        self._error(level, self._canon(va), pa, msg)

    def _error(self, level: int, va: int, table_pa: int, msg: str) -> None:
        self.errors.append(WalkError(level, va, table_pa, msg))


@dataclass(frozen=True)
class Extent:
    """A merged run of present leaves: contiguous VA and PA, same flags and page size."""

    va: int
    pa: int
    size: int
    level: int
    val: int      # the first entry (flags are the same for the whole extent)
    eff: int      # effective protection through upper levels

    @property
    def page_size(self) -> int:
        return x86.level_size(self.level)

    @property
    def flags(self) -> int:
        return self.val & x86.PTE_FLAGS_MASK & ~(x86.PAT_LARGE if self.level != PTE else 0)


def extents(walker: Walker, root_pa: int, start: int, end: int) -> Iterator[Extent]:
    """Present leaves of ``[start, end)`` merged across tables into ``Extent`` records."""
    runs: list[list[int]] = []      # [va, pa, size, level, val, eff], mutable while merging
    mask = walker.phys_mask
    flags = x86.PTE_FLAGS_MASK

    def leaf(level: int, va: int, size: int, val: int, eff: int) -> None:
        if not val & P:
            return
        pa = x86.entry_pa(val, level, mask)
        if runs:
            r = runs[-1]
            if (r[0] + r[2] == va and r[1] + r[2] == pa and r[3] == level
                    and r[4] & flags == val & flags and r[5] == eff):
                r[2] += size
                return
        runs.append([va, pa, size, level, val, eff])

    walker.walk(root_pa, start, end, leaf)
    return (Extent(*r) for r in runs)
