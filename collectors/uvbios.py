"""The UV BIOS entry: where ``uv_bios_call()`` jumps, and what can be checked of it live.

``uv_bios_call()`` calls ``uv_systab->function`` with efi_mm loaded (v4.7+ keep an
ioremapped ``struct uv_systab *uv_systab``; v4.6 a static copy), so that page must be mapped
executable in efi_mm where the firmware's EFI runtime descriptor puts it (its EFI VA, or
1:1); on the EFI old memory map (UV1-era kernels, no EFI table) BIOS calls run on the kernel
table and ``__va(function)`` must be mapped in init_mm.  The table lives in firmware memory:
usually not in a dump, and read as zeros through ``/proc/kcore``.
"""
from __future__ import annotations

from typing import Optional

import drgn

from .efi import Descriptor
from .kernel import KernelFacts, lookup
from .mm import EFI_MM, INIT_MM
from .ranges import DIRECT, EFI_VA, IDENTITY, Expectation, Range, va_for
from .vocab import SOURCE_UV


# bios_uv.c: uv_bios_init() ioremap()s the table, and /proc/kcore's vread() skips
# VM_IOREMAP areas: live, every byte of it reads 0 (identical v5.14 .. v7.1)
LIVE_SYSTAB = ("UVsystab cannot be read through /proc/kcore (the kernel ioremaps it and kcore "
               "reads ioremapped memory as zeros): the UV BIOS entry itself is checked in dumps "
               "only")


def systab_phys(prog: drgn.Program) -> Optional[int]:
    """``uv_systab_phys`` (v5.14+ bios_uv.c; EFI_INVALID_TABLE_ADDR (~0) when unset)."""
    obj = lookup(prog, "uv_systab_phys")
    try:
        v = obj.value_() if obj is not None else None
    except drgn.FaultError:
        return None
    return v if v and v != (1 << 64) - 1 else None


def bios_entry(prog: drgn.Program) -> tuple[Optional[int], Optional[str]]:
    """``uv_systab->function`` (the UV BIOS entry), or None and why it is unknown.

    v4.7+ keep an ioremapped ``struct uv_systab *uv_systab``; v4.6 a static copy.  The table
    itself lives in firmware memory, which a kdump usually leaves out.
    """
    tab = lookup(prog, "uv_systab")
    if tab is None:
        return None, None
    try:
        if tab.type_.kind == drgn.TypeKind.POINTER:
            if not tab.value_():
                return None, "no UVsystab (uv_systab is NULL): the UV BIOS entry is not checked"
            tab = tab[0]
        sig = bytes(tab.signature.to_bytes_())[:4]
        if sig != b"UVST":
            if prog.flags & drgn.ProgramFlags.IS_LIVE and not any(sig):
                return None, LIVE_SYSTAB
            return None, "UVsystab has no UVST signature: the UV BIOS entry is not checked"
        fn = tab.function.value_()
    except drgn.FaultError:
        return None, ("UVsystab is not readable (firmware memory is usually not in a dump): "
                      "the UV BIOS entry is not checked")
    if not fn:
        return None, "UVsystab has no BIOS entry (function is 0)"
    return fn, None


def entry_range(fn: Optional[int], facts: KernelFacts, descs: list[Descriptor],
                old_memmap: bool) -> tuple[Optional[Range], list[str]]:
    """The page holding the UV BIOS entry, expected executable where BIOS calls run, and
    the notes saying why there is none (returned, not appended: data flows one way).

    No range when the entry is unknown, or (noted) when no EFI runtime region holds it:
    then there is no physical address to hold the mapping against.
    """
    if fn is None:
        return None, []
    page = fn & ~0xFFF
    why = "uv_bios_call() jumps to uv_systab->function"
    if old_memmap:        # function is physical; the kernel's own table serves BIOS calls
        exp = Expectation(INIT_MM, DIRECT, va_for(DIRECT, page, facts), None, executable=True,
                          why=why + " on the kernel page table (EFI old memory map)")
        return Range("UV_BIOS_ENTRY", page, 4096, SOURCE_UV, "UV BIOS entry", None,
                     (("function", f"0x{fn:x}"),), (exp,)), []
    for d in descs:
        if not d.runtime:
            continue
        if d.virt and d.virt <= page < d.virt + d.size:
            phys, rule = d.phys + (page - d.virt), EFI_VA
        elif d.phys <= page < d.phys + d.size:
            phys, rule = page, IDENTITY
        else:
            continue
        exp = Expectation(EFI_MM, rule, page, None, executable=True, why=why + " on efi_mm")
        return Range("UV_BIOS_ENTRY", phys, 4096, SOURCE_UV, "UV BIOS entry", None,
                     (("function", f"0x{fn:x}"), ("efi_region", d.type_name)), (exp,)), []
    return None, [f"UV BIOS entry 0x{fn:x} lies in no EFI runtime region: "
                  "the firmware's own map does not cover it"]


def systab_range(systab_phys: Optional[int], descs: list[Descriptor]
                 ) -> tuple[Optional[Range], list[str]]:
    """Live stand-in for the BIOS entry, which cannot be read there: the page holding
    UVsystab (the kernel reads it through its own ioremap; the firmware, called on efi_mm,
    through efi_mm) must be mapped in efi_mm where the firmware's runtime descriptor says,
    1:1 and at its EFI VA.  The descriptor's own efi-memmap range checks the whole region;
    this names the page the BIOS entry depends on.  Returns the range or the note saying why
there is none."""
    page = systab_phys & ~0xFFF if systab_phys is not None else None
    for d in descs:
        if page is None or not d.runtime or not d.phys <= page < d.phys + d.size:
            continue
        why = "uv_bios_init() reads UVsystab there; BIOS calls run on efi_mm"
        exps = [Expectation(EFI_MM, IDENTITY, page, None, why=why)]
        if d.virt and d.virt != d.phys:
            exps.append(Expectation(EFI_MM, EFI_VA, d.virt + (page - d.phys), None, why=why))
        return Range("UV_SYSTAB", page, 4096, SOURCE_UV, "UVsystab", None,
                     (("uv_systab_phys", f"0x{systab_phys:x}"),
                      ("efi_region", d.type_name)), tuple(exps)), []
    if page is None:
        return None, []
    return None, [f"UVsystab (uv_systab_phys 0x{systab_phys:x}) lies in no EFI "
                  "runtime region: the firmware's own map does not cover it"]
