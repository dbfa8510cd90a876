"""Corruptions of a real kernel dump (optional ``dumps`` cases): the test bed's
``/tmp/bedwork/*/vmcore.elf`` when it is there and opens without options (6.0+ kernels:
kallsyms and BTF in the dump).  The harness never depends on it: ``python -m tests.fuzz``
samples these cases (``--real-every``) only when such a dump exists; the CI slice has none.

Each worker copies a dump once (``/var/tmp``: the bed's file is never written) and locates,
through mmrwatch's own open of it, what is worth corrupting: the init_mm/efi_mm root
tables and some of their children, the globals the collectors read (``efi.memmap``,
``page_offset_base``, the CPU masks and per-CPU offsets, ``prb`` and its rings' headers and
first descriptors, the UV globals and hub info when the kernel has them), the kallsyms
tables VMCOREINFO names and the BTF.  A case patches a few of those bytes (or an ELF
header / program header / note field, or VMCOREINFO's text in place), runs, and puts the
original bytes back.
"""
from __future__ import annotations

import glob
import os
import random
import shutil
import struct
from typing import Optional

import drgn

from tests.fuzz.gen_tables import interesting

START_KERNEL_MAP = 0xFFFFFFFF80000000
CANDIDATES = "/tmp/bedwork/*/vmcore.elf"
_bases: Optional[list["RealBase"]] = None


class RealBase:
    def __init__(self, path: str, copy: str) -> None:
        from mmrwatch.collectors import kernel, mm
        from mmrwatch.collectors.target import open_vmcore
        self.path, self.copy = path, copy
        t = open_vmcore(path)
        prog = t.prog
        facts = kernel.read_facts(prog)
        with open(path, "rb") as f:
            head = f.read(64)
            phoff, = struct.unpack_from("<Q", head, 32)
            phnum, = struct.unpack_from("<H", head, 56)
            f.seek(phoff)
            ph = f.read(56 * phnum)
        self.loads, self.note = [], None
        for i in range(phnum):
            p_type, _, off, vaddr, paddr, filesz = struct.unpack_from("<IIQQQQ", ph, 56 * i)
            if p_type == 1:
                self.loads.append((paddr, off, filesz))
            elif p_type == 4:
                self.note = (off, filesz)
        self.phnum, self.phoff = phnum, phoff
        self.targets: list[tuple[str, int, int]] = []       # (what, file offset, size)

        def add(what: str, va: Optional[int], size: int = 8, phys: bool = False) -> None:
            if va is None:
                return
            pa = va if phys else (va - START_KERNEL_MAP + facts.phys_base
                                  if va >= START_KERNEL_MAP else va - facts.page_offset_base)
            off = self.offset(pa)
            if off is not None:
                self.targets.append((what, off, size))

        spaces = mm.address_spaces(prog, facts)
        for name, sp in spaces.items():
            if sp.root_pa is None:
                continue
            add(f"{name} root table", sp.root_pa, 4096, phys=True)
            tops = [i for i in range(512)
                    if struct.unpack_from("<Q", prog.read(sp.root_pa, 4096, True), 8 * i)[0] & 1]
            for i in dict.fromkeys(tops[:2] + tops[-4:]):   # 1:1 (efi_mm) and kernel half
                e = struct.unpack_from("<Q", prog.read(sp.root_pa + 8 * i, 8, True))[0]
                add(f"{name} root[{i}]'s table", e & 0x000FFFFFFFFFF000, 4096, phys=True)
        for name in ("init_mm", "efi_mm", "efi", "page_offset_base", "vmalloc_base",
                     "sme_me_mask", "__cpu_online_mask", "nr_cpu_ids", "__per_cpu_offset",
                     "prb", "uv_system_type", "uv_hubless_system", "__uv_hub_info_list",
                     "nr_node_ids", "gru_start_paddr", "gru_end_paddr", "uv_systab",
                     "__pte2cachemode_tbl", "panic_cpu", "crashing_cpu"):
            obj = kernel.lookup(prog, name)
            if obj is not None and obj.address_ is not None:
                try:
                    size = min(drgn.sizeof(obj.type_), 4096)
                except (TypeError, ValueError):      # incomplete array: [NR_CPUS]
                    size = 64
                add(name, obj.address_, max(size, 8))
        prb = kernel.lookup(prog, "prb")
        if prb is not None:
            try:
                rb = prb[0]
                add("printk ringbuffer", rb.address_, 128)
                add("printk descriptors", rb.desc_ring.descs.value_(), 4096)
                add("printk infos", rb.desc_ring.infos.value_(), 4096)
                add("printk text", rb.text_data_ring.data.value_(), 4096)
            except Exception:                    # noqa: BLE001 - what a dump holds varies
                pass
        try:
            from drgn.helpers.linux.percpu import per_cpu
            for cpu in (0, 1):
                add(f"CPU {cpu} rq->curr", per_cpu(prog["runqueues"], cpu).curr.address_)
                add(f"CPU {cpu} cpu_tlbstate.loaded_mm",
                    per_cpu(prog["cpu_tlbstate"], cpu).loaded_mm.address_)
        except Exception:                        # noqa: BLE001
            pass
        vmci = facts.vmcoreinfo
        for k, v in vmci.items():
            if k.startswith("SYMBOL(kallsyms"):
                add(k[7:-1], int(v, 16), 512)
        for n in ("__start_BTF",):
            try:
                add("BTF", prog.symbol(n).address, 4096)
            except LookupError:
                pass
        self.release = facts.release
        shutil.copyfile(path, copy)

    def offset(self, pa: int) -> Optional[int]:
        for paddr, off, filesz in self.loads:
            if paddr <= pa < paddr + filesz:
                return off + pa - paddr
        return None


