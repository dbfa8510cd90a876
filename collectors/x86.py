"""x86-64 page-table entry facts: bits, levels, page sizes and cache-mode decoding.

Everything architecture-specific that the walker, the checker and the ptdump renderer need,
in one place, so those modules stay arch-neutral (the kernel keeps the same split between
``mm/ptdump.c`` and ``arch/x86/mm/dump_pagetables.c``).
"""
from __future__ import annotations

from typing import Sequence

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

# Cache modes: enum page_cache_mode (arch/x86/include/asm/pgtable_types.h).
CACHE_MODE_NAMES = vocab.CACHE_MODES
# A table entry that is no page_cache_mode (6, 7, garbage): the kernel's own word for it
# (cattr_name() in arch/x86/mm/pat/memtype.h); reports and the JSON schema use it as is.
BROKEN = vocab.BROKEN
# Linux's IA32_PAT layout since v4.14 (pat_bp_init): WB, WC, UC-, UC, WB, WP, UC-, WT.
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
    ``protnone_mask()`` in arch/x86/include/asm/pgtable-invert.h); undo that as the kernel does.
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
