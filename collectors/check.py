"""Hold every range against every address space it is expected in; produce findings.

For each expectation: one targeted walk of ``[va, va + size)`` in that mm, then byte
accounting: mapped at the right PA, mapped somewhere else (misdirected), missing, and of the
mapped bytes those with the wrong cache mode or permissions.  A missing direct-map range in
efi_mm whose top-level slot simply has not been re-copied from init_mm since the mapping was
made is the known "stale window" (no EFI call since): a warning, not the 2016 failure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .kernel import KernelFacts
from .mm import EFI_MM, INIT_MM, AddressSpace
from .pagetable import Extent, TableFault, WalkError, Walker, extents
from .ranges import STATE, Expectation, Range, human_size, va_span_problem
from .vocab import (CRITICAL, DIVERGED, INFO, MISDIRECTED, MISSING, OK,  # noqa: F401 - re-exported
                    PARTIAL, SEVERITY_ORDER, SKIPPED, STALE, UNREADABLE, WARNING, WRONG_CACHE,
                    WRONG_PERM)


@dataclass
class Finding:
    """What one address space does with one range, against one expectation."""

    range: Range
    exp: Expectation
    status: str                    # ok | missing | partial | misdirected | wrong-cache |
    severity: str                  # wrong-perm | stale | skipped | unreadable
    message: str
    mapped_bytes: int = 0
    missing_bytes: int = 0
    misdirected_bytes: int = 0
    wrong_cache_bytes: int = 0
    wrong_perm_bytes: int = 0
    extents: list[Extent] = field(default_factory=list)
    cache_modes: list[str] = field(default_factory=list)
    page_sizes: list[int] = field(default_factory=list)

    @property
    def mm(self) -> str:
        return self.exp.mm

    @property
    def problem(self) -> bool:
        return SEVERITY_ORDER[self.severity] >= SEVERITY_ORDER[WARNING]


def worst(severities) -> str:
    """The most severe of ``severities`` (ok when empty)."""
    return max(severities, key=SEVERITY_ORDER.__getitem__, default=OK)


class Checker:
    """Checks ranges against address spaces, sharing one table cache across all walks."""

    def __init__(self, facts: KernelFacts, spaces: dict[str, AddressSpace], walker: Walker):
        self.facts, self.spaces, self.walker = facts, spaces, walker
        self.arch = walker.arch
        # (va, size, the root entries over it) -> (extents, walk errors); see _extents
        self._walks: dict[tuple, tuple[list[Extent], list[WalkError]]] = {}

    def check(self, ranges: list[Range]) -> list[Finding]:
        return [self.check_one(r, e) for r in ranges for e in r.expectations]

    def check_one(self, rng: Range, exp: Expectation) -> Finding:
        space = self.spaces[exp.mm]
        if exp.unmet and exp.rule == STATE:    # a source could not read its kernel state
            return Finding(rng, exp, UNREADABLE, WARNING, exp.unmet)
        if not space.has_table:
            if space.unreadable:               # the root itself: the kernel state is corrupt
                return Finding(rng, exp, UNREADABLE, WARNING, space.reason,
                               missing_bytes=rng.size)
            return Finding(rng, exp, SKIPPED, INFO, f"{exp.mm} has no page table: {space.reason}",
                           missing_bytes=rng.size)
        bad = va_span_problem(exp.va, rng.size, self.facts.levels)
        if bad:          # e.g. a direct-map VA from a garbage page_offset_base: no walk can say
            return Finding(rng, exp, UNREADABLE, WARNING if exp.required else INFO,
                           f"its {exp.rule} VA 0x{exp.va:x} + {human_size(rng.size)} {bad}: "
                           "not checked", missing_bytes=rng.size)
        if exp.unmet:                 # nothing in the tables can satisfy it: say why
            return Finding(rng, exp, MISSING, CRITICAL if exp.required else INFO,
                           f"not mapped in {exp.mm} at the {exp.rule} VA: {exp.unmet}",
                           missing_bytes=rng.size)
        exts, errs = self._extents(space.root_pa, exp.va, rng.size)
        f = self._account(rng, exp, exts)
        if errs and f.missing_bytes:
            f.status, f.severity = UNREADABLE, CRITICAL if exp.required else INFO
            f.message = f"page tables unreadable: {errs[0]}"
            return f
        self._judge(f)
        return f

    def _account(self, rng: Range, exp: Expectation, exts: list[Extent]) -> Finding:
        f = Finding(rng, exp, OK, OK, "", extents=exts)
        arch = self.arch
        modes, sizes = set(), set()
        for e in exts:
            want_pa = rng.phys + (e.va - exp.va)
            if e.pa != want_pa:
                f.misdirected_bytes += e.size
                continue
            f.mapped_bytes += e.size
            mode = arch.cache_mode(e.val, e.level)
            modes.add(mode)
            sizes.add(e.page_size)
            if exp.cache is not None and mode not in exp.cache:
                f.wrong_cache_bytes += e.size
            if (exp.writable is not None and arch.writable(e.eff) != exp.writable) or \
               (exp.executable is not None and arch.executable(e.eff) != exp.executable):
                f.wrong_perm_bytes += e.size
        f.missing_bytes = rng.size - f.mapped_bytes - f.misdirected_bytes
        f.cache_modes, f.page_sizes = sorted(modes), sorted(sizes)
        return f

    def _judge(self, f: Finding) -> None:
        exp, rng = f.exp, f.range
        bad = CRITICAL if exp.required else INFO
        where = f"{exp.mm} at the {exp.rule} VA"
        if f.missing_bytes == rng.size:
            f.status, f.severity = MISSING, bad
            f.message = f"not mapped in {where}"
            self._maybe_stale(f)
        elif f.missing_bytes:
            f.status, f.severity = PARTIAL, bad
            f.message = f"{human_size(f.missing_bytes)} of {human_size(rng.size)} not mapped in {where}"
            self._maybe_stale(f)
        elif f.misdirected_bytes:
            f.status, f.severity = MISDIRECTED, bad
            f.message = f"{human_size(f.misdirected_bytes)} mapped in {where} to other physical pages"
        elif f.wrong_cache_bytes:
            f.status, f.severity = WRONG_CACHE, bad
            f.message = (f"{human_size(f.wrong_cache_bytes)} mapped {'/'.join(f.cache_modes)}, "
                         f"needs {'/'.join(sorted(exp.cache or ()))}")
        elif f.wrong_perm_bytes:
            f.status, f.severity = WRONG_PERM, WARNING if exp.required else INFO
            f.message = f"{human_size(f.wrong_perm_bytes)} mapped with the wrong permissions"
        else:
            f.message = f"mapped in {where} ({'/'.join(f.cache_modes)})"
        if f.misdirected_bytes and f.status in (MISSING, PARTIAL):
            f.message += f"; {human_size(f.misdirected_bytes)} point at other physical pages"

    def _maybe_stale(self, f: Finding) -> None:
        """Downgrade to a warning when efi_mm only lacks a not-yet-copied kernel-half slot."""
        exp = f.exp
        if exp.mm != EFI_MM or exp.shared_from != INIT_MM or not f.exp.required:
            return
        init, efi = self.spaces[INIT_MM], self.spaces[EFI_MM]
        if not init.has_table:
            return
        init_exts, _ = self._extents(init.root_pa, exp.va, f.range.size)
        if not init_exts:
            return
        mine, theirs = self._top_entry(efi.root_pa, exp.va), self._top_entry(init.root_pa, exp.va)
        if mine == theirs:
            return
        # efi_sync_low_kernel_mappings() copies init_mm's kernel-half top-level entries into
        # efi_mm by value at every EFI call (arch_efi_call_virt_setup(); v4.6 .. v7.1), so
        # both cases below are repaired before the firmware next runs; in between nothing
        # loads efi_mm.  An empty slot is the ordinary window; a different one means
        # init_mm replaced the table since the last EFI call (memory hot-remove, or
        # corruption) and efi_mm still points at the old one.
        f.severity = WARNING
        if not mine:
            f.status = STALE
            f.message = ("kernel-half slot present in init_mm but not yet copied into efi_mm "
                         "(no EFI call since the mapping was made)")
        else:
            f.status = DIVERGED
            mask = self.arch.phys_mask & ~0xFFF
            f.message = (f"kernel-half slot differs: efi_mm has 0x{mine:x} (table at PA "
                         f"0x{mine & mask:x}), init_mm 0x{theirs or 0:x} (table at PA "
                         f"0x{(theirs or 0) & mask:x}): init_mm replaced that table since the "
                         "last EFI call (memory hot-remove, or corruption); the next EFI call "
                         "copies init_mm's entry into efi_mm")

    def _extents(self, root_pa: int, va: int, size: int) -> tuple[list[Extent], list[WalkError]]:
        """The extents of ``[va, va + size)`` in the tree at ``root_pa`` and the walk errors
        met there.  Everything below a root entry is that entry's business alone, so two
        trees whose root entries over the range are equal map it identically: efi_mm shares
        init_mm's kernel half, and each direct-map range is walked once for both."""
        key: Optional[tuple] = None
        try:
            root = self.walker.reader.table(root_pa)
        except TableFault:
            pass            # the walk records why
        else:
            lo = self.arch.top_index(va)
            hi = self.arch.top_index(va + size - 1)
            if lo <= hi:
                key = (va, size, tuple(root[lo:hi + 1]) if root is not None else None)
        hit = self._walks.get(key) if key is not None else None
        if hit is not None:
            return hit
        nerr = len(self.walker.errors)
        exts = _clip(extents(self.walker, root_pa, va, va + size), va, size)
        out = exts, self.walker.errors[nerr:]
        if key is not None:
            self._walks[key] = out
        return out

    def _top_entry(self, root_pa: int, va: int) -> Optional[int]:
        try:
            table = self.walker.reader.table(root_pa)
        except TableFault:
            return None
        return 0 if table is None else table[self.arch.top_index(va)]


def _clip(exts, va: int, size: int) -> list[Extent]:
    """Extents cut to ``[va, va + size)`` (a 2 MiB leaf may start before a 4 KiB range)."""
    return [c for c in (e.clipped(va, size) for e in exts) if c is not None]
