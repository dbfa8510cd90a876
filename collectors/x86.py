"""x86-64 page-table entry facts: bits, levels, page sizes and cache-mode decoding.

Everything architecture-specific that the walker, the checker and the ptdump renderer need,
in one place: ``X86_64`` is the object they are given (``arch.Arch``), so those modules stay
arch-neutral, as the kernel's ``mm/ptdump.c`` is one walker and
``arch/x86/mm/dump_pagetables.c`` its x86 callbacks.  The module-level bits and helpers
remain for code that builds or edits x86 tables on purpose (the test bed, the fuzzers).
"""
from __future__ import annotations

from typing import Optional, Sequence

from . import vocab

# Entry bits (arch/x86/include/asm/pgtable_types.h)
P, RW, US, PWT, PCD, A, D, PSE, G = (1 << b for b in (0, 1, 2, 3, 4, 5, 6, 7, 8))
PAT_4K = 1 << 7
PAT_LARGE = 1 << 12
NX = 1 << 63
PTE_PFN_MASK = 0x000FFFFFFFFFF000
# PTE_FLAGS_MASK = ~PTE_PFN_MASK (what the kernel's ptdump compares).
PTE_FLAGS_MASK = 0xFFFFFFFFFFFFFFFF & ~PTE_PFN_MASK

# Kernel level numbering (mm/ptdump.c): 0 pgd, 1 p4d, 2 pud, 3 pmd, 4 pte.
PGD, P4D, PUD, PMD, PTE = range(5)
LEVEL_NAMES = ("pgd", "p4d", "pud", "pmd", "pte")
LEVEL_SHIFT_5 = (48, 39, 30, 21, 12)
ENTRIES = 512
PAGE_SIZE = 4096

# The kernel's virtual layout (arch/x86/include/asm/pgtable_64_types.h, page_64_types.h).
START_KERNEL_MAP = 0xFFFFFFFF80000000
# The EFI runtime area, unchanged since v3.14 ("x86/efi: Runtime services virtual mapping").
EFI_VA_START = 0xFFFFFFFF00000000    # -4 GiB
EFI_VA_END = 0xFFFFFFEF00000000      # -68 GiB

# Cache modes: enum page_cache_mode (arch/x86/include/asm/pgtable_types.h).
CACHE_MODE_NAMES = vocab.CACHE_MODES
# A table entry that is no page_cache_mode (6, 7, garbage): the kernel's own word for it
# (cattr_name() in arch/x86/mm/pat/memtype.h); reports and the JSON schema use it as is.
BROKEN = vocab.BROKEN
# Linux's IA32_PAT layout, as v6.1's pat_init() (arch/x86/mm/pat/memtype.c) programs it on a CPU
# with a full PAT: WB, WC, UC-, UC, WB, WP, UC-, WT.
DEFAULT_PTE2CACHEMODE = (0, 1, 2, 3, 0, 5, 2, 4)


def level_shift(level: int) -> int:
    """Address bits mapped below one entry of ``level``."""
    return LEVEL_SHIFT_5[level]


def level_size(level: int) -> int:
    """Bytes mapped by one entry at ``level`` (pud 1 GiB, pmd 2 MiB, pte 4 KiB)."""
    return 1 << LEVEL_SHIFT_5[level]


def top_level(levels: int) -> int:
    """Kernel level number of the root table: pgd with 5 levels, p4d (pgd folded) with 4."""
    return PGD if levels == 5 else P4D


def top_index(va: int, levels: int) -> int:
    """Index of ``va``'s entry in the root table (pgd with 5 levels, folded p4d with 4)."""
    return (va >> level_shift(top_level(levels))) & (ENTRIES - 1)


def canonical(va: int, levels: int) -> int:
    """Sign-extend a walker-built VA from bit 47 (4-level) or 56 (5-level)."""
    bit = 56 if levels == 5 else 47
    if va & (1 << bit):
        return va | (0xFFFFFFFFFFFFFFFF & ~((1 << (bit + 1)) - 1))
    return va


def pat_index(val: int, level: int) -> int:
    """PAT index (PAT*4 + PCD*2 + PWT); PAT is bit 7 on 4 KiB PTEs, bit 12 on huge leaves."""
    pat_bit = PAT_4K if level == PTE else PAT_LARGE
    return (1 if val & PWT else 0) | (2 if val & PCD else 0) | (4 if val & pat_bit else 0)


