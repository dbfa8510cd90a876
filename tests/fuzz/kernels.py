"""Synthetic kernels for fuzzing: ``tests.synth.SynthKernel`` plus what a crash dump holds
beyond page tables, with every global in RAM where a corruption can reach it.

``FuzzKernel`` adds CPUs (``__cpu_online_mask``, ``nr_cpu_ids``, ``__per_cpu_offset``, the
per-CPU ``runqueues`` and ``cpu_tlbstate``, tasks with their mms, ``panic_cpu``) and a
printk log in the pre-5.10 structured format (``log_buf`` + ``struct printk_log``) so
crash forensics and the UV boot-line parser run too.  Every global (``init_mm``, ``efi``,
the UV globals, ...) is written into RAM and answered by the object finder as a reference
object there, not as a Python value: the mock program and the ELF dump then read the same
bytes, and a byte-level corruption of RAM reaches them.  ``edits`` are callables run on the
objects before they are placed (kernel-data corruptions).

The mock program gets the direct map as a virtual memory segment, as drgn's ELF reader has
it from the dump's PT_LOAD, so a global stays readable when the page tables are garbage
(exactly as in a real dump).
"""
from __future__ import annotations

import struct
from typing import Callable, Optional

import drgn
from drgn import Object, Program, TypeMember

from mmrwatch.collectors import x86
from mmrwatch.collectors.kernel import START_KERNEL_MAP
from tests.synth import KERNEL, UC, SynthKernel, _Types

RQ_OFF, TLB_OFF = 0x1000, 0x1100        # per-CPU symbol addresses (offsets), as in System.map
LOG_CONT = 8
RUNTIME, MMIO, RT_CODE, RT_DATA = 1 << 63, 11, 5, 6


class FuzzTypes(_Types):
    """``tests.synth._Types`` plus the CPU, task and printk types forensics reads."""

    def __init__(self, prog: Program) -> None:
        super().__init__(prog)
        p = prog
        self.uint = p.int_type("unsigned int", 4, False)
        self.u16 = p.int_type("unsigned short", 2, False)
        self.u64 = p.typedef_type("u64", p.int_type("unsigned long long", 8, False))
        self.u32 = p.typedef_type("u32", self.uint)
        self.char = p.int_type("char", 1, True)
        self.mm_p = p.pointer_type(self.mm)
        self.cpumask = p.struct_type("cpumask", 8, (
            TypeMember(p.array_type(self.ulong, 1), "bits", 0),))
        self.task = p.struct_type("task_struct", 48, (
            TypeMember(p.array_type(self.char, 16), "comm", 0),
            TypeMember(self.int, "pid", 128), TypeMember(self.mm_p, "mm", 192),
            TypeMember(self.mm_p, "active_mm", 256)))
        self.rq = p.struct_type("rq", 64, (TypeMember(p.pointer_type(self.task), "curr", 0),))
        self.tlb = p.struct_type("tlb_state", 16, (TypeMember(self.mm_p, "loaded_mm", 0),))
        self.atomic = p.typedef_type("atomic_t", p.struct_type(None, 4, (
            TypeMember(self.int, "counter", 0),)))
        self.printk_log = p.struct_type("printk_log", 16, (
            TypeMember(self.u64, "ts_nsec", 0), TypeMember(self.u16, "len", 64),
            TypeMember(self.u16, "text_len", 80), TypeMember(self.u16, "dict_len", 96),
            TypeMember(self.u8, "facility", 112),
            TypeMember(Object(p, self.u8, bit_field_size=5), "flags", 120),
            TypeMember(Object(p, self.u8, bit_field_size=3), "level", 125)))
        self.log_flags = p.enum_type("log_flags", self.uint, (
            drgn.TypeEnumerator("LOG_NEWLINE", 2), drgn.TypeEnumerator("LOG_CONT", LOG_CONT)))
        self.uv_system_type = p.enum_type("uv_system_type", self.uint, (
            drgn.TypeEnumerator("UV_NONE", 0), drgn.TypeEnumerator("UV_LEGACY_APIC", 1),
            drgn.TypeEnumerator("UV_X2APIC", 2)))
        self.uint8_t = p.typedef_type("uint8_t", self.u8)
        self.char_p = p.pointer_type(self.char)

    def named(self) -> dict[str, drgn.Type]:
        """Types by the spelling drgn's type finder is asked for."""
        return {"phys_addr_t": self.phys_addr_t, "mm_struct": self.mm, "efi": self.efi,
                "efi_memory_map": self.memmap, "uv_systab": self.systab, "cpumask": self.cpumask,
                "task_struct": self.task, "rq": self.rq, "tlb_state": self.tlb,
                "atomic_t": self.atomic, "printk_log": self.printk_log, "u64": self.u64, "u32": self.u32,
                "uint8_t": self.uint8_t, "log_flags": self.log_flags,
                "uv_system_type": self.uv_system_type, "unsigned long": self.ulong,
                "int": self.int, "unsigned int": self.uint}


