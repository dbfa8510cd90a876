"""Synthetic kernels for unit tests: real x86-64 page tables in a drgn mock ``Program``.

``SynthKernel`` owns a bytearray of "RAM" at physical address 0, allocates table pages in
it, and maps ranges exactly as the hardware format says (4/5 levels, 1 GiB / 2 MiB / 4 KiB
leaves, PAT bits, shared kernel-half tables, or any raw corrupt entry a test wants).
``program()`` turns it into a drgn Program flagged as a Linux kernel
(``set_linux_kernel_custom``) whose object finder supplies ``init_mm``, ``efi_mm``, ``efi``,
``page_offset_base`` and friends, so the collectors run on it unchanged.

``check`` is the one "synthetic kernel -> check" path the unit tests share, ``uv_kernel``
the UV machine most UV, agent and report tests start from, and ``report_schema`` the
shipped JSON Schema every report test validates against.
"""
from __future__ import annotations

import json
import struct
from importlib import resources
from pathlib import Path
from typing import Optional

import drgn
from drgn import Object, Program, TypeMember

from mmrwatch.collectors import engine, uv, x86
from mmrwatch.collectors.kernel import START_KERNEL_MAP
from mmrwatch.collectors.target import Target

POB_L4 = 0xFFFF888000000000
POB_L5 = 0xFF11000000000000
KERNEL = x86.P | x86.RW | x86.A | x86.D | x86.NX        # PAGE_KERNEL-ish leaf flags
TABLE = x86.P | x86.RW | x86.A | x86.D                  # _KERNPG_TABLE
UC = x86.PCD | x86.PWT
MMR_HI = 0x3FFF0000000          # a made-up MMR_HI base, 64 MiB aligned
# hub_type as v5.10+ uv_system_init_hub() leaves it (a UV4A is UV4|UV4A), and the revision
UV_HUBS = {"UV2": (1, 3), "UV3": (2, 5), "UV4": (4, 7), "UV4A": (4 | 8, 8), "UV5": (16, 9)}


