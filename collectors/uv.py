"""SGI/HPE UV hub MMR ranges, discovered from kernel state alone (no MMR reads).

What ``uv_system_init()`` maps with ``init_extra_mapping_uc/wb()`` (2 MiB pages in init_mm at
``page_offset_base + phys``), per hub type and kernel generation, from
``arch/x86/kernel/apic/x2apic_uv_x.c`` (read in v5.9, v6.1 and v6.12):

* LOCAL_MMR   0xfa000000/32 MiB (UV1: 0xf4000000/64 MiB), UC;
* GLOBAL_MMR32 0xfc000000/32 MiB on UV2/UV3; 16 MiB on UV4 before v5.10; none on UV4/UV5
  from v5.10 (decided by the hub info having ``hub_type``, which "x86/platform/uv: Update
  UV MMRs for UV5", 647128f1536e, v5.10, added);
* MMR_HI  ``global_mmr_base`` (masked), ``1 << shift`` per pnode up to max_pnode, UC;
* GRU_HI  ``[gru_start_paddr, gru_end_paddr)``, WB;
* MMIOH   recorded only in the kernel's boot message (UV2 only from "x86/platform/uv: Update
  MMIOH references based on new UV5 MMRs", ffe2febca430, v5.10; ``UV: Map MMIOH_HI``):
  checked when that line is still in the printk ring, else reported as a note;
* the boot messages also say which MMR_HI/GRU_HI span the kernel really mapped (from the
  overlay registers); when it differs from the hub info, the logged span is checked;
* the UV BIOS entry ``uv_systab->function``: ``uv_bios_call()`` jumps there with efi_mm
  loaded, so its page must be mapped executable in efi_mm (at the firmware's EFI VA, or 1:1);
  on the EFI old memory map (UV1-era kernels, no EFI table) BIOS calls run on the kernel
  table and the entry must be mapped at ``__va(function)`` in init_mm instead.

Hubless UV systems and UV kernels on other hardware map nothing: explicit states, no ranges.
Which high span to check when hub info and the boot lines disagree is ``uvspans``'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import drgn

from . import uvbios, uvbounds, uvlog
from .efi import Descriptor
from .kernel import KernelFacts, has_member, lookup
from .mm import EFI_MM, INIT_MM
from .ranges import (DIRECT, EFI_VA, IDENTITY, Expectation, Range, segment_label, state_range,
                     va_for)
from .uvspans import Notebook, log_disagreements, spans
from .vocab import HUBBED, HUBLESS, NOT_UV_HW, NOT_UV_KERNEL, SOURCE_UV, UC, UNCACHED, WB

# uv_mmrs.h (v5.10+), highest bit first: a UV4A hub has hub_type UV4|UV4A (v5.10
# early_set_hub_type(): "uv_hub_type_set(UV4|UV4A)" for a revision-2 UV4 part), so the UV4
# bit alone does not tell UV4 from UV4A
HUB_TYPE_BITS = {16: "UV5", 8: "UV4A", 4: "UV4", 2: "UV3", 1: "UV2"}
REVISION_BASES = ((9, "UV5"), (8, "UV4A"), (7, "UV4"), (5, "UV3"), (3, "UV2"), (1, "UV1"))
UC_ONLY = frozenset({UC})
WB_ONLY = frozenset({WB})


@dataclass(frozen=True)
class Hub:
    """One hub's ``struct uv_hub_info_s`` fields that decide mappings."""

    node: int
    pnode: int
    blade: int
    revision: int
    global_mmr_base: int
    global_mmr_shift: int


