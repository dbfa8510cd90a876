"""The architecture seam: what the walker, checker and ptdump renderer ask of an architecture.

The kernel has one page-table walker (``mm/pagewalk.c``, ``mm/ptdump.c``) and per-arch
callbacks (``pmd_leaf()``, ``effective_prot()``, ``note_page()``...).  mmrwatch has the same
split: ``pagetable``, ``linear``, ``check``, ``where`` and ``ptdump`` see table entries only
through an ``Arch`` object, and ``x86.X86_64`` is the one implementation (UV is x86-64).

Conventions every implementation keeps, because the fast paths rely on them: a table is
``entries`` 64-bit little-endian words, an all-zero entry is "none" (a hole), and a run of
leaves is linear when entry k is ``v0 + k * level_size(level)`` (the address field moves,
the flag bits do not).  Levels are numbered as ``mm/ptdump.c`` numbers them: 0 is the pgd,
each table below is one more, the last level holds the smallest pages.
"""
from __future__ import annotations

from typing import Optional, Protocol


class Arch(Protocol):
    """One kernel's paging: depth, address masks, entry rules and cache decoding."""

    entries: int                  # entries per table
    page_size: int                # bytes per table page
    level_names: tuple[str, ...]  # "pgd", ... by level number
    leaf_levels: tuple[int, ...]  # levels whose entries may be leaves
    flags_mask: int               # an entry's non-address bits (what ptdump compares)
    table_mask: int               # entry & table_mask == table_bits: a present pointer
    table_bits: int               # to a next-level table, at entry & pfn_mask
    levels: int                   # paging depth
    phys_mask: int                # implemented physical-address bits (less any C-bit)
    top: int                      # level number of the root table (a folded pgd: 1)
    va_bits: int                  # implemented virtual-address bits
    pfn_mask: int                 # an entry's address field within the physical mask

    def level_shift(self, level: int) -> int:
        """Address bits mapped below one entry of ``level``."""

    def level_size(self, level: int) -> int:
        """Bytes mapped by one entry of ``level``."""

    def top_index(self, va: int) -> int:
        """Index of ``va``'s entry in the root table."""

    def canonical(self, va: int) -> int:
        """A walker-built VA (index bits only) as the CPU sees it (sign-extended)."""

    def halves(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The user and kernel halves of the address space, as ``[start, end)``."""

    def present(self, val: int) -> bool:
        """Whether the MMU would use the entry."""

    def entry_pa(self, val: int, level: int) -> int:
        """Physical address an entry maps or points at."""

    def is_leaf(self, val: int, level: int, follow_nonpresent: bool) -> bool:
        """Whether a non-zero entry maps a page rather than pointing at a table
        (``follow_nonpresent``: the page walker's semantics, else the MMU's)."""

    def misaligned(self, val: int, level: int) -> bool:
        """Whether a leaf's page address is not a multiple of its page size."""

    def table_problem(self, val: int, level: int) -> Optional[str]:
        """Why a present non-leaf entry cannot be followed, or None."""

    def nonpresent_child(self, val: int, level: int) -> Optional[int]:
        """The table a non-present entry leads the page walker to, or None to skip it."""

    def linear_leaf(self, v0: int, level: int) -> bool:
        """Whether ``v0`` can start a linear run of leaves at ``level``."""

    def effective(self, prev: int, val: int, first: bool) -> int:
        """Protection through the levels so far, this entry included."""

    def cache_mode(self, val: int, level: int) -> str:
        """Name of the cache mode a leaf selects ("WB", "UC", ...)."""

    def writable(self, eff: int) -> bool:
        """Whether an effective protection allows writes."""

    def executable(self, eff: int) -> bool:
        """Whether an effective protection allows instruction fetch."""

    def user(self, eff: int) -> bool:
        """Whether an effective protection allows user-mode access (the JSON report's
        ``user``: a kernel mapping reachable from user mode is a finding's context)."""

    def perms(self, eff: int) -> str:
        """Short human form of an effective protection."""

    def ptdump_ranges(self) -> list[tuple[int, int]]:
        """The VA ranges the kernel's ptdump walks, in order."""

    def prot_columns(self, pr: int, level: int) -> str:
        """The kernel ptdump's flag columns and level name for one line."""

    def fallback_markers(self, page_offset_base: int, vmalloc_base: int,
                         vmemmap_base: int) -> list[tuple[int, Optional[str], int]]:
        """(start, name, max_lines) address markers for a kernel without its own."""