class FuzzKernel(SynthKernel):
    """A SynthKernel with CPUs, tasks, a log and every global in RAM (see module doc)."""

    def __init__(self, *args, cpus: int = 2, crashed: Optional[int] = 1,
                 log: Optional[list[tuple[int, str]]] = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.cpus = cpus
        self.crashed = crashed
        self.log = list(log or [])
        self.edits: list[Callable[["FuzzKernel", Program, FuzzTypes, dict], None]] = []
        self.symbols: dict[str, int] = {}
        self._slots: dict[str, int] = {}
        self._area: list[int] = []      # [next free PA, end] of the globals area
        self.proc_root: Optional[int] = None
        self.types: Optional[FuzzTypes] = None
        # globals at kernel-image addresses (START_KERNEL_MAP + pa), as kallsyms lists them;
        # else in the direct map (what a System.map of this synthetic kernel says)
        self.image_globals = False
        self.vmcoreinfo_extra = b""

    def clone(self) -> "FuzzKernel":
        """An independent copy (RAM, descriptors, UV state, log, edits)."""
        c = object.__new__(type(self))
        c.__dict__ = dict(self.__dict__)
        c.ram = bytearray(self.ram)
        c.descs = list(self.descs)
        c.uv_state = dict(self.uv_state) if self.uv_state else None
        c.log, c.edits = list(self.log), list(self.edits)
        c.symbols, c._slots, c._area = dict(self.symbols), dict(self._slots), list(self._area)
        return c

    # -- layout ------------------------------------------------------------------------------
    def slot(self, name: str, size: int) -> int:
        """The PA reserved for global ``name`` (stable across program() calls)."""
        pa = self._slots.get(name)
        if pa is None:
            if not self._area or self._area[0] + size > self._area[1]:
                first = self.alloc()
                for _ in range(1, (size + 4095) // 4096):
                    self.alloc()
                self._area = [first, self._next]
            pa = (self._area[0] + 7) & ~7
            self._area[0] = pa + size
            self._slots[name] = pa
        return pa

    def va(self, pa: int) -> int:
        """Direct-map address of ``pa`` (allocated memory: tasks, per-CPU areas, the log)."""
        return self.pob + pa

    def gva(self, pa: int) -> int:
        """Address of a global at ``pa``: in the kernel image or the direct map."""
        return START_KERNEL_MAP + pa if self.image_globals else self.pob + pa

    def vmcoreinfo(self) -> bytes:
        return super().vmcoreinfo() + self.vmcoreinfo_extra

    def finish(self) -> None:
        """Lay out what only needs doing once: the process page table, CPU areas."""
        if self.proc_root is None:
            self.proc_root = self.alloc()
            for idx in range(256, 512):
                v = self.read_entry(self.init_root, idx)
                if v:
                    self.write_entry(self.proc_root, idx, v)
            self.map(self.proc_root, 0x400000, 0x2000, 4096)      # a user page
        self._write_memmap()

    # -- objects -----------------------------------------------------------------------------
    def _objects(self, prog: Program, t: _Types) -> dict[str, Object]:
        self.finish()
        ft = t if isinstance(t, FuzzTypes) else FuzzTypes(prog)
        objs = super()._objects(prog, ft)
        objs.update(self._cpu_objects(prog, ft))
        objs.update(self._log_objects(prog, ft))
        for edit in self.edits:
            edit(self, prog, ft, objs)
        placed = {}
        for name, obj in objs.items():
            if obj.address_ is not None:
                placed[name] = obj
                self.symbols[name] = obj.address_
                continue
            raw = obj.to_bytes_()
            pa = self.slot(name, max(len(raw), 1))
            self.ram[pa:pa + len(raw)] = raw
            placed[name] = Object(prog, obj.type_, address=self.gva(pa))
            self.symbols[name] = self.gva(pa)
        return placed

    def _cpu_objects(self, prog: Program, t: FuzzTypes) -> dict[str, Object]:
        n = self.cpus
        init_mm, efi_mm = (self.gva(self.slot(m, 16)) for m in ("init_mm", "efi_mm"))
        proc_mm_pa = self.slot("(sh mm)", 16)
        raw = Object(prog, t.mm, value={"pgd": self.va(self.proc_root)}).to_bytes_()
        self.ram[proc_mm_pa:proc_mm_pa + len(raw)] = raw
        offsets = []
        for cpu in range(n):
            area = self.slot(f"(percpu {cpu})", 0x200)
            offsets.append(self.va(area) - RQ_OFF)
            task_pa = self.slot(f"(task {cpu})", 48)
            user = cpu % 2 == 1
            task = Object(prog, t.task, value={
                "comm": list((b"sh" if user else b"swapper/%d" % cpu).ljust(16, b"\0")),
                "pid": 97 + cpu if user else 0,
                "mm": self.va(proc_mm_pa) if user else 0,
                "active_mm": self.va(proc_mm_pa) if user else init_mm})
            self.ram[task_pa:task_pa + 48] = task.to_bytes_()
            struct.pack_into("<Q", self.ram, area, self.va(task_pa))            # rq.curr
            loaded = (efi_mm if cpu == self.crashed and self.efi_root is not None
                      else self.va(proc_mm_pa) if user else init_mm)
            struct.pack_into("<Q", self.ram, area + TLB_OFF - RQ_OFF, loaded)
        return {
            "__cpu_online_mask": Object(prog, t.cpumask, value={"bits": [(1 << n) - 1]}),
            "nr_cpu_ids": Object(prog, t.uint, n),
            "__per_cpu_offset": Object(prog, prog.array_type(t.ulong, n), value=offsets),
            "runqueues": Object(prog, t.rq, address=RQ_OFF),
            "cpu_tlbstate": Object(prog, t.tlb, address=TLB_OFF),
            "panic_cpu": Object(prog, t.atomic, value={
                "counter": -1 if self.crashed is None else self.crashed}),
        }

    def _log_objects(self, prog: Program, t: FuzzTypes) -> dict[str, Object]:
        recs = b""
        for facility, text in self.log:
            body = text.encode(errors="replace")
            size = (16 + len(body) + 7) & ~7
            hdr = struct.pack("<QHHHBB", len(recs) * 1000, size, len(body), 0, facility, 6 << 5)
            recs += (hdr + body).ljust(size, b"\0")
        size = max(len(recs), 64)
        buf = self.slot("(log_buf)", size)
        self.ram[buf:buf + len(recs)] = recs
        return {
            "log_buf": Object(prog, t.char_p, self.va(buf)),
            "log_buf_len": Object(prog, t.u32, size),
            "log_first_idx": Object(prog, t.u32, 0),
            "log_next_idx": Object(prog, t.u32, len(recs)),
            "log_first_seq": Object(prog, t.u64, 0),
        }

    # -- the drgn program --------------------------------------------------------------------
    def program(self, vmcore: Optional[str] = None, live: bool = False) -> Program:
        """The mock program (see SynthKernel.program), plus the direct map as a virtual
        segment and the CPU/printk types; globals are references into RAM."""
        prog = super().program(vmcore, live)
        if vmcore is None:
            ram = self.ram
            for base in (self.pob, START_KERNEL_MAP) if self.image_globals else (self.pob,):
                prog.add_memory_segment(base, len(ram),
                                        lambda a, n, off, phys: bytes(ram[off:off + n]), False)
        types = self.types_for(prog)

        def find_type(p, kinds, name, filename):
            return types.get(name)

        prog.register_type_finder("fuzz", find_type, enable_index=1)
        lc = Object(prog, prog.int_type("int", 4, True), LOG_CONT)

        def find_constant(p, name, flags, filename):
            return lc if name == "LOG_CONT" else None

        prog.register_object_finder("fuzz", find_constant, enable_index=1)
        return prog

    def types_for(self, prog: Program) -> dict[str, drgn.Type]:
        return FuzzTypes(prog).named()

    def materialize(self) -> dict[str, int]:
        """Write every global into RAM (for a dump file); returns name -> VA."""
        prog = Program(drgn.Platform(drgn.Architecture.X86_64))
        self._objects(prog, FuzzTypes(prog))
        return dict(self.symbols)


# -- base kernels the corruptions start from ------------------------------------------------
FLASH, FLASH_VA = 0xFFC00000, 0xFFFFFFFEFFC00000
MMR_HI = 0x3FFF0000000
BIOS_PA, BIOS_VA = 0x7E000000, 0xFFFFFFFEFE000000


def base_kernel(levels: int = 4, uv: bool = True, efi: bool = True, v510: bool = True,
                pnodes: tuple[int, ...] = (0, 1), ram_mib: int = 2,
                log: bool = True) -> FuzzKernel:
    """A healthy kernel with a bit of everything: direct map, UV low MMRs (2 MiB pages) and
    MMR_HI/GRU_HI, an EFI table with a 1:1 and an EFI-VA runtime MMIO region (2 MiB) and a
    runtime code region in 4 KiB pages of alternating cache modes (no linear shortcut), the
    UV BIOS entry inside it, two CPUs (CPU 1 crashed on efi_mm) and a boot log."""
    lines = []
    if log and uv:
        lines = [(0, "Linux version 6.1.0-synthetic"),
                 (0, f"UV: Map MMR_HI 0x{MMR_HI:x} - 0x{MMR_HI + len(pnodes) * (1 << 26):x} UC "
                     f"({len(pnodes)} segments)"),
                 (0, "BUG: unable to handle page fault for address: "
                     f"{FLASH_VA + 0x1000:016x}"),
                 (0, "#PF: supervisor read access in kernel mode"),
                 (0, "CPU: 1 PID: 98 Comm: sh Not tainted 6.1.0"),
                 (0, "Kernel panic - not syncing: Fatal exception")]
    k = FuzzKernel(levels=levels, ram_mib=ram_mib, log=lines)
    k.direct_map_ram()
    if uv:
        gbase = 0x7FF00000000
        k.set_uv(hub_type=2, revision=5, pnodes=pnodes, mmr_base=MMR_HI | 1 << 63,
                 mmr_shift=26, gru=(gbase, gbase + len(pnodes) * (1 << 28)), v510=v510,
                 bios_entry=BIOS_VA + 0x40)
        for pa, size in ((0xFA000000, 32 << 20), (0xFC000000, 32 << 20)):
            k.map(k.init_root, k.pob + pa, pa, size, 1 << 21, KERNEL | UC | x86.G)
        k.map(k.init_root, k.pob + MMR_HI, MMR_HI, len(pnodes) << 26, 1 << 21,
              KERNEL | UC | x86.G)
        k.map(k.init_root, k.pob + gbase, gbase, len(pnodes) << 28, 1 << 21, KERNEL | x86.G)
    if efi:
        k.new_efi_root()
        for va in (FLASH, FLASH_VA):
            k.map(k.efi_root, va, FLASH, 4 << 20, 1 << 21, KERNEL | x86.PCD)
        k.add_efi_desc(MMIO, FLASH, FLASH_VA, 1024, RUNTIME | 1)
        for va in (BIOS_PA, BIOS_VA):
            for i in range(16):
                k.map(k.efi_root, va + i * 4096, BIOS_PA + i * 4096, 4096, 4096,
                      (KERNEL & ~x86.NX) | (UC if i % 2 else 0))
        k.add_efi_desc(RT_CODE, BIOS_PA, BIOS_VA, 16, RUNTIME | 0xF)
        k.add_efi_desc(RT_DATA, 0x7E100000, 0xFFFFFFFEFE100000, 4, RUNTIME | 0xF)
    k.finish()
    return k


def table_pages(k: SynthKernel) -> list[tuple[int, int, list[int]]]:
    """Every table page reachable from init_mm and efi_mm: (pa, level, ancestors)."""
    out, seen = [], set()
    top = x86.top_level(k.levels)
    stack = [(r, top, []) for r in (k.init_root, k.efi_root, getattr(k, "proc_root", None))
             if r is not None]
    while stack:
        pa, level, anc = stack.pop()
        if pa in seen or pa + 4096 > len(k.ram):
            continue
        seen.add(pa)
        out.append((pa, level, anc))
        if level == x86.PTE:
            continue
        for i in range(512):
            e = k.read_entry(pa, i)
            if e & x86.P and not (level in (x86.PUD, x86.PMD) and e & x86.PSE):
                stack.append((e & x86.PTE_PFN_MASK & ~k.sme, level + 1, anc + [pa]))
    return out
