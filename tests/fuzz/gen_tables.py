"""Corruptions of page tables and kernel data on synthetic kernels (the ``tables`` kind).

A case starts from one of a few healthy ``FuzzKernel`` bases (4/5-level, UV v5.10 or v4.7
layout or none, EFI or not) and applies 1-3 corruptions drawn by a seeded ``random.Random``:
table entries (random values, pointers at other tables, at the table itself, at an
ancestor, out of RAM, reserved bits, huge pages at odd levels, bit flips, a whole page of
pointers at one table, a page of garbage), the mm roots, EFI descriptors and the memory map
header, UV hub info and globals, CPU/task state, the kernel log, and the paging globals.
Each corruption is recorded as one line of text (the reproduction).
"""
from __future__ import annotations

import random
import struct
from typing import Callable

import drgn

from mmrwatch.collectors import x86
from tests.fuzz.kernels import (BIOS_PA, FLASH, FLASH_VA, MMR_HI, MMIO, RQ_OFF, RUNTIME, TLB_OFF,
                                FuzzKernel, base_kernel, table_pages)

U64 = (1 << 64) - 1
FLAG_BITS = (x86.P, x86.RW, x86.US, x86.PWT, x86.PCD, x86.A, x86.D, x86.PSE, x86.G, x86.NX,
             x86.PAT_LARGE)
# bases: (levels, uv, efi, v510, pnodes)
BASES = [(4, True, True, True, (0, 1)), (5, True, True, True, (0, 1)),
         (4, True, True, False, (0, 2)), (4, False, True, True, ()),
         (5, False, False, True, ()), (4, True, False, True, (1, 3))]
_cache: dict[int, FuzzKernel] = {}


def base(i: int) -> FuzzKernel:
    """Base kernel ``i`` (built once per process), cloned by the caller."""
    if i not in _cache:
        levels, uv, efi, v510, pnodes = BASES[i]
        _cache[i] = base_kernel(levels=levels, uv=uv, efi=efi, v510=v510,
                                pnodes=pnodes or (0,))
    return _cache[i]


def interesting(rng: random.Random, bits: int = 64) -> int:
    """A value corrupt kernel data tends to hold: edges, powers of two, all-ones, random."""
    top = (1 << bits) - 1
    c = rng.random()
    if c < 0.15:
        v = rng.choice([0, 1, 2, 7, 8, 0xFF, 0xFFF, 0x1000, top, top - 1, top >> 1,
                        (top >> 1) + 1])
    elif c < 0.35:
        v = (1 << rng.randrange(bits)) + rng.choice([-1, 0, 0, 1])
    elif c < 0.5:
        v = rng.randrange(1 << min(bits, 16))
    else:
        v = rng.getrandbits(bits)
    return v & top


def flags(rng: random.Random) -> int:
    f = x86.P if rng.random() < 0.9 else 0
    for b in FLAG_BITS[1:]:
        if rng.random() < 0.3:
            f |= b
    if rng.random() < 0.15:                       # reserved bits 52-62
        f |= rng.getrandbits(11) << 52
    if rng.random() < 0.05:                       # bits 51:M (reserved below 52)
        f |= rng.getrandbits(6) << 46
    return f


# -- page-table entries ---------------------------------------------------------------------
def _pick_table(rng: random.Random, k: FuzzKernel):
    tables = table_pages(k)
    return rng.choice(tables), tables


def _pick_index(rng: random.Random, k: FuzzKernel, pa: int) -> int:
    present = [i for i in range(512) if k.read_entry(pa, i) & x86.P]
    if present and rng.random() < 0.7:
        return rng.choice(present)
    return rng.randrange(512)


def _target_pa(rng: random.Random, k: FuzzKernel, pa: int, anc: list[int],
               tables: list) -> tuple[int, str]:
    c = rng.randrange(8)
    ram = len(k.ram)
    if c == 0:
        return pa, "itself"
    if c == 1 and anc:
        return rng.choice(anc), "an ancestor"
    if c == 2:
        t = rng.choice(tables)[0]
        return t, "another table page"
    if c == 3:
        return rng.randrange(ram >> 12) << 12, "a random RAM page"
    if c == 4:
        return ram + (rng.randrange(16) << 12), "just past RAM"
    if c == 5:
        return rng.getrandbits(40) << 12, "a random 52-bit PA"
    if c == 6:
        return ram - 4096, "the last RAM page"
    return rng.choice([0, 0x1000, 1 << 20]), "low memory"


