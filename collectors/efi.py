"""EFI runtime regions from the kernel's copy of the EFI memory map.

Every descriptor with ``EFI_MEMORY_RUNTIME`` is mapped by x86's ``efi_map_region()`` into
efi_mm twice: 1:1 (VA == PA, "catch-all for b0rked firmware") and at ``md->virt_addr`` in the
EFI window; ``PCD`` (UC-) when the descriptor lacks ``EFI_MEMORY_WB``.  The kernel's own
direct map is *not* expected to cover them (they are E820-reserved), so init_mm is only
observed: that observation is exactly the 2016 question for MMIO firmware also uses.
``efi=debug`` keeps the whole map, so the RUNTIME bit is what selects, never the type.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

import drgn

from .kernel import KernelFacts, lookup
from .mm import EFI_MM, INIT_MM, efi_flags
from .ranges import (DIRECT, EFI_VA, IDENTITY, PHYS_LIMIT, Expectation, Range, va_for,
                     va_span_problem)
from .vocab import SOURCE_EFI, UNCACHED, WB

EFI_MEMORY_WB = 1 << 3
EFI_MEMORY_XP = 1 << 14
EFI_MEMORY_RUNTIME = 1 << 63
EFI_MEM_ATTR_FLAG = 10   # efi.flags bit: firmware published a Memory Attributes table
TYPE_NAMES = ("Reserved", "LoaderCode", "LoaderData", "BootServicesCode", "BootServicesData",
              "RuntimeServicesCode", "RuntimeServicesData", "Conventional", "Unusable",
              "ACPIReclaim", "ACPINVS", "MMIO", "MMIOPortSpace", "PALCode", "Persistent")
RUNTIME_CODE = 5
_DESC = struct.Struct("<IIQQQQ")   # efi_memory_desc_t: type, pad, phys, virt, num_pages, attr
MAX_DESC = 4096                    # bytes per descriptor: a page
MAX_DESCS = 65536


@dataclass(frozen=True)
class Descriptor:
    """One ``efi_memory_desc_t``."""

    type: int
    phys: int
    virt: int
    pages: int
    attribute: int

    @property
    def size(self) -> int:
        return self.pages << 12

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type] if self.type < len(TYPE_NAMES) else f"type{self.type}"

    @property
    def runtime(self) -> bool:
        return bool(self.attribute & EFI_MEMORY_RUNTIME)

    def problem(self, levels: int = 5) -> str:
        """Why this descriptor holds values x86-64 cannot have ("" when it is sane): no
        pages, a physical range past 52 bits, or an efi_mm VA range (its EFI VA, its 1:1
        VA) that is not canonical with ``levels``-level paging.  Such a descriptor is
        garbage (a corrupt map): it is reported, not checked."""
        if self.pages <= 0:
            return "num_pages is 0"
        if self.phys + self.size > PHYS_LIMIT:
            return (f"phys_addr 0x{self.phys:x} + num_pages 0x{self.pages:x} passes 52-bit "
                    "physical addresses")
        spans = [("virt_addr", self.virt)] if self.virt and self.virt != self.phys else []
        spans.append(("its 1:1 VA", self.phys))
        for what, va in spans:
            bad = va_span_problem(va, self.size, levels)
            if bad:
                return f"{what} 0x{va:x} + 0x{self.size:x} bytes {bad}"
        return ""


def _memmap_object(prog: drgn.Program) -> Optional[drgn.Object]:
    """``efi.memmap`` (v4.7+) or the older global ``memmap`` (v4.6)."""
    efi = lookup(prog, "efi")
    if efi is not None:
        try:
            return efi.memmap
        except (LookupError, AttributeError):
            pass
    return lookup(prog, "memmap")


def _header_problem(n: int, dsize: int) -> str:
    """Why ``nr_map`` / ``desc_size`` are no EFI memory map's ("" when they can be): the
    firmware's descriptor size is at least ``efi_memory_desc_t`` and at most ``MAX_DESC``
    (UEFI pads it for 8-byte alignment and growth; real firmware says 48), and a map of
    more than ``MAX_DESCS`` descriptors is no firmware's."""
    if not _DESC.size <= dsize <= MAX_DESC:
        return f"desc_size {dsize:#x} is no descriptor size ({_DESC.size}..{MAX_DESC})"
    if not 0 < n <= MAX_DESCS:
        return f"nr_map {n:#x} is no descriptor count (1..{MAX_DESCS})"
    return ""