@dataclass
class UVSystem:
    """What kind of UV system the kernel believes it runs on."""

    state: str
    hub: Optional[str] = None
    revision: Optional[int] = None
    hubs: list[Hub] = field(default_factory=list)
    gru: Optional[tuple[int, int]] = None
    has_hub_type: bool = False          # v5.10+ layout
    bios_entry: Optional[int] = None    # uv_systab->function
    systab_phys: Optional[int] = None   # uv_systab_phys, checked instead when live (kcore)
    logged: dict[str, uvlog.LoggedMap] = field(default_factory=dict)   # boot "UV: Map" lines
    vmalloc_base: Optional[int] = None  # where the direct-map window ends (KASLR layout)
    notes: list[str] = field(default_factory=list)
    # kernel state no UV system can have (uvbounds), by what it is: one finding each
    problems: dict[str, str] = field(default_factory=dict)

    def problem(self, what: str, why: str) -> None:
        """Record corrupt state found while discovering (once: see ``Notebook``)."""
        Notebook(self.problems, self.notes).problem(what, why)

    @property
    def pnodes(self) -> list[int]:
        return sorted({h.pnode for h in self.hubs})

    @property
    def blades(self) -> int:
        return len(self.pnodes)

    def blade_of(self) -> dict[int, int]:
        """pnode -> blade (``numa_blade_id``) for the pnodes that have a hub."""
        return {h.pnode: h.blade for h in self.hubs}

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"state": self.state}
        if self.state == HUBBED:
            out.update(hub=self.hub, revision=self.revision, blades=self.blades,
                       min_pnode=min(self.pnodes, default=None),
                       max_pnode=max(self.pnodes, default=None))
        return out


def hub_name(revision: int, hub_type: Optional[int]) -> Optional[str]:
    """Hub generation from the v5.10+ ``hub_type`` bitmask (its highest generation bit),
    else from the revision."""
    if hub_type:
        for bit, name in HUB_TYPE_BITS.items():
            if hub_type & bit:
                return name
    for base, name in REVISION_BASES:
        if revision >= base:
            return name
    return None


def _hub_objects(prog: drgn.Program, sysm: UVSystem) -> list[tuple[int, drgn.Object]]:
    """(node, hub info) pairs from whichever structure this kernel generation has (none,
    and a problem, when ``nr_node_ids`` is garbage: the list's length is unknown)."""
    lst = lookup(prog, "__uv_hub_info_list")
    if lst is not None and lst.value_():
        nr = lookup(prog, "nr_node_ids")
        n = int(nr) if nr is not None else 1
        bad = uvbounds.nodes_problem(n)
        if bad:
            sysm.problem("hub list", bad)
            return []
        t = prog.type("struct uv_hub_info_s *")
        out, seen = [], set()
        for node in range(n):
            p = lst[node].value_()
            if p and p not in seen:
                seen.add(p)
                out.append((node, drgn.Object(prog, t, p)[0]))
        return out
    node0 = lookup(prog, "uv_hub_info_node0")
    if node0 is not None and has_member(node0, "pnode") and node0.hub_revision.value_():
        return [(0, node0)]
    percpu = lookup(prog, "__uv_hub_info")           # v4.6: per-cpu copies
    if percpu is not None:
        from drgn.helpers.linux.cpumask import for_each_possible_cpu
        from drgn.helpers.linux.percpu import per_cpu
        out, seen = [], set()
        for cpu in for_each_possible_cpu(prog):
            h = per_cpu(percpu, cpu)
            key = int(h.pnode)
            if key not in seen:
                seen.add(key)
                out.append((cpu, h))
        return out
    return []


def _read_hubs(prog: drgn.Program, sysm: UVSystem) -> None:
    """Every hub's mapping parameters; hubs whose pnode no hub of this generation can have
    are one problem (those hubs not counted); pnode 0xffff is none at all (skipped, as the
    kernel does)."""
    bad = []
    for node, h in _hub_objects(prog, sysm):
        sysm.has_hub_type = has_member(h, "hub_type")
        rev = int(h.hub_revision)
        if sysm.hub is None:
            sysm.hub = hub_name(rev, int(h.hub_type) if sysm.has_hub_type else None)
            sysm.revision = rev
        pnode = int(h.pnode)
        if pnode == uvbounds.PNODE_NONE:
            continue
        why = uvbounds.pnode_problem(pnode, node, sysm.hub)
        if why:
            bad.append(why)
            continue
        sysm.hubs.append(Hub(node, pnode, int(h.numa_blade_id), rev, h.global_mmr_base.value_(),
                             int(h.global_mmr_shift) if has_member(h, "global_mmr_shift") else 26))
    if bad:
        sysm.problem("hub pnodes", bad[0] + (f" (and {len(bad) - 1} more)" if bad[1:] else ""))