def corrupt_entry(rng: random.Random, k: FuzzKernel) -> str:
    (pa, level, anc), tables = _pick_table(rng, k)
    idx = _pick_index(rng, k, pa)
    old = k.read_entry(pa, idx)
    how = rng.randrange(7)
    lv = x86.LEVEL_NAMES[level]
    if how == 0:
        val, what = rng.getrandbits(64), "a random value"
    elif how == 1:
        tgt, what = _target_pa(rng, k, pa, anc, tables)
        val = tgt | flags(rng)
        what = f"a pointer at {what} (0x{tgt:x})"
    elif how == 2:
        val = old ^ (1 << rng.randrange(64))
        if rng.random() < 0.5:
            val ^= 1 << rng.randrange(64)
        what = "bit flips"
    elif how == 3:                               # huge page at this level
        val = (old | x86.PSE | x86.P) ^ (rng.randrange(512) << 12 if rng.random() < 0.5 else 0)
        what = "PSE set (a huge page at this level, maybe misaligned)"
    elif how == 4:                               # non-present, garbage (L1TF-inverted path)
        val = (old & ~x86.P) | rng.getrandbits(52) & ~1
        what = "not present, with garbage"
    elif how == 5:
        val = old | rng.getrandbits(11) << 52
        what = "reserved bits 52-62 set"
    else:
        val = old ^ k.sme if k.sme else old | 1 << 47
        what = "the SME/C-bit or bit 47 toggled"
    k.write_entry(pa, idx, val & U64)
    return f"{lv} table 0x{pa:x}[{idx}] 0x{old:x} -> 0x{val & U64:x} ({what})"


def fill_table(rng: random.Random, k: FuzzKernel) -> str:
    """Many entries of one table at the same lower table (a DAG, issue 15 item 6)."""
    (pa, level, anc), tables = _pick_table(rng, k)
    if level == x86.PTE:
        return corrupt_entry(rng, k)
    present = [i for i in range(512) if k.read_entry(pa, i) & x86.P]
    if present and rng.random() < 0.6:
        val = k.read_entry(pa, rng.choice(present))
        what = "a copy of a present entry"
    else:
        tgt, what = _target_pa(rng, k, pa, anc, tables)
        val = tgt | x86.P | x86.RW | x86.A
    n = rng.choice([2, 8, 64, 256, 512])
    first = rng.randrange(512 - n + 1)
    for i in range(first, first + n):
        k.write_entry(pa, i, val)
    return (f"{x86.LEVEL_NAMES[level]} table 0x{pa:x}[{first}..{first + n - 1}] all = "
            f"0x{val:x} ({what})")


def garbage_table(rng: random.Random, k: FuzzKernel) -> str:
    (pa, level, _), _ = _pick_table(rng, k)
    if rng.random() < 0.5:
        k.ram[pa:pa + 4096] = rng.randbytes(4096)
        what = "random bytes"
    else:
        v = rng.getrandbits(52) & ~0xFFF | x86.P | x86.RW | (x86.PSE if rng.random() < .5 else 0)
        for i in range(512):
            k.write_entry(pa, i, v + (i << 12 if rng.random() < 0.5 else 0))
        what = f"512 entries around 0x{v:x}"
    return f"{x86.LEVEL_NAMES[level]} table 0x{pa:x} overwritten with {what}"


# -- kernel data (edits of the globals before they are placed in RAM) -------------------------
def _set(objs: dict, prog: drgn.Program, name: str, member, fmt: str, value: int) -> None:
    """Overwrite ``member`` (a member path, or a byte offset) of global ``name`` with
    ``value`` packed as ``fmt``."""
    obj = objs[name]
    raw = bytearray(obj.to_bytes_())
    off = member if isinstance(member, int) else drgn.offsetof(obj.type_, member) if member else 0
    fmt = fmt[0] + fmt[1:].upper()                  # the bits, unsigned
    struct.pack_into(fmt, raw, off, value & ((1 << (8 * struct.calcsize(fmt))) - 1))
    objs[name] = drgn.Object.from_bytes_(prog, obj.type_, raw)


def _edit(k: FuzzKernel, fn: Callable) -> None:
    k.edits.append(fn)