class SynthKernel:
    """A kernel's page tables and the few globals mmrwatch reads, built by hand."""

    def __init__(self, levels: int = 4, ram_mib: int = 64, pob: Optional[int] = None,
                 cachemode_tbl: Optional[list[int]] = None, sme_me_mask: int = 0,
                 efi_flags: int = 0b11001, release: str = "6.1.0-synthetic") -> None:
        self.levels = levels
        self.ram = bytearray(ram_mib << 20)
        self.pob = pob if pob is not None else (POB_L5 if levels == 5 else POB_L4)
        self.cachemode_tbl = cachemode_tbl
        self.sme = sme_me_mask
        self.efi_flags = efi_flags
        self.release = release
        self._next = 1 << 20               # table pages from 1 MiB upwards
        self.init_root = self.alloc()
        self.efi_root: Optional[int] = None
        self.descs: list[tuple[int, int, int, int, int]] = []
        self.memmap_pa: Optional[int] = None
        self.desc_size = 48          # the firmware's descriptor stride (UEFI lets it pad)
        self.old_memmap = False      # an EFI old-map (UV1-era) kernel: has the prolog symbol
        self.vmalloc_base: Optional[int] = None     # KASLR'd vmalloc_base, when set
        self.uv_state: Optional[dict] = None

    def set_uv(self, system_type: int = 2, hubless: int = 0, hub_type: int = 4,
               revision: int = 7, pnodes: tuple[int, ...] = (0,), mmr_base: int = 0,
               mmr_shift: int = 26, gru: tuple[int, int] = (0, 0), v510: bool = True,
               bios_entry: Optional[int] = None, systab_phys: Optional[int] = None,
               systab_zeros: bool = False) -> None:
        """UV globals as uv_system_init() leaves them (one hub info per pnode/node); with
        ``bios_entry`` also a UVsystab (``uv_systab->function``), as uv_bios_init() maps it."""
        self.uv_state = dict(system_type=system_type, hubless=hubless, hub_type=hub_type,
                             revision=revision, pnodes=pnodes, mmr_base=mmr_base,
                             mmr_shift=mmr_shift, gru=gru, v510=v510, bios_entry=bios_entry,
                             systab_phys=systab_phys, systab_zeros=systab_zeros)

    # -- memory ------------------------------------------------------------------------------
    def alloc(self) -> int:
        pa = self._next
        self._next += x86.PAGE_SIZE
        if self._next > len(self.ram):
            raise MemoryError(f"synthetic RAM exhausted ({len(self.ram) >> 20} MiB)")
        return pa

    def read_entry(self, table: int, idx: int) -> int:
        return struct.unpack_from("<Q", self.ram, table + idx * 8)[0]

    def write_entry(self, table: int, idx: int, val: int) -> None:
        struct.pack_into("<Q", self.ram, table + idx * 8, val)

    # -- tables ------------------------------------------------------------------------------
    def _index(self, va: int, level: int) -> int:
        return (va >> x86.level_shift(level)) & 511

    def table_for(self, root: int, va: int, level: int, table_flags: int = TABLE) -> int:
        """The table holding ``level`` entries for ``va``, creating upper tables as needed."""
        t = root
        for lvl in range(x86.top_level(self.levels), level):
            idx = self._index(va, lvl)
            e = self.read_entry(t, idx)
            if not e & x86.P:
                child = self.alloc()
                self.write_entry(t, idx, child | table_flags | self.sme)
                t = child
            else:
                if lvl >= x86.PUD and e & x86.PSE:
                    raise ValueError(f"0x{va:x} already covered by a huge page")
                t = e & x86.PTE_PFN_MASK & ~self.sme
        return t

    def map(self, root: int, va: int, pa: int, size: int, page: int = 4096,
            flags: int = KERNEL, table_flags: int = TABLE) -> None:
        """Map ``[va, va+size)`` -> ``pa`` with ``page``-sized leaves and leaf ``flags``.

        ``flags`` uses 4 KiB bit positions; PAT (bit 7) moves to bit 12 on huge pages.
        """
        level = {1 << 30: x86.PUD, 1 << 21: x86.PMD, 4096: x86.PTE}[page]
        assert va % page == 0 and pa % page == 0 and size % page == 0
        for off in range(0, size, page):
            f = flags
            if level != x86.PTE:
                f = (f & ~x86.PAT_4K) | (x86.PAT_LARGE if f & x86.PAT_4K else 0) | x86.PSE
            t = self.table_for(root, va + off, level, table_flags)
            self.write_entry(t, self._index(va + off, level), (pa + off) | f | self.sme)

    def direct_map_ram(self, root: Optional[int] = None, page: int = 1 << 21) -> None:
        """Map all synthetic RAM at ``page_offset_base`` (the kernel's direct map)."""
        self.map(self.init_root if root is None else root, self.pob, 0,
                 (len(self.ram) + page - 1) // page * page, page, KERNEL | x86.G)

    def new_efi_root(self, share_kernel_half: bool = True) -> int:
        """An efi_mm top-level table; with the kernel half's entries copied from init_mm."""
        self.efi_root = self.alloc()
        if share_kernel_half:
            self.sync_kernel_half()
        return self.efi_root

    def sync_kernel_half(self) -> None:
        """``efi_sync_low_kernel_mappings()``: copy init_mm's kernel-half top entries."""
        assert self.efi_root is not None
        for idx in range(256, 512):
            v = self.read_entry(self.init_root, idx)
            if v and not self.read_entry(self.efi_root, idx):
                self.write_entry(self.efi_root, idx, v)

    def add_efi_desc(self, typ: int, phys: int, virt: int, pages: int, attr: int) -> None:
        self.descs.append((typ, phys, virt, pages, attr))

    # -- the drgn program -----------------------------------------------------------------------
    def vmcoreinfo(self) -> bytes:
        root_va = START_KERNEL_MAP + self.init_root
        return (f"OSRELEASE={self.release}\nPAGESIZE=4096\n"
                f"SYMBOL(swapper_pg_dir)={root_va:x}\nNUMBER(phys_base)=0\n"
                f"NUMBER(pgtable_l5_enabled)={1 if self.levels == 5 else 0}\n"
                f"KERNELOFFSET=0\n").encode()

    def program(self, vmcore: Optional[str] = None, live: bool = False) -> Program:
        """A drgn Program over this RAM, flagged as a Linux kernel, with our globals.

        Memory comes from a Python callback, or with ``vmcore`` from an ELF core file that
        ``write_vmcore`` wrote, read by drgn's own core-dump reader (what a user's
        ``/proc/vmcore`` copy goes through)."""
        self._write_memmap()
        if vmcore is not None:
            prog = Program()
            prog.set_core_dump(vmcore)
        else:
            prog = Program(drgn.Platform(drgn.Architecture.X86_64))
            ram = self.ram
            prog.add_memory_segment(0, len(ram), lambda a, n, off, phys: bytes(ram[off:off + n]),
                                    True)
            prog.set_linux_kernel_custom(self.vmcoreinfo(), live)
        types = _Types(prog)
        objs = self._objects(prog, types)

        def find_object(p, name, flags, filename):
            return objs.get(name)

        prog.register_object_finder("synth", find_object, enable_index=0)
        hub = types.hub_v510 if not self.uv_state or self.uv_state["v510"] else types.hub_v47
        named = {"phys_addr_t": types.phys_addr_t, "mm_struct": types.mm, "uv_hub_info_s": hub}

        def find_type(p, kinds, name, filename):
            return named.get(name)

        prog.register_type_finder("synth", find_type, enable_index=0)
        return prog

    def _write_memmap(self) -> None:
        if self.descs and self.memmap_pa is None:
            self.memmap_pa = self.alloc()
            for i, d in enumerate(self.descs):
                at = self.memmap_pa + i * self.desc_size
                self.ram[at:at + self.desc_size] = b"\xa5" * self.desc_size    # the padding
                struct.pack_into("<IIQQQQ", self.ram, at, d[0], 0, *d[1:])

    def write_vmcore(self, path: str) -> None:
        """This RAM as an ELF64 core the way the kernel's ``/proc/vmcore`` lays one out: a
        PT_NOTE with the VMCOREINFO note, one PT_LOAD of physical memory at the direct map."""
        self._write_memmap()
        info = self.vmcoreinfo()
        name = b"VMCOREINFO\0"
        note = struct.pack("<III", len(name), len(info), 0) + name.ljust(12, b"\0") + \
            info.ljust((len(info) + 3) & ~3, b"\0")
        phoff, nph = 64, 2
        note_off = phoff + 56 * nph
        load_off = (note_off + len(note) + 4095) & ~4095
        ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 4, 62, 1,
                           0, phoff, 0, 0, 64, 56, nph, 64, 0, 0)
        pt_note = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(note), len(note), 4)
        pt_load = struct.pack("<IIQQQQQQ", 1, 7, load_off, self.pob, 0, len(self.ram),
                              len(self.ram), 4096)
        with open(path, "wb") as f:
            f.write(ehdr + pt_note + pt_load + note)
            f.seek(load_off)
            f.write(self.ram)

    def _objects(self, prog: Program, t: "_Types") -> dict[str, Object]:
        objs = {
            "init_mm": Object(prog, t.mm, value={"pgd": START_KERNEL_MAP + self.init_root}),
            "efi_mm": Object(prog, t.mm, value={"pgd": self.pob + self.efi_root
                                                if self.efi_root is not None else 0}),
            "page_offset_base": Object(prog, t.ulong, self.pob),
            "phys_base": Object(prog, t.ulong, 0),
            "sme_me_mask": Object(prog, t.ulong, self.sme),
            "efi": Object(prog, t.efi, value={
                "flags": self.efi_flags,
                "memmap": {"phys_map": self.memmap_pa or 0,
                           "map": (self.pob + self.memmap_pa) if self.memmap_pa else 0,
                           "map_end": (self.pob + self.memmap_pa
                                       + self.desc_size * len(self.descs))
                           if self.memmap_pa else 0,
                           "nr_map": len(self.descs), "desc_version": 1,
                           "desc_size": self.desc_size,
                           "flags": 0}}),
        }
        if self.uv_state is not None:
            objs.update(self._uv_objects(prog, t))
        if self.vmalloc_base is not None:
            objs["vmalloc_base"] = Object(prog, t.ulong, self.vmalloc_base)
        if self.cachemode_tbl is not None:
            objs["__pte2cachemode_tbl"] = Object(prog, prog.array_type(t.u8, 8),
                                                 value=self.cachemode_tbl)
        return objs


    def _uv_objects(self, prog: Program, t: "_Types") -> dict[str, Object]:
        u = self.uv_state
        hub_t = t.hub_v510 if u["v510"] else t.hub_v47
        lst = self.alloc()
        for node, pnode in enumerate(u["pnodes"]):
            h = self.alloc()
            vals = {"hub_revision": u["revision"], "global_mmr_base": u["mmr_base"],
                    "global_mmr_shift": u["mmr_shift"], "pnode": pnode, "numa_blade_id": node}
            if u["v510"]:
                vals["hub_type"] = u["hub_type"]
            raw = Object(prog, hub_t, value=vals).to_bytes_()
            self.ram[h:h + len(raw)] = raw
            struct.pack_into("<Q", self.ram, lst + node * 8, self.pob + h)
        void_pp = prog.pointer_type(prog.pointer_type(prog.void_type()))
        systab = 0
        if u["bios_entry"] is not None:
            systab = self.alloc()
            if not u["systab_zeros"]:     # zeros: how /proc/kcore shows an ioremapped table
                struct.pack_into("<4sIQI", self.ram, systab, b"UVST", 0x400, u["bios_entry"], 24)
        extra = {}
        if self.old_memmap:
            extra["efi_uv1_memmap_phys_prolog"] = Object(prog, t.int, 0)
        return {
            **extra,
            "uv_systab": Object(prog, prog.pointer_type(t.systab),
                                (self.pob + systab) if systab else 0),
            "uv_systab_phys": Object(prog, t.ulong, u["systab_phys"]
                                     if u["systab_phys"] is not None else (1 << 64) - 1),
            "uv_system_type": Object(prog, t.int, u["system_type"]),
            "uv_hubless_system": Object(prog, t.int, u["hubless"]),
            "uv_min_hub_revision_id": Object(prog, t.int, u["revision"]),
            "__uv_hub_info_list": Object(prog, void_pp, self.pob + lst),
            "nr_node_ids": Object(prog, t.int, len(u["pnodes"])),
            "gru_start_paddr": Object(prog, t.ulong, u["gru"][0]),
            "gru_end_paddr": Object(prog, t.ulong, u["gru"][1]),
        }