def discover(prog: drgn.Program) -> UVSystem:
    """Classify the system and read every hub's mapping parameters."""
    st = lookup(prog, "uv_system_type")
    if st is None and lookup(prog, "__uv_hub_info_list") is None:
        return UVSystem(NOT_UV_KERNEL)
    hubless = lookup(prog, "uv_hubless_system")
    if hubless is not None and int(hubless.value_()):
        return UVSystem(HUBLESS, notes=["hubless UV system: the kernel maps no hub MMRs"])
    if st is None or not st.value_():
        return UVSystem(NOT_UV_HW)
    sysm = UVSystem(HUBBED)
    _read_hubs(prog, sysm)
    if sysm.revision is None:
        minrev = lookup(prog, "uv_min_hub_revision_id")
        sysm.revision = int(minrev) if minrev is not None else None
        sysm.hub = hub_name(sysm.revision or 0, None)
    gs, ge = lookup(prog, "gru_start_paddr"), lookup(prog, "gru_end_paddr")
    if gs is not None and ge is not None and ge.value_() > gs.value_():
        sysm.gru = (gs.value_(), ge.value_())
    vb = lookup(prog, "vmalloc_base")
    sysm.vmalloc_base = vb.value_() if vb is not None else None
    sysm.logged = uvlog.boot_maps(prog)
    if not any(k.startswith("MMIOH") for k in sysm.logged):
        sysm.notes.append("MMIOH ranges are recorded only in the kernel's boot messages, which "
                          "are not in the log (any more): not checked; on UV3+ the kernel does "
                          "not map them by design")
    sysm.notes.extend(log_disagreements(sysm))
    sysm.bios_entry, why = uvbios.bios_entry(prog)
    if why == uvbios.LIVE_SYSTAB:
        sysm.systab_phys = uvbios.systab_phys(prog)
        if sysm.systab_phys:
            why += (f"; checked instead: the page holding UVsystab (uv_systab_phys "
                    f"0x{sysm.systab_phys:x}) mapped in efi_mm")
    if why:
        sysm.notes.append(why)
    return sysm


def _low_ranges(sysm: UVSystem) -> list[tuple[str, int, int, frozenset[str]]]:
    if sysm.hub == "UV1":
        return [("LOCAL_MMR", 0xF4000000, 64 << 20, UC_ONLY),
                ("GLOBAL_MMR32", 0xF8000000, 64 << 20, UC_ONLY)]
    out = [("LOCAL_MMR", 0xFA000000, 32 << 20, UC_ONLY)]
    if sysm.hub in ("UV2", "UV3"):
        out.append(("GLOBAL_MMR32", 0xFC000000, 32 << 20, UC_ONLY))
    elif sysm.hub in ("UV4", "UV4A") and not sysm.has_hub_type:
        out.append(("GLOBAL_MMR32", 0xFC000000, 16 << 20, UC_ONLY))   # v4.7-v5.9
    return out


def segments(sysm: UVSystem, facts: Optional[KernelFacts] = None,
             book: Optional[Notebook] = None
             ) -> list[tuple[str, int, int, Optional[int], frozenset[str]]]:
    """(name, phys, size, pnode, cache) for every range the kernel maps; spans no UV system
    can have are problems in ``book`` instead (a throwaway one when not given).

    ``map_high()`` maps ``max_pnode + 1`` segments, one per pnode from 0, whether or not a
    pnode has a hub: a segment is a pnode's; it is a blade's only where that pnode has one
    (``blade_of``)."""
    book = book if book is not None else Notebook(dict(sysm.problems))
    out: list[tuple[str, int, int, Optional[int], frozenset[str]]] = [
        (n, pa, sz, None, c) for n, pa, sz, c in _low_ranges(sysm)]
    found = spans(sysm, book, facts)
    for key, cache in (("MMR", UC_ONLY), ("GRU", WB_ONLY)):
        if key in found:
            start, seg, n = found[key]
            out += [(f"{key}_HI", start + p * seg, seg, p, cache) for p in range(n)]
    for key, m in sorted(sysm.logged.items()):
        if not key.startswith("MMIOH"):
            continue
        bad = uvbounds.span_problem(f"{key}_HI", m.start, m.size, 1, facts)
        if bad:
            book.problem(f"{key}_HI boot line", f"the kernel's 'UV: Map' line gives {bad}")
            continue
        out.append((f"{key}_HI", m.start, m.size, None, WB_ONLY if m.mode == WB else UC_ONLY))
    return out