def corrupt_root(rng: random.Random, k: FuzzKernel) -> str:
    name = rng.choice(["init_mm", "efi_mm", "efi_mm", "(sh mm)"])
    c = rng.randrange(6)
    val = [0, k.pob + len(k.ram) + 0x1000 * rng.randrange(1, 99), interesting(rng),
           k.pob + (rng.randrange(len(k.ram)) & ~7), 0xFFFFFFFF80000000 + interesting(rng, 32),
           0x0000_9000_0000_0000][c] & U64
    if name == "(sh mm)":
        pa = k.slot("(sh mm)", 16)
        struct.pack_into("<Q", k.ram, pa + 8, val)
        return f"the process mm's pgd = 0x{val:x}"
    _edit(k, lambda k, prog, t, objs: _set(objs, prog, name, "pgd", "<Q", val))
    return f"{name}.pgd = 0x{val:x}"


def corrupt_efi(rng: random.Random, k: FuzzKernel) -> str:
    c = rng.randrange(10)
    if c <= 3 and k.descs:
        i = rng.randrange(len(k.descs))
        d = list(k.descs[i])
        f = rng.randrange(5)
        bits = 32 if f == 0 else 64
        d[f] = interesting(rng, bits)
        if f == 2 and rng.random() < 0.5:           # a plausible EFI VA
            d[2] = 0xFFFFFFEF00000000 + (rng.getrandbits(32) << 12) & U64
        k.descs[i] = tuple(d)
        field = ("type", "phys_addr", "virt_addr", "num_pages", "attribute")[f]
        return f"EFI descriptor {i}: {field} = 0x{d[f]:x}"
    if c == 4:
        n = rng.choice([8, 64, 300])
        for _ in range(n):
            k.add_efi_desc(rng.choice([MMIO, 5, 6, interesting(rng, 32)]),
                           rng.getrandbits(rng.choice([32, 40, 52, 64])) & ~0xFFF,
                           rng.choice([0, 0xFFFFFFFE00000000 + (rng.getrandbits(20) << 12),
                                       interesting(rng)]),
                           rng.choice([1, 16, 1 << 20, interesting(rng)]),
                           rng.choice([RUNTIME, RUNTIME | 1, interesting(rng)]))
        return f"{n} more EFI descriptors with random fields"
    if c == 5:
        k.add_efi_desc(MMIO, FLASH, FLASH_VA, 1024, RUNTIME | 1)        # duplicate + overlap
        k.add_efi_desc(MMIO, FLASH + 0x1000, FLASH_VA + 0x1000, 2048, RUNTIME)
        return "duplicate and overlapping EFI runtime descriptors"
    member, fmt = rng.choice([("memmap.nr_map", "<i"), ("memmap.desc_size", "<Q"),
                              ("memmap.map", "<Q"), ("memmap.map_end", "<Q"),
                              ("memmap.phys_map", "<Q"), ("memmap.desc_version", "<Q"),
                              ("flags", "<Q")])
    val = interesting(rng, 32 if fmt == "<i" else 64)
    if member == "memmap.desc_size" and rng.random() < 0.5:
        val = rng.choice([0, 1, 40, 47, 49, 4096, 1 << 20, 1 << 31, 1 << 40])
    if member == "memmap.nr_map" and rng.random() < 0.5:
        val = rng.choice([0, 1, 2, 100, 65536, 65537, (1 << 32) - 1])
    _edit(k, lambda k, prog, t, objs: _set(objs, prog, "efi", member, fmt, val))
    return f"efi.{member} = 0x{val:x}"


HUB_FIELDS = [("hub_revision", "<B"), ("global_mmr_base", "<Q"), ("global_mmr_shift", "<Q"),
              ("pnode", "<H"), ("numa_blade_id", "<H")]


