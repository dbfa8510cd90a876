"""Facts about the running/dumped kernel that every check needs, read once per target.

Each fact is taken from what the kernel actually has (a variable, a vmcoreinfo key), with
the fallback used only when the kernel lacks it; e.g. ``page_offset_base`` exists only
with CONFIG_RANDOMIZE_MEMORY / DYNAMIC_MEMORY_LAYOUT, ``physical_mask`` only with
DYNAMIC_PHYSICAL_MASK, ``__pte2cachemode_tbl`` since v4.2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import drgn

from . import x86
from .errors import one_line
from .pagetable import TableReader, Walker

START_KERNEL_MAP = 0xFFFFFFFF80000000
EFI_VA_START = 0xFFFFFFFF00000000    # -4 GiB  (pgtable_64_types.h, unchanged since v3.14)
EFI_VA_END = 0xFFFFFFEF00000000      # -68 GiB


def lookup(prog: drgn.Program, name: str) -> Optional[drgn.Object]:
    """The object ``name`` or None when this kernel has no such variable."""
    try:
        return prog[name]
    except (KeyError, LookupError):
        return None


def has_member(obj: drgn.Object, member: str) -> bool:
    """Whether a struct object has ``member`` (kernel layouts change across generations)."""
    try:
        obj.member_(member)
        return True
    except LookupError:
        return False


@dataclass
class KernelFacts:
    """Paging depth, physical mask, direct-map base and cache decoding of one kernel."""

    release: str
    levels: int
    page_offset_base: int
    phys_base: int
    phys_mask: int
    sme_me_mask: int
    cache: x86.CacheModes
    kaslr_offset: int
    vmcoreinfo: dict[str, str]

    def image_pa(self, va: int) -> int:
        """PA of a kernel-image address (``__pa_symbol``)."""
        return va - START_KERNEL_MAP + self.phys_base

    def direct_pa(self, va: int) -> int:
        """PA of a direct-map address (``__pa``)."""
        return va - self.page_offset_base

    def kernel_pa(self, va: int) -> int:
        """PA of a kernel pointer into the image or the direct map."""
        return self.image_pa(va) if va >= START_KERNEL_MAP else self.direct_pa(va)


def parse_vmcoreinfo(prog: drgn.Program) -> dict[str, str]:
    """VMCOREINFO as a dict (drgn exposes it as the special object ``VMCOREINFO``)."""
    try:
        raw = prog["VMCOREINFO"].string_().decode(errors="replace")
    except (KeyError, LookupError, drgn.FaultError):
        return {}
    out = {}
    for line in raw.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


def _int(prog: drgn.Program, name: str) -> Optional[int]:
    obj = lookup(prog, name)
    return None if obj is None else obj.value_()


def kernel_release(prog: drgn.Program) -> str:
    """``uname -r`` of the kernel, printable whatever bytes a corrupt dump holds there."""
    return one_line(prog["UTS_RELEASE"].string_().decode(errors="replace"), 80)


def _number(vmci: dict[str, str], key: str) -> int:
    """A VMCOREINFO number, 0 when absent or garbage (a corrupt note must not stop the
    check: every consumer has a safe meaning for 0)."""
    try:
        return int(vmci.get(key, "0"), 0)
    except ValueError:
        return 0


def read_facts(prog: drgn.Program) -> KernelFacts:
    """Collect the paging facts from memory (variables first, vmcoreinfo second)."""
    from drgn.helpers.linux.boot import kaslr_offset, pgtable_l5_enabled

    vmci = parse_vmcoreinfo(prog)
    levels = 5 if pgtable_l5_enabled(prog) else 4
    pob = _int(prog, "page_offset_base")
    if pob is None:
        from _drgn import _linux_helper_direct_mapping_offset
        pob = _linux_helper_direct_mapping_offset(prog)
    phys_base = _int(prog, "phys_base")
    if phys_base is None:
        phys_base = _number(vmci, "NUMBER(phys_base)")
    phys_mask = _int(prog, "physical_mask") or (1 << 52) - 1
    sme = _int(prog, "sme_me_mask") or _number(vmci, "NUMBER(sme_mask)")
    tbl = lookup(prog, "__pte2cachemode_tbl")
    cache = x86.CacheModes([int(x) for x in tbl.read_()] if tbl is not None else None)
    release = kernel_release(prog)
    return KernelFacts(release, levels, pob, phys_base, phys_mask & ~sme, sme, cache,
                       kaslr_offset(prog), vmci)


def make_walker(prog: drgn.Program, facts: KernelFacts,
                deadline: Optional[float] = None) -> Walker:
    """A walker over this program's physical memory, with a fresh table cache.

    ``deadline`` (a ``time.monotonic()`` value) makes every table read past it raise
    ``WalkTimeout``, so a daemon's check cannot run unbounded on a huge or changing table.
    """
    reader = TableReader(lambda pa, n: prog.read(pa, n, True), deadline=deadline)
    return Walker(reader, facts.levels, facts.phys_mask)