def read_memmap(prog: drgn.Program) -> list[Descriptor]:
    """All descriptors of the kernel's EFI memory map (empty when there is none).

    The map is read through its kernel mapping (``memremap``'d late, v4.9+) and, when that
    mapping is gone (early-boot map of v4.6-4.8), through its physical address.  A header
    no firmware could have written is a ``ValueError`` naming the value (the engine's note).
    """
    mm = _memmap_object(prog)
    if mm is None:
        return []
    n, dsize = int(mm.nr_map), int(mm.desc_size)
    if n == 0:
        return []
    bad = _header_problem(n, dsize)
    if bad:
        raise ValueError(f"efi.memmap {bad}")
    try:
        raw = prog.read(mm.map.value_(), n * dsize)
    except drgn.FaultError:
        raw = prog.read(mm.phys_map.value_(), n * dsize, True)
    return [Descriptor(t, pa, va, np, attr) for t, _, pa, va, np, attr in
            (_DESC.unpack_from(raw, i * dsize) for i in range(n))]


def runtime_ranges(prog: drgn.Program, facts: KernelFacts,
                   descs: Optional[list[Descriptor]] = None) -> list[Range]:
    """One ``Range`` per runtime descriptor, with x86's efi_mm expectations."""
    if descs is None:
        descs = read_memmap(prog)
    flags = efi_flags(prog) or 0
    mem_attr = bool(flags & (1 << EFI_MEM_ATTR_FLAG))
    out = []
    for i, d in enumerate(x for x in descs if x.runtime):
        attrs = (("type", d.type_name), ("attribute", f"0x{d.attribute:016x}"),
                 ("efi_va", f"0x{d.virt:x}"))
        bad = d.problem(facts.levels)
        if bad:
            # Garbage (a corrupt map): reported once, as a range of its own with the size it
            # claims and the reason, and nothing checked.
            out.append(Range(f"efi-{d.type_name}-{i}", d.phys, d.size or 1, SOURCE_EFI,
                             d.type_name, None, attrs + (("bad", f"{bad}; not checked"),)))
            continue
        cache = frozenset({WB}) if d.attribute & EFI_MEMORY_WB else UNCACHED
        # Runtime code must stay executable for the firmware, unless a Memory Attributes
        # table splits it into RX text and NX data (then per-page NX is by design).
        exe = True if d.type == RUNTIME_CODE and not mem_attr and not d.attribute & EFI_MEMORY_XP \
            else None
        exps = [Expectation(EFI_MM, IDENTITY, va_for(IDENTITY, d.phys, facts), cache,
                            executable=exe, why="efi_map_region() maps every runtime region 1:1")]
        if d.virt and d.virt != d.phys:
            exps.append(Expectation(EFI_MM, EFI_VA, d.virt, cache, executable=exe,
                                    why="SetVirtualAddressMap() moved the firmware here"))
        direct = va_for(DIRECT, d.phys, facts)
        if not va_span_problem(direct, d.size, facts.levels):   # else beyond the direct map
            exps.append(Expectation(INIT_MM, DIRECT, direct, None, required=False,
                                    why="observed only: the kernel need not map firmware "
                                        "regions"))
        out.append(Range(f"efi-{d.type_name}-{i}", d.phys, d.size, SOURCE_EFI, d.type_name,
                         None, attrs, tuple(exps)))
    return out


def efi_va_of(descs: list[Descriptor], phys: int) -> Optional[int]:
    """The EFI virtual address of ``phys`` when a sane runtime descriptor covers it."""
    for d in descs:
        if d.runtime and d.phys <= phys < d.phys + d.size and d.virt and not d.problem():
            return d.virt + (phys - d.phys)
    return None
