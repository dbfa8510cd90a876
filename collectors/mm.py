"""The two address spaces mmrwatch compares: ``init_mm`` and ``efi_mm``.

Where each root lives differs by kernel generation, decided here (and only here) by which
symbols the kernel has:

* v4.17+: ``struct mm_struct efi_mm``; its ``pgd`` is NULL until EFI runtime is set up;
* v4.6-v4.16: ``static pgd_t *efi_pgd`` in efi_64.c;
* earlier kernels shared ``trampoline_pgd`` with the kernel: no separate EFI table at all.

A missing EFI table is an explicit state with its reason (non-EFI boot, ``efi=noruntime``,
the EFI old memory map), never an error: on those machines it is the truth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import drgn

from . import faults
from .kernel import KernelFacts, lookup
from .vocab import NO_TABLE, TABLE

INIT_MM, EFI_MM = "init_mm", "efi_mm"
MM_ALIASES = {"kernel": INIT_MM, "init_mm": INIT_MM, "efi": EFI_MM, "efi_mm": EFI_MM}

# efi.flags bits (include/linux/efi.h; stable since v3.x)
EFI_BOOT, EFI_RUNTIME_SERVICES, EFI_ARCH_1 = 0, 3, 7
OLD_MEMMAP_REASON = ("EFI old memory map (efi=old_map / SGI UV1): firmware runs on the kernel "
                     "page table")


@dataclass(frozen=True)
class AddressSpace:
    """One page-table tree, or the reason there is none."""

    name: str                 # "init_mm" | "efi_mm"
    root_pa: Optional[int]    # physical address of the top-level table (kernel half)
    root_va: Optional[int]
    source: str               # the kernel symbol the root came from
    reason: str = ""          # why there is no table (root_pa is None)
    unreadable: bool = False  # no table because its root could not be read (a warning)
    # EFI old memory map (efi=old_map, UV1): no efi_mm table because firmware runs on
    # init_mm; a fact of its own so that no caller has to compare ``reason`` strings
    old_memmap: bool = False

    @property
    def has_table(self) -> bool:
        return self.root_pa is not None

    @property
    def state(self) -> str:
        return TABLE if self.has_table else NO_TABLE


def init_mm(prog: drgn.Program, facts: KernelFacts) -> AddressSpace:
    """``init_mm.pgd`` (= swapper_pg_dir, in the kernel image)."""
    pgd = prog["init_mm"].pgd.value_()
    return AddressSpace(INIT_MM, facts.kernel_pa(pgd), pgd, "init_mm.pgd")


def efi_flags(prog: drgn.Program) -> Optional[int]:
    """``efi.flags`` or None when the kernel has no EFI support compiled in."""
    efi = lookup(prog, "efi")
    try:
        return None if efi is None else efi.flags.value_()
    except (LookupError, AttributeError):
        return None


def _old_memmap_kernel(prog: drgn.Program) -> bool:
    """Whether EFI_ARCH_1 means "old memory map" on this kernel (x86, up to v5.8)."""
    return any(lookup(prog, s) is not None or _has_symbol(prog, s)
               for s in ("efi_call_phys_prolog", "efi_uv1_memmap_phys_prolog"))


def _has_symbol(prog: drgn.Program, name: str) -> bool:
    try:
        prog.symbol(name)
        return True
    except LookupError:
        return False


def _no_table(prog: drgn.Program, source: str) -> AddressSpace:
    """efi_mm without a table (its pgd is NULL), with the reason read from ``efi.flags``."""
    flags = efi_flags(prog)
    if flags is None:
        reason = "kernel built without EFI support"
    elif not flags & (1 << EFI_BOOT):
        reason = "not booted through EFI (legacy BIOS boot)"
    elif not flags & (1 << EFI_RUNTIME_SERVICES):
        reason = "EFI runtime services disabled (efi=noruntime, or firmware did not provide them)"
    elif flags & (1 << EFI_ARCH_1) and _old_memmap_kernel(prog):
        return AddressSpace(EFI_MM, None, None, source, OLD_MEMMAP_REASON, old_memmap=True)
    else:
        reason = "efi_mm has no page table"
    return AddressSpace(EFI_MM, None, None, source, reason)


def efi_mm(prog: drgn.Program, facts: KernelFacts) -> AddressSpace:
    """The EFI runtime page table, from whichever symbol this kernel generation has."""
    obj = lookup(prog, "efi_mm")
    if obj is not None:
        pgd, source = obj.pgd.value_(), "efi_mm.pgd"
    else:
        obj = lookup(prog, "efi_pgd")
        if obj is None:
            reason = ("kernel built without EFI support" if efi_flags(prog) is None else
                      "kernel has no separate EFI page table (before v4.6 EFI shared the "
                      "kernel's trampoline_pgd)")
            return AddressSpace(EFI_MM, None, None, "none", reason)
        pgd, source = obj.value_(), "efi_pgd"
    if not pgd:
        return _no_table(prog, source)
    return AddressSpace(EFI_MM, facts.kernel_pa(pgd), pgd, source)


def address_spaces(prog: drgn.Program, facts: KernelFacts) -> dict[str, AddressSpace]:
    """Both address spaces, keyed by name.  A root that cannot be read (a corrupt symbol, a
    page not in the dump) ends that space's branch only: it has no table, says why, and
    every expectation in it is an "unreadable" warning (``check``)."""
    out = {}
    for name, read in ((INIT_MM, init_mm), (EFI_MM, efi_mm)):
        space, bad = faults.catch(lambda: read(prog, facts))
        out[name] = space or AddressSpace(name, None, None, f"{name}.pgd",
                                          f"{name} unreadable: {bad}", unreadable=True)
    return out