def bases() -> list[RealBase]:
    """The usable real dumps (copied once per process); [] when there is none."""
    global _bases
    if _bases is None:
        _bases = []
        d = os.path.join("/var/tmp", f"mmrwatch-fuzz-{os.getpid()}")
        for path in sorted(glob.glob(CANDIDATES)):
            if not os.access(path, os.R_OK):
                continue
            try:
                os.makedirs(d, exist_ok=True)
                copy = os.path.join(d, os.path.basename(os.path.dirname(path)) + ".elf")
                _bases.append(RealBase(path, copy))
            except Exception:                    # noqa: BLE001 - not usable without options
                continue
    return _bases


def cleanup() -> None:
    for b in _bases or []:
        try:
            os.unlink(b.copy)
            os.rmdir(os.path.dirname(b.copy))
        except OSError:
            pass


def patches(rng: random.Random, b: RealBase, recipe: list[str]) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(rng.choice([1, 1, 2, 4])):
        c = rng.random()
        if c < 0.65 and b.targets:
            what, off, size = rng.choice(b.targets)
            at = off + (rng.randrange(size // 8) * 8 if size >= 16 else 0)
            val = interesting(rng)
            out.append((at, struct.pack("<Q", val)))
            recipe.append(f"{what} (file offset 0x{at:x}) = 0x{val:x}")
        elif c < 0.75:
            off, fmt, name = rng.choice([(32, "<Q", "e_phoff"), (54, "<H", "e_phentsize"),
                                         (56, "<H", "e_phnum"), (4, "<B", "EI_CLASS"),
                                         (16, "<H", "e_type"), (40, "<Q", "e_shoff")])
            val = interesting(rng, 8 * struct.calcsize(fmt))
            out.append((off, struct.pack(fmt, val)))
            recipe.append(f"ELF header {name} = 0x{val:x}")
        elif c < 0.85:
            i = rng.randrange(b.phnum)
            field, fo, fmt = rng.choice([("p_type", 0, "<I"), ("p_offset", 8, "<Q"),
                                         ("p_vaddr", 16, "<Q"), ("p_paddr", 24, "<Q"),
                                         ("p_filesz", 32, "<Q"), ("p_memsz", 40, "<Q")])
            val = interesting(rng, 8 * struct.calcsize(fmt))
            out.append((b.phoff + 56 * i + fo, struct.pack(fmt, val)))
            recipe.append(f"program header {i} {field} = 0x{val:x}")
        elif b.note:
            noff, nsize = b.note
            at = noff + rng.randrange(nsize)
            val = bytes([rng.randrange(256)])
            out.append((at, val))
            recipe.append(f"note byte at file offset 0x{at:x} = {val!r}")
    return out


def run(rng: random.Random, out, keep=None):
    """One real-dump case (called by gen_dumps when ``harness.REAL_EVERY`` picks it)."""
    from mmrwatch.collectors.target import open_vmcore
    from tests.fuzz import harness
    avail = bases()
    b = avail[rng.randrange(len(avail))]
    out.sub = "real"
    out.recipe = [f"real dump {b.path} ({b.release}), copied to {b.copy}"]
    ps = patches(rng, b, out.recipe)
    cmds = harness.commands(rng)
    args = ["--vmcore", b.copy]
    fd = os.open(b.copy, os.O_RDWR)
    saved = []
    try:
        for off, data in ps:
            saved.append((off, os.pread(fd, len(data), off)))
            os.pwrite(fd, data, off)
        out.command = " ; ".join("mmrwatch " + " ".join(c[:1] + args + c[1:]) for c in cmds)
        if out.cli:
            return harness.cli_run(out, [c[:1] + args + c[1:] for c in cmds])

        def body():
            return harness.run_commands(open_vmcore(b.copy), cmds)
        return harness.inprocess(out, body)
    finally:
        for off, data in reversed(saved):
            os.pwrite(fd, data, off)
        os.close(fd)