class _Types:
    """The handful of kernel types the collectors touch, built with drgn's type API."""

    def __init__(self, prog: Program) -> None:
        self.ulong = prog.int_type("unsigned long", 8, False)
        self.int = prog.int_type("int", 4, True)
        self.u8 = prog.int_type("unsigned char", 1, False)
        self.phys_addr_t = prog.typedef_type("phys_addr_t", prog.int_type("unsigned long long",
                                                                          8, False))
        pgd_t = prog.typedef_type("pgd_t", prog.struct_type(None, 8, (
            TypeMember(prog.typedef_type("pgdval_t", self.ulong), "pgd", 0),)))
        self.mm = prog.struct_type("mm_struct", 16, (
            TypeMember(self.ulong, "mmap_base", 0),
            TypeMember(prog.pointer_type(pgd_t), "pgd", 64)))
        void_p = prog.pointer_type(prog.void_type())
        self.memmap = prog.struct_type("efi_memory_map", 56, (
            TypeMember(self.ulong, "phys_map", 0), TypeMember(void_p, "map", 64),
            TypeMember(void_p, "map_end", 128), TypeMember(self.int, "nr_map", 192),
            TypeMember(self.ulong, "desc_version", 256), TypeMember(self.ulong, "desc_size", 320),
            TypeMember(self.ulong, "flags", 384)))
        u8, u16 = self.u8, prog.int_type("unsigned short", 2, False)
        # struct uv_hub_info_s, v5.10-v6.1 layout (offsets from the test kernel's DWARF) and
        # the v4.7-v5.9 one (no hub_type; hub_revision further down)
        self.hub_v510 = prog.struct_type("uv_hub_info_s", 136, (
            TypeMember(prog.int_type("unsigned int", 4, False), "hub_type", 0),
            TypeMember(u8, "hub_revision", 32), TypeMember(self.ulong, "global_mmr_base", 64),
            TypeMember(self.ulong, "global_mmr_shift", 128), TypeMember(u16, "pnode", 960),
            TypeMember(u16, "numa_blade_id", 1008)))
        self.hub_v47 = prog.struct_type("uv_hub_info_s", 136, (
            TypeMember(self.ulong, "global_mmr_base", 0),
            TypeMember(self.ulong, "global_mmr_shift", 64), TypeMember(u8, "hub_revision", 560),
            TypeMember(u16, "pnode", 960), TypeMember(u16, "numa_blade_id", 1008)))
        self.systab = prog.struct_type("uv_systab", 24, (
            TypeMember(prog.array_type(prog.int_type("char", 1, True), 4), "signature", 0),
            TypeMember(prog.int_type("unsigned int", 4, False), "revision", 32),
            TypeMember(self.ulong, "function", 64),
            TypeMember(prog.int_type("unsigned int", 4, False), "size", 128)))
        self.efi = prog.struct_type("efi", 64, (
            TypeMember(self.memmap, "memmap", 0), TypeMember(self.ulong, "flags", 448)))