def corrupt_uv(rng: random.Random, k: FuzzKernel) -> str:
    if not k.uv_state:
        k.set_uv(pnodes=(0,), mmr_base=MMR_HI | 1 << 63)
        return "UV globals added to a non-UV kernel, then " + corrupt_uv(rng, k)
    u = k.uv_state
    c = rng.randrange(12)
    if c == 0:
        u["mmr_shift"] = rng.choice([0, 1, 25, 46, 52, 63, 64, 65, 255, 1 << 40, U64,
                                     interesting(rng)])
        return f"hub info global_mmr_shift = 0x{u['mmr_shift']:x}"
    if c == 1:
        u["mmr_base"] = interesting(rng)
        return f"hub info global_mmr_base = 0x{u['mmr_base']:x}"
    if c == 2:
        n = rng.choice([1, 2, 3, 8])
        # large pnodes are rare: each costs seconds (2 ranges per pnode up to the largest)
        big = rng.random() < 0.1
        u["pnodes"] = tuple(rng.choice([255, 256, 4095, 32767, 65535, rng.randrange(65536)])
                            if big and rng.random() < 0.5 else rng.choice([0, 1, 2, 3, 7, 15])
                            for _ in range(n))
        return f"pnodes = {u['pnodes']}"
    if c == 3:
        g = (interesting(rng), interesting(rng))
        if rng.random() < 0.5:
            g = (g[0], g[0] + rng.choice([1, 4096, 1 << 28, 1 << 50, U64]))
        u["gru"] = (g[0] & U64, g[1] & U64)
        return f"gru_start/end_paddr = 0x{u['gru'][0]:x}/0x{u['gru'][1]:x}"
    if c == 4:
        u["hub_type"] = interesting(rng, 32)
        u["revision"] = interesting(rng, 8)
        return f"hub_type = 0x{u['hub_type']:x}, hub_revision = {u['revision']}"
    if c == 5:
        u["bios_entry"] = rng.choice([0, interesting(rng), BIOS_PA + 0x40,
                                      0xFFFFFFFEFE000000 + rng.randrange(1 << 24),
                                      0x0000_9000_0000_0000])
        return f"uv_systab->function = 0x{u['bios_entry']:x}"
    if c == 6:
        u["systab_zeros"] = True
        u["systab_phys"] = rng.choice([None, 0, interesting(rng), BIOS_PA])
        return f"UVsystab reads as zeros, uv_systab_phys = {u['systab_phys']}"
    if c == 7:
        name, fmt = rng.choice([("uv_system_type", "<I"), ("uv_hubless_system", "<i"),
                                ("uv_min_hub_revision_id", "<i"), ("nr_node_ids", "<i"),
                                ("__uv_hub_info_list", "<Q"), ("uv_systab", "<Q"),
                                ("gru_start_paddr", "<Q"), ("uv_systab_phys", "<Q")])
        val = interesting(rng, 32 if fmt[1] in "iI" else 64)
        if name == "nr_node_ids" and rng.random() < 0.6:
            val = rng.choice([0, 1, 3, 64, 1024, 1 << 16, 1 << 20, (1 << 31) - 1, -1])
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, name, "", fmt, val))
        return f"{name} = 0x{val & U64:x}"
    if c == 8:
        u["v510"] = not u["v510"]
        return "hub info layout swapped (v4.7 <-> v5.10)"

    def hub_bytes(k, prog, t, objs):       # raw corruption of one hub info in RAM
        lst = objs["__uv_hub_info_list"].value_() - k.pob
        node = rng.randrange(len(k.uv_state["pnodes"]))
        if not 0 <= lst + 8 * node <= len(k.ram) - 8:
            return                              # the list pointer is corrupt too: no hub
        h = struct.unpack_from("<Q", k.ram, lst + 8 * node)[0] - k.pob
        if not 0 <= h <= len(k.ram) - 256:
            return
        name, fmt = HUB_FIELDS[field]
        hub_t = t.hub_v510 if k.uv_state["v510"] else t.hub_v47      # this kernel's layout
        struct.pack_into(fmt, k.ram, h + drgn.offsetof(hub_t, name),
                         val & ((1 << 8 * struct.calcsize(fmt)) - 1))
    field = rng.randrange(len(HUB_FIELDS))
    val = interesting(rng)
    if HUB_FIELDS[field][0] == "pnode" and rng.random() < 0.9:
        val = rng.randrange(16)
    _edit(k, hub_bytes)
    return f"one hub info's {HUB_FIELDS[field][0]} = 0x{val:x} (raw bytes)"