class CacheModes:
    """Decodes an entry's cache bits through the kernel's own ``__pte2cachemode_tbl``.

    The kernel programs IA32_PAT at boot and records the resulting PTE-bits -> mode table;
    reading it back is more faithful than assuming the default layout (errata CPUs, PAT off).
    """

    def __init__(self, table: Sequence[int] | None = None) -> None:
        self.from_kernel = table is not None
        self.table = tuple(table) if table is not None else DEFAULT_PTE2CACHEMODE

    def mode(self, val: int, level: int) -> str:
        """Name of the cache mode ("WB", "UC", "UC-", ...) that a leaf entry selects."""
        return self.name(self.table[pat_index(val, level)])

    @staticmethod
    def name(mode: int) -> str:
        """An ``enum page_cache_mode`` value's name; ``BROKEN`` for a value that is none."""
        return CACHE_MODE_NAMES[mode] if 0 <= mode < len(CACHE_MODE_NAMES) else BROKEN


def entry_pa(val: int, level: int, phys_mask: int) -> int:
    """Physical address an entry points at; large leaves drop the PAT bit and low bits.

    Non-present, non-zero entries store their PFN inverted (L1TF mitigation,
    ``protnone_mask()`` in arch/x86/include/asm/pgtable-invert.h; since v4.19,
    "x86/speculation/l1tf: Protect PROT_NONE PTEs against speculation"); undo that as the
    kernel does.
    """
    if val and not val & P:
        val ^= PTE_PFN_MASK
    pa = val & PTE_PFN_MASK & phys_mask
    if level in (PUD, PMD) and val & PSE:
        pa &= ~(level_size(level) - 1)
    return pa


def perm_string(val: int) -> str:
    """Short human form of the access bits of an entry: e.g. ``RW NX``."""
    return " ".join(x for x in ("USR" if val & US else "", "RW" if val & RW else "ro",
                                "NX" if val & NX else "x") if x)


_U64 = (1 << 64) - 1
# Bits of a huge leaf's address that must be clear: the page's offset bits, less PAT (bit 12).
_HUGE_ALIGN = {PUD: ((1 << 30) - 1) & ~PAT_LARGE & PTE_PFN_MASK,
               PMD: ((1 << 21) - 1) & ~PAT_LARGE & PTE_PFN_MASK}