def target(k: SynthKernel, live: bool = False, fmt: str = "synth") -> Target:
    """``k`` as an opened target (``live`` only flags it: the program stays a mock)."""
    return Target(k.program(), "synth", live, fmt, None, None)


def check(k: SynthKernel, sources: Optional[list[engine.RangeSource]] = None,
          ranges_toml: str = "", tmp: Optional[Path] = None, live: bool = False,
          fmt: str = "synth") -> engine.CheckResult:
    """One check of ``k``: with the given sources, else a plain report's (plus
    ``ranges_toml`` as the user's ranges file, written into ``tmp``)."""
    if sources is None:
        path = None
        if ranges_toml:
            path = tmp / "ranges.toml"
            path.write_text(ranges_toml)
        sources = engine.default_sources(path)
    return engine.run_check(target(k, live, fmt), sources)


def uv_kernel(hub: str, blades: int, v510: bool = True, healthy: bool = True,
              gru: bool = True) -> SynthKernel:
    """A UV machine as ``uv_system_init()`` leaves it: one hub of generation ``hub`` per
    blade (pnodes 0..blades-1), MMR_HI at ``MMR_HI``, a GRU unless ``gru`` is False; with
    ``healthy`` every UV range is mapped as the kernel maps it, else none is."""
    k = SynthKernel(ram_mib=32)
    k.direct_map_ram()
    hub_type, rev = UV_HUBS[hub]
    shift = 25 if hub == "UV5" else 26
    gseg = 1 << (25 if hub == "UV5" else 26 if hub.startswith("UV4") else 28)
    gbase = 0x7FF00000000
    k.set_uv(hub_type=hub_type, revision=rev, pnodes=tuple(range(blades)),
             mmr_base=MMR_HI | (1 << 63), mmr_shift=shift,
             gru=(gbase, gbase + blades * gseg) if gru else (0, 0), v510=v510)
    if healthy:
        sysm = uv.UVSystem(uv.HUBBED, hub, rev,
                           [uv.Hub(i, i, i, rev, MMR_HI, shift) for i in range(blades)],
                           (gbase, gbase + blades * gseg) if gru else None, v510)
        for name, pa, size, blade, cache in uv.segments(sysm):
            flags = KERNEL | (UC if cache == uv.UC_ONLY else 0)
            k.map(k.init_root, k.pob + pa, pa, size, 1 << 21, flags)
    k.new_efi_root()
    return k


def report_schema() -> dict:
    """The JSON Schema mmrwatch ships for its reports."""
    return json.loads(resources.files("mmrwatch").joinpath("report.schema.json").read_text())