def corrupt_cpu(rng: random.Random, k: FuzzKernel) -> str:
    c = rng.randrange(8)
    if c == 0:
        val = interesting(rng)
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, "__cpu_online_mask", "bits", "<Q", val))
        return f"__cpu_online_mask.bits[0] = 0x{val:x}"
    if c == 1:
        val = rng.choice([0, 1, 3, 64, 65, 4096, (1 << 31) - 1, (1 << 32) - 1])
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, "nr_cpu_ids", "", "<I", val))
        return f"nr_cpu_ids = {val}"
    if c == 2:
        cpu, val = rng.randrange(k.cpus), interesting(rng)
        if rng.random() < 0.4:
            val = k.pob + rng.randrange(len(k.ram) + 8192) - RQ_OFF
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, "__per_cpu_offset", 8 * cpu,
                                               "<Q", val))
        return f"__per_cpu_offset[{cpu}] = 0x{val:x}"
    if c == 3:
        val = rng.choice([-1, 0, 1, 2, 63, 64, 1 << 20, (1 << 31) - 1, -(1 << 31)])
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, "panic_cpu", "counter", "<i", val))
        return f"panic_cpu = {val}"
    cpu = rng.randrange(k.cpus)
    area = k.slot(f"(percpu {cpu})", 0x200)
    task = k.slot(f"(task {cpu})", 48)
    if c == 4:
        val = rng.choice([0, interesting(rng), k.pob + rng.randrange(len(k.ram))])
        struct.pack_into("<Q", k.ram, area, val)
        return f"CPU {cpu} rq.curr = 0x{val:x}"
    if c == 5:
        val = rng.choice([0, interesting(rng), k.pob + rng.randrange(len(k.ram)),
                          k.pob + task])
        struct.pack_into("<Q", k.ram, area + TLB_OFF - RQ_OFF, val)
        return f"CPU {cpu} cpu_tlbstate.loaded_mm = 0x{val:x}"
    if c == 6:
        k.ram[task:task + 48] = rng.randbytes(48)
        return f"CPU {cpu}'s task_struct = random bytes"
    k.ram[task:task + 16] = rng.choice([b"\xff" * 16, b"x" * 16, b"\x1b[2J\n\r\x00abc".ljust(16)])
    return f"CPU {cpu}'s task comm = {bytes(k.ram[task:task + 16])!r}"


def _hexish(rng: random.Random) -> str:
    return rng.choice([f"{interesting(rng):x}", "f" * rng.choice([17, 40, 300]), "0", "",
                       f"{rng.getrandbits(200):x}", "zz"])


def corrupt_log(rng: random.Random, k: FuzzKernel) -> str:
    c = rng.randrange(5)
    if c == 0:
        line = (f"UV: Map {rng.choice(['MMR', 'GRU', 'MMIOH0', 'MMIOH', 'X' * 70])}_HI 0x"
                f"{_hexish(rng)} - 0x{_hexish(rng)}"
                + rng.choice(["", " UC", " WB", " wb"])
                + rng.choice(["", f" ({rng.choice([0, 1, 2, 65535, 1 << 40])} segments)"]))
        k.log.append((rng.choice([0, 0, 1]), line))
        return f"log line {line!r}"
    if c == 1:
        line = rng.choice(["BUG: unable to handle page fault for address: ",
                           "BUG: unable to handle kernel paging request at ",
                           "BUG: unable to handle kernel NULL pointer dereference at "]) + _hexish(rng)
        k.log.append((0, line))
        k.log.append((0, f"CPU: {rng.choice([0, 1, 7, 4096, 1 << 40])} PID: 1 Comm: x"))
        return f"log line {line!r} and a CPU: line"
    if c == 2:
        n = rng.choice([50, 500])
        k.log += [(0, "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(80))))
                  for _ in range(n)]
        return f"{n} random log lines"
    name, val = rng.choice([("log_first_idx", interesting(rng, 32)),
                            ("log_next_idx", interesting(rng, 32)),
                            ("log_buf", interesting(rng))])
    fmt = "<Q" if name == "log_buf" else "<I"
    if c == 3:
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, name, "", fmt, val))
        return f"{name} = 0x{val:x}"

    def recs(k, prog, t, objs):
        buf = objs["log_buf"].value_() - k.pob
        off = rng.randrange(max(1, min(len(k.log), 8) * 24))
        k.ram[buf + off:buf + off + 4] = rng.randbytes(4)
    _edit(k, recs)
    return "4 random bytes in the log records"