class X86_64:
    """x86-64 four- or five-level paging of one kernel: the walker's arch callbacks.

    Built once per kernel from its paging depth, physical-address mask (less the SME
    C-bit) and PAT table; see ``arch.Arch`` for what each member promises.
    """

    entries = ENTRIES
    page_size = PAGE_SIZE
    level_names = LEVEL_NAMES
    leaf_levels = (PUD, PMD, PTE)
    flags_mask = PTE_FLAGS_MASK
    # A present entry without PSE points at a table (at pgd/p4d, PSE is reserved and the
    # per-entry path reports it).
    table_mask, table_bits = P | PSE, P

    def __init__(self, levels: int, phys_mask: int, cache: Optional[CacheModes] = None) -> None:
        if levels not in (4, 5):
            raise ValueError(f"unsupported paging depth {levels}")
        self.levels = levels
        self.phys_mask = phys_mask
        self.cache = cache if cache is not None else CacheModes()
        self.top = top_level(levels)
        self.va_bits = 57 if levels == 5 else 48
        self.pfn_mask = PTE_PFN_MASK & phys_mask
        # precomputed for the per-entry calls (the module functions recompute them)
        self._top_shift = LEVEL_SHIFT_5[self.top]
        self._sign = 1 << (self.va_bits - 1)
        self._upper = _U64 & ~((self._sign << 1) - 1)

    # -- levels and addresses ------------------------------------------------------------
    @staticmethod
    def level_shift(level: int) -> int:
        return LEVEL_SHIFT_5[level]

    @staticmethod
    def level_size(level: int) -> int:
        return 1 << LEVEL_SHIFT_5[level]

    def top_index(self, va: int) -> int:
        return (va >> self._top_shift) & (ENTRIES - 1)

    def canonical(self, va: int) -> int:
        return va | self._upper if va & self._sign else va

    def halves(self) -> tuple[tuple[int, int], tuple[int, int]]:
        top = 1 << (self.va_bits - 1)
        return (0, top), (self.canonical(top), 1 << 64)

    # -- entries ---------------------------------------------------------------------------
    @staticmethod
    def present(val: int) -> bool:
        return bool(val & P)

    def entry_pa(self, val: int, level: int) -> int:
        """As the module's ``entry_pa`` (inverted non-present PFNs, huge-page alignment)."""
        if val and not val & P:
            val ^= PTE_PFN_MASK
        pa = val & self.pfn_mask
        if val & PSE and (level == PUD or level == PMD):
            pa &= ~((1 << LEVEL_SHIFT_5[level]) - 1)
        return pa

    @staticmethod
    def is_leaf(val: int, level: int, follow_nonpresent: bool) -> bool:
        """pmd_large() tests PSE alone; pud_large() wants PSE and P (x86 pgtable.h), which
        only matters to a ptdump walk: the MMU-semantics walk has ended at !P already."""
        return level == PTE or bool(val & PSE and (level == PMD or (level == PUD and (
            val & P or not follow_nonpresent))))

    @staticmethod
    def misaligned(val: int, level: int) -> bool:
        """A present huge leaf whose address has offset bits set (the MMU would fault)."""
        return level != PTE and bool(val & P) and bool(val & _HUGE_ALIGN[level])

    def table_problem(self, val: int, level: int) -> Optional[str]:
        """PS is reserved in pgd and p4d entries: x86-64 has no 512 GiB or 256 TiB pages."""
        return f"PS bit set at {LEVEL_NAMES[level]} (reserved)" if val & PSE and level < PUD \
            else None

    def nonpresent_child(self, val: int, level: int) -> Optional[int]:
        """mm/pagewalk.c descends a non-present pgd/p4d entry (x86's pgd_none()/p4d_none()
        look at no P bit) through p4d_pgtable()/pud_offset(), which do not un-invert; a
        non-present pud/pmd entry is neither noted nor descended (!pud/pmd_present)."""
        return None if level >= PUD else val & self.pfn_mask

    def linear_leaf(self, v0: int, level: int) -> bool:
        """A present leaf at ``level``, a huge one aligned (else the per-entry path reports)."""
        if not v0 & P:
            return False
        return level == PTE or bool(v0 & PSE) and not v0 & _HUGE_ALIGN[level]

    @staticmethod
    def effective(prev: int, val: int, first: bool) -> int:
        """Effective protection after this level, as ``effective_prot()`` in
        dump_pagetables.c: USR and RW only where every level grants them, NX if any sets it."""
        prot = val & PTE_FLAGS_MASK
        if first:
            return prot
        return (prev & prot & (US | RW)) | ((prev | prot) & NX)

    # -- protection and cache mode -----------------------------------------------------------
    def cache_mode(self, val: int, level: int) -> str:
        return self.cache.mode(val, level)

    @staticmethod
    def writable(eff: int) -> bool:
        return bool(eff & RW)

    @staticmethod
    def executable(eff: int) -> bool:
        return not eff & NX

    @staticmethod
    def user(eff: int) -> bool:
        return bool(eff & US)

    @staticmethod
    def perms(eff: int) -> str:
        return perm_string(eff)

    # -- ptdump (arch/x86/mm/dump_pagetables.c) -----------------------------------------------
    def ptdump_ranges(self) -> list[tuple[int, int]]:
        """The two ranges x86 ptdump walks: the user half, and past the guard hole."""
        if self.levels == 5:
            return [(0, 1 << 56), (0xFF10000000000000, 1 << 64)]
        return [(0, 1 << 47), (0xFFFF880000000000, 1 << 64)]

    @staticmethod
    def prot_columns(pr: int, level: int) -> str:
        """``printk_prot()``: fixed-width flag columns then the level name."""
        if not pr & P:
            return " " * 30 + LEVEL_NAMES[level]
        cols = ["USR " if pr & US else "    ", "RW " if pr & RW else "ro ",
                "PWT " if pr & PWT else "    ", "PCD " if pr & PCD else "    ",
                "PSE " if level <= 3 and pr & PSE else "    ",
                "PAT " if (level == 4 and pr & PAT_4K) or (level in (2, 3) and pr & PAT_LARGE)
                else "    ",
                "GLB " if pr & G else "    ", "NX " if pr & NX else "x  "]
        return "".join(cols) + LEVEL_NAMES[level]

    def fallback_markers(self, page_offset_base: int, vmalloc_base: int,
                         vmemmap_base: int) -> list[tuple[int, Optional[str], int]]:
        """(start, name, max_lines) of a v6.1-shaped ``address_markers``, for a kernel whose
        own array is not in memory; a base it does not have (0) is left out."""
        shift = 48 if self.levels == 5 else 39
        markers = [
            (0, "User Space", 0), (1 << 63, "Kernel Space", 0),
            ((-(112 if self.levels == 5 else 240) << shift) & _U64, "LDT remap", 0),
            (page_offset_base, "Low Kernel Mapping", 0),
            (vmalloc_base, "vmalloc() Area", 0), (vmemmap_base, "Vmemmap", 0),
            (0xFFFFFE0000000000, "CPU entry Area", 0), (0xFFFFFF0000000000, "ESPfix Area", 16),
            (EFI_VA_END, "EFI Runtime Services", 0), (START_KERNEL_MAP, "High Kernel Mapping", 0),
            (0xFFFFFFFFC0000000, "Modules", 0), (0xFFFFFFFFFF000000, "End Modules", 0),
            (0xFFFFFFFFFF5FF000, "Fixmap Area", 0), (_U64, None, 0),
        ]
        return [markers[0]] + [m for m in markers[1:] if m[0]]