def _window_notes(sysm: UVSystem, facts: KernelFacts,
                  segs: list[tuple[str, int, int, Optional[int], frozenset[str]]]
                  ) -> list[str]:
    """A UV range whose direct-map address runs past ``vmalloc_base`` was mapped by
    ``init_extra_mapping_*()`` into vmalloc space: KASLR sized the direct-map window from
    RAM + ``CONFIG_RANDOMIZE_MEMORY_PHYSICAL_PADDING``, too small for this machine's MMRs."""
    vb = sysm.vmalloc_base
    if not vb or vb <= facts.page_offset_base:
        return []
    blades = sysm.blade_of()
    for name, pa, size, pnode, _ in segs:
        if facts.page_offset_base + pa + size > vb:
            label = segment_label(name, pnode, blades.get(pnode) if pnode is not None else None)
            return [
                f"{label} (PA 0x{pa:x}) has its direct-map address beyond the direct-map "
                f"window (it ends {(pa + size - (vb - facts.page_offset_base)) >> 20} MiB "
                "into the vmalloc area): the kernel's MMR mapping overlaps vmalloc space; "
                "CONFIG_RANDOMIZE_MEMORY_PHYSICAL_PADDING is too small for this machine"]
    return []


def ranges(sysm: UVSystem, facts: KernelFacts, descs: list[Descriptor],
           old_memmap: bool = False) -> tuple[list[Range], list[str]]:
    """UV ranges with their expectations in init_mm and efi_mm (hubbed systems only), and
    the notes working them out added to discovery's (``sysm`` is left as discovered)."""
    if sysm.state != HUBBED:
        return [], []
    book = Notebook(dict(sysm.problems))
    segs = segments(sysm, facts, book)
    out = [state_range(f"uv-{what.replace(' ', '-')}", SOURCE_UV, f"UV {what}: {why}")
           for what, why in book.problems.items()]
    book.notes += _window_notes(sysm, facts, segs)
    entry, entry_notes = uvbios.entry_range(sysm.bios_entry, facts, descs, old_memmap)
    book.notes += entry_notes
    if entry is not None:
        out.append(entry)
    elif sysm.systab_phys is not None:
        tab, tab_notes = uvbios.systab_range(sysm.systab_phys, descs)
        book.notes += tab_notes
        if tab is not None:
            out.append(tab)
    blades = sysm.blade_of()
    for name, pa, size, pnode, cache in segs:
        blade = blades.get(pnode) if pnode is not None else None
        exps = [Expectation(INIT_MM, DIRECT, va_for(DIRECT, pa, facts), cache, writable=True,
                            why="uv_system_init() maps it with init_extra_mapping_*()"),
                Expectation(EFI_MM, DIRECT, va_for(DIRECT, pa, facts), cache, writable=True,
                            shared_from=INIT_MM,
                            why="UV BIOS uses it through efi_mm's copy of the kernel half")]
        rt = [d for d in descs if d.runtime and d.phys < pa + size and pa < d.phys + d.size]
        if rt:
            d = rt[0]
            ecache = UNCACHED if cache == UC_ONLY else None
            exps.append(Expectation(EFI_MM, IDENTITY, pa, ecache,
                                    why="firmware lists it as EFI runtime MMIO: mapped 1:1"))
            if d.virt and d.virt != d.phys:
                exps.append(Expectation(EFI_MM, EFI_VA, d.virt + (pa - d.phys), ecache,
                                        why="firmware lists it as EFI runtime MMIO"))
        out.append(Range(name, pa, size, SOURCE_UV, name, blade,
                         (("hub", sysm.hub or "?"),), tuple(exps), pnode))
    return out, book.notes