def corrupt_globals(rng: random.Random, k: FuzzKernel) -> str:
    c = rng.randrange(6)
    if c == 0:
        val = rng.choice([0, interesting(rng), k.pob + 1, k.pob + (1 << 30), 0x0000_8000_0000_0000])
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, "page_offset_base", "", "<Q", val))
        return f"page_offset_base = 0x{val:x}"
    if c == 1:
        val = rng.choice([1 << 47, 1 << 51, 1 << 63, interesting(rng), U64])
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, "sme_me_mask", "", "<Q", val))
        return f"sme_me_mask = 0x{val:x}"
    if c == 2:
        k.cachemode_tbl = [rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 255]) for _ in range(8)]
        return f"__pte2cachemode_tbl = {k.cachemode_tbl}"
    if c == 3:
        k.vmalloc_base = rng.choice([0, k.pob, k.pob + 4096, interesting(rng)])
        return f"vmalloc_base = 0x{k.vmalloc_base:x}"
    if c == 4:
        val = interesting(rng)
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, "phys_base", "", "<Q", val))
        return f"phys_base = 0x{val:x}"
    k.old_memmap = True
    k.efi_flags = interesting(rng) if rng.random() < 0.5 else 0b10001001
    if rng.random() < 0.5:
        _edit(k, lambda k, prog, t, objs: _set(objs, prog, "efi_mm", "pgd", "<Q", 0))
    return f"EFI old-map kernel (prolog symbol), efi.flags = 0x{k.efi_flags:x}"


SUBS: dict[str, tuple[float, Callable[[random.Random, FuzzKernel], str]]] = {
    "entry": (0.34, corrupt_entry), "fill": (0.08, fill_table), "garbage": (0.05, garbage_table),
    "root": (0.05, corrupt_root), "efi": (0.14, corrupt_efi), "uv": (0.16, corrupt_uv),
    "cpu": (0.07, corrupt_cpu), "log": (0.05, corrupt_log), "globals": (0.06, corrupt_globals),
}


def make(rng: random.Random) -> tuple[FuzzKernel, str, list[str]]:
    """A corrupted kernel, its sub-kind (the first corruption's) and the recipe."""
    bi = rng.randrange(len(BASES))
    k = base(bi).clone()
    recipe = [f"base {bi}: levels={BASES[bi][0]} uv={BASES[bi][1]} efi={BASES[bi][2]} "
              f"v510={BASES[bi][3]} pnodes={BASES[bi][4]}"]
    names = list(SUBS)
    weights = [SUBS[n][0] for n in names]
    n = rng.choice([1, 1, 1, 2, 2, 3])
    first = None
    for _ in range(n):
        sub = rng.choices(names, weights)[0]
        first = first or sub
        recipe.append(SUBS[sub][1](rng, k))
    return k, first, recipe


def target_of(k: FuzzKernel):
    """The mock program of ``k`` as an opened target (what ``--vmcore`` would give)."""
    from mmrwatch.collectors.target import Target
    return Target(k.program(), "synthetic", False, "elf", None, None)


def write_files(k: FuzzKernel, where: str, stem: str = "case") -> list[str]:
    """``k`` as the three files the CLI takes; returns the target options."""
    from pathlib import Path

    from tests.fuzz import synthdump
    return synthdump.cli_args(*synthdump.write_bundle(k, Path(where), stem))


def run(rng: random.Random, out, keep=None):
    """One ``tables`` case: corrupt a base kernel, check it in process or via the CLI."""
    import os

    from tests.fuzz import harness
    k, out.sub, out.recipe = make(rng)
    cmds = harness.commands(rng)
    if out.cli or keep:
        d = keep or harness.tmpdir()
        args = write_files(k, d, f"t{out.seed}")
        files = [args[1], args[5], args[7]]          # vmcore, btf, map
        if out.cli and rng.random() < 0.5:       # as a 6.0+ dump: nothing but --vmcore
            from tests.fuzz import synthdump
            core, _ = synthdump.bundle_kallsyms(k)
            with open(args[1], "wb") as f:
                f.write(core)
            args = args[:2]
            out.recipe.append("written as a 6.0+ dump (kallsyms and BTF in memory)")
        if not out.cli:
            out.command = " ; ".join("mmrwatch " + " ".join(c[:1] + args + c[1:]) for c in cmds)
    if out.cli:
        try:
            return harness.cli_run(out, [c[:1] + args + c[1:] for c in cmds])
        finally:
            if not keep:
                for a in files:
                    if os.path.exists(a):
                        os.unlink(a)
    target = target_of(k)
    return harness.inprocess(out, lambda: harness.run_commands(target, cmds))
