"""Corrupted dump files (the ``dumps`` kind): bytes of a synthetic ELF vmcore, its
VMCOREINFO note, its BTF blob and System.map, opened the way ``--vmcore`` opens them.

The base file is what ``SynthKernel.write_vmcore`` writes (one PT_NOTE with VMCOREINFO, one
PT_LOAD of RAM at the direct map) for a healthy ``FuzzKernel`` whose globals are in RAM, plus
the BTF and System.map of ``synthdump``.  A case mutates one or two of: an ELF header field,
a program header field (or adds overlapping ones), the note header, VMCOREINFO's text (a
value, a missing or duplicated key, added SIZE/OFFSET/SYMBOL/BUILD-ID lines), data bytes in
RAM (table entries, globals, anywhere), holes in the PT_LOAD (pages excluded from the dump),
truncation, insertion, the BTF blob, the System.map, or the debug-info options.  In process
the file is opened with ``collectors.target.open_vmcore``; through the CLI with
``mmrwatch report|ptdump|where --vmcore FILE``.
"""
from __future__ import annotations

import os
import random
import struct
from typing import Optional

from mmrwatch.collectors.kernel import START_KERNEL_MAP
from tests.fuzz import synthdump
from tests.fuzz.gen_tables import base, interesting
from tests.fuzz.kernels import table_pages

U64 = (1 << 64) - 1
# (tables base, kallsyms): System.map + --btf dumps of four bases, and two 6.0+-style dumps
# whose kallsyms and BTF are in memory (no option but --vmcore)
DUMP_BASES = ((0, False), (1, False), (2, False), (3, False), (0, True), (1, True))
EHDR = [("e_ident[EI_CLASS]", 4, "<B"), ("e_ident[EI_DATA]", 5, "<B"),
        ("e_ident[EI_VERSION]", 6, "<B"), ("e_ident[EI_OSABI]", 7, "<B"),
        ("e_type", 16, "<H"), ("e_machine", 18, "<H"), ("e_version", 20, "<I"),
        ("e_entry", 24, "<Q"), ("e_phoff", 32, "<Q"), ("e_shoff", 40, "<Q"),
        ("e_flags", 48, "<I"), ("e_ehsize", 52, "<H"), ("e_phentsize", 54, "<H"),
        ("e_phnum", 56, "<H"), ("e_shentsize", 58, "<H"), ("e_shnum", 60, "<H"),
        ("e_shstrndx", 62, "<H")]
PHDR = [("p_type", 0, "<I"), ("p_flags", 4, "<I"), ("p_offset", 8, "<Q"),
        ("p_vaddr", 16, "<Q"), ("p_paddr", 24, "<Q"), ("p_filesz", 32, "<Q"),
        ("p_memsz", 40, "<Q"), ("p_align", 48, "<Q")]
VMCI_KEYS = ["OSRELEASE", "PAGESIZE", "SYMBOL(swapper_pg_dir)", "NUMBER(phys_base)",
             "NUMBER(pgtable_l5_enabled)", "KERNELOFFSET"]


class Base:
    """One base dump: its bytes, layout and the kernel it came from."""

    def __init__(self, i: int) -> None:
        ti, self.kallsyms = DUMP_BASES[i]
        k = base(ti).clone()
        self.k = k
        self.regions: dict[str, tuple[int, int]] = {}
        if self.kallsyms:
            self.core, self.regions = synthdump.bundle_kallsyms(k)
            self.btf = synthdump.btf_blob(not k.uv_state or k.uv_state["v510"])
            self.map = synthdump.system_map(k)
        else:
            self.core, self.btf, self.map = synthdump.bundle(k)
        self.info = k.vmcoreinfo()
        self.note_off = struct.unpack_from("<Q", self.core, 64 + 8)[0]
        self.load_off = struct.unpack_from("<Q", self.core, 64 + 56 + 8)[0]
        self.tables = [pa for pa, _, _ in table_pages(k)]
        self.globals = sorted({a - (START_KERNEL_MAP if a >= START_KERNEL_MAP else k.pob)
                               for a in k.symbols.values() if a >= k.pob})
        self.names = {a - (START_KERNEL_MAP if a >= START_KERNEL_MAP else k.pob): n
                      for n, a in k.symbols.items() if a >= k.pob}

    def name_of(self, pa: int) -> str:
        """``symbol+off`` of the global holding PA ``pa``."""
        at = max((g for g in self.globals if g <= pa), default=None)
        return f"{self.names[at]}+{pa - at}" if at is not None else f"PA 0x{pa:x}"


_bases: dict[int, Base] = {}


def get_base(i: int) -> Base:
    if i not in _bases:
        _bases[i] = Base(i)
    return _bases[i]


def elf_core(b: Base, info: bytes, ram: Optional[bytes] = None,
             holes: tuple[tuple[int, int], ...] = ()) -> bytearray:
    """The base's ELF with another VMCOREINFO text and/or RAM, and its PT_LOADs split
    around ``holes`` (PA ranges left out of the file: "excluded" pages)."""
    return synthdump.elf_bytes(b.k.ram if ram is None else ram, info, b.k.pob, holes,
                               image=b.kallsyms)


def _garbage_value(rng: random.Random) -> bytes:
    return rng.choice([b"", b"zz", b"-1", b"0x10", b"1e9", str(interesting(rng)).encode(),
                       b"9" * rng.choice([20, 400, 5000]), f"{rng.getrandbits(64):x}".encode(),
                       b"\xff\xfe\x80", b"6.1\x1b[31m\x00x", b" 4096 ", b"4096\r",
                       rng.randbytes(rng.randrange(1, 40))])


def vmcoreinfo_edit(rng: random.Random, b: Base) -> tuple[bytes, str]:
    info = b.info
    lines = info.split(b"\n")
    c = rng.randrange(9)
    if c <= 2:
        key = rng.choice(VMCI_KEYS).encode()
        val = _garbage_value(rng)
        lines = [ln.split(b"=", 1)[0] + b"=" + val if ln.startswith(key + b"=") else ln
                 for ln in lines]
        return b"\n".join(lines), f"VMCOREINFO {key.decode()}={val[:60]!r}"
    if c == 3:
        key = rng.choice(VMCI_KEYS).encode()
        return (b"\n".join(ln for ln in lines if not ln.startswith(key + b"=")),
                f"VMCOREINFO without {key.decode()}")
    if c == 4:
        key = rng.choice(VMCI_KEYS).encode()
        val = _garbage_value(rng)
        return info + key + b"=" + val + b"\n", f"VMCOREINFO {key.decode()} twice, then {val[:60]!r}"
    if c == 5:
        add = rng.choice([b"SIZE(mm_struct)=", b"OFFSET(mm_struct.pgd)=", b"SIZE(efi)=",
                          b"OFFSET(efi.memmap)=", b"SIZE(uv_hub_info_s)=", b"SIZE(nosuch)=",
                          b"OFFSET(mm_struct.nosuch)=", b"SIZE(pgd_t)="])
        val = rng.choice([b"16", b"8", b"64", b"0", b"zz", str(interesting(rng)).encode()])
        return info + add + val + b"\n", f"VMCOREINFO + {(add + val).decode(errors='replace')}"
    if c == 6:
        add = rng.choice([b"BUILD-ID=" + rng.randbytes(20).hex().encode(),
                          b"BUILD-ID=" + _garbage_value(rng),
                          b"NUMBER(sme_mask)=" + _garbage_value(rng),
                          b"SYMBOL(init_mm)=" + f"{interesting(rng):x}".encode(),
                          b"SYMBOL(efi_mm)=ffffffff81000000",
                          b"CRASHTIME=" + _garbage_value(rng)])
        return info + add + b"\n", f"VMCOREINFO + {add[:80]!r}"
    if c == 7:
        n = rng.choice([1, 100, 5000])
        junk = b"".join(rng.choice([b"NOEQUALS", b"=", b"==", b"K=V", b"\0", b"\xff=\xff",
                                    b"SYMBOL(x)=1"]) + b"\n" for _ in range(n))
        return info + junk, f"VMCOREINFO + {n} junk lines"
    return info.rstrip(b"\n") + rng.choice([b"", b"\0\0\0", b"\n\n\n"]), \
        "VMCOREINFO end without newline / with NULs"


def _pack(fmt: str, data: bytearray, off: int, val) -> None:
    """``struct.pack_into`` that masks the value to the field and leaves a file too short
    for the field alone (a second mutation may follow a truncation)."""
    if isinstance(val, int):
        fmt = fmt[0] + fmt[1:].upper()
        val &= (1 << 8 * struct.calcsize(fmt)) - 1
    if 0 <= off and off + struct.calcsize(fmt) <= len(data):
        struct.pack_into(fmt, data, off, val)


def mutate(rng: random.Random, b: Base, data: bytearray, files: dict,
           recipe: list[str], cats: list[str]) -> bytearray:
    c = rng.choices(["ehdr", "phdr", "note", "vmcoreinfo", "data", "holes", "truncate",
                     "insert", "btf", "map", "options"],
                    [10, 12, 6, 16, 22, 6, 5, 4, 7, 7, 5])[0]
    cats.append(c)
    size = len(data)
    if c == "ehdr":
        name, off, fmt = rng.choice(EHDR)
        bits = 8 * struct.calcsize(fmt)
        val = rng.choice([interesting(rng, bits), size & ((1 << bits) - 1),
                          (size - rng.randrange(1, 200)) & ((1 << bits) - 1), 0xFFFF & ((1 << bits) - 1)])
        _pack(fmt, data, off, val)
        recipe.append(f"ELF header {name} = 0x{val:x}")
    elif c == "phdr":
        phnum = struct.unpack_from("<H", data, 56)[0] if len(data) >= 58 else 0
        if rng.random() < 0.2:
            # one more program header, overlapping the first PT_LOAD (at the end of the file)
            ph = bytearray(data[64 + 56:64 + 112].ljust(56, b"\0"))
            name, off, fmt = rng.choice(PHDR)
            _pack(fmt, ph, off, interesting(rng, 8 * struct.calcsize(fmt)))
            phoff = len(data)
            data += data[64:64 + 56 * phnum] + ph
            _pack("<Q", data, 32, phoff)
            _pack("<H", data, 56, phnum + 1)
            recipe.append(f"program headers moved to the end plus one copy of PT_LOAD with "
                          f"{name} = garbage")
        else:
            i = rng.randrange(max(phnum, 1))
            name, off, fmt = rng.choice(PHDR)
            bits = 8 * struct.calcsize(fmt)
            val = rng.choice([interesting(rng, bits), size, size - 4096, 1, 0,
                              rng.choice([1, 2, 3, 4, 7, 0x6474E550])])
            val &= (1 << bits) - 1
            _pack(fmt, data, 64 + 56 * i + off, val)
            recipe.append(f"program header {i} {name} = 0x{val:x}")
    elif c == "note":
        name, off, fmt = rng.choice([("n_namesz", 0, "<I"), ("n_descsz", 4, "<I"),
                                     ("n_type", 8, "<I"), ("name", 12, "12s")])
        if fmt == "12s":
            val = rng.choice([b"CORE\0", b"VMCOREINF\0", b"", rng.randbytes(12)])
            _pack(fmt, data, b.note_off + off, val)
            recipe.append(f"note name = {val!r}")
        else:
            val = rng.choice([0, 1, 11, 12, len(b.info) + rng.choice([-5, 1, 4096]),
                              interesting(rng, 32)])
            _pack(fmt, data, b.note_off + off, val & U64 >> 32)
            recipe.append(f"note {name} = 0x{val & U64 >> 32:x}")
    elif c == "vmcoreinfo":
        info, what = vmcoreinfo_edit(rng, b)
        data = elf_core(b, info)
        recipe.append(what)
    elif c == "data":
        n = rng.choice([1, 1, 2, 8])
        for _ in range(n):
            where = rng.random()
            if b.regions and where < 0.3:
                region = rng.choice(sorted(b.regions))
                lo, hi = b.regions[region]
                pa = rng.randrange(lo, max(hi - 8, lo + 1))
                what = f"{region} (in memory)"
            elif where < 0.5:
                pa = rng.choice(b.tables) + 8 * rng.randrange(512)
                what = "a table entry"
            elif where < 0.8:
                pa = rng.choice(b.globals) + rng.randrange(0, 64)
                what = "a global"
            else:
                pa = rng.randrange(len(b.k.ram) - 8)
                what = "RAM"
            pa &= ~7 if rng.random() < 0.7 else ~0
            val = interesting(rng)
            off = b.load_off + pa
            if off + 8 <= len(data):
                _pack("<Q", data, off, val)
            if what == "a global":
                what = f"global {b.name_of(pa)}"
            recipe.append(f"data: 8 bytes of {what} at PA 0x{pa:x} = 0x{val:x}")
    elif c == "holes":
        holes = []
        for _ in range(rng.choice([1, 2])):
            if rng.random() < 0.6:
                pa = rng.choice(b.tables + b.globals) & ~0xFFF
            else:
                pa = rng.randrange(len(b.k.ram) >> 12) << 12
            holes.append((pa, min(pa + 4096 * rng.choice([1, 1, 4]), len(b.k.ram))))
        data = elf_core(b, b.info, holes=tuple(holes))
        recipe.append("pages excluded from the dump (PT_LOAD split around them): "
                      + ", ".join(f"PA 0x{lo:x}-0x{hi:x}" for lo, hi in holes))
    elif c == "truncate":
        cut = rng.choice([0, 1, 63, 64, 100, b.note_off + 20, b.load_off, b.load_off + 4096,
                          rng.randrange(max(size, 1)), max(size - 1, 0)])
        del data[cut:]
        recipe.append(f"truncated to {cut} bytes")
    elif c == "insert":
        at = rng.choice([0, 16, 64, b.note_off, b.load_off, rng.randrange(max(size, 1))])
        n = rng.choice([1, 7, 8, 4096])
        data[at:at] = rng.randbytes(n)
        recipe.append(f"{n} random bytes inserted at offset {at}")
    elif c == "btf":
        blob = bytearray(files["btf"])
        how = rng.randrange(4)
        if how == 0:
            for _ in range(rng.choice([1, 4, 32])):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            recipe.append("BTF: random bytes changed")
        elif how == 1:
            cut = rng.randrange(len(blob))
            del blob[cut:]
            recipe.append(f"BTF truncated to {cut} bytes")
        elif how == 2:
            off = rng.choice([4, 8, 12, 16, 20])
            _pack("<I", blob, off, interesting(rng, 32))
            recipe.append(f"BTF header word at {off} = garbage")
        else:
            off = 24 + 4 * rng.randrange((len(blob) - 24) // 4)
            _pack("<I", blob, off, interesting(rng, 32))
            recipe.append(f"BTF word at {off} = garbage")
        files["btf"] = bytes(blob)
    elif c == "map":
        lines = files["map"].split(b"\n")
        how = rng.randrange(6)
        # the "ADDR t name" lines (a first mutation may have added garbage ones)
        good = [n for n, ln in enumerate(lines) if len(ln.split(b" ")) == 3] or [0]
        i = good[rng.randrange(len(good))]
        if how in (0, 3, 4) and len(lines[i].split(b" ")) != 3:
            how = 2
        if how == 0:
            addr, t, name = lines[i].split(b" ")
            lines[i] = b" ".join([f"{interesting(rng):016x}".encode(), t, name])
            recipe.append(f"System.map: {name.decode()} at a garbage address")
        elif how == 1:
            recipe.append(f"System.map: line {lines[i]!r} removed")
            del lines[i]
        elif how == 2:
            lines.insert(i, rng.choice([b"garbage", b"zz D x", b"\xff\xfe", b"1 D",
                                        b"ffffffffffffffffff D init_mm", b"x" * 5000]))
            recipe.append("System.map: a garbage line")
        elif how == 3:
            j = good[rng.randrange(len(good))]
            a, b_ = lines[i].split(b" ")[2], lines[j].split(b" ")[2]
            lines[i] = lines[i].rsplit(b" ", 1)[0] + b" " + b_
            lines[j] = lines[j].rsplit(b" ", 1)[0] + b" " + a
            recipe.append(f"System.map: {a.decode()} and {b_.decode()} swapped")
        elif how == 4:
            other = lines[good[rng.randrange(len(good))]].split(b" ")[2]
            lines.insert(i, lines[i].split(b" ")[0] + b" D " + other)
            recipe.append("System.map: a duplicated name at another address")
        else:
            lines = lines[::-1]
            recipe.append("System.map: lines in reverse order")
        files["map"] = b"\n".join(lines)
    else:
        opt = rng.choice(["no-debuginfo", "btf-is-vmcore", "vmlinux-is-vmcore", "map-empty",
                          "vmlinux-is-btf", "auto-with-map"])
        files["options"] = opt
        recipe.append(f"debug-info options: {opt}")
    return data


def target_args(files: dict, paths: dict, kallsyms: bool = False) -> list[str]:
    opt = files.get("options")
    v = ["--vmcore", paths["core"]]
    if kallsyms:           # 6.0+: types and symbols from the dump itself
        if opt is None:
            return v
        if opt == "no-debuginfo":
            return v + ["--debug-info", "dwarf"]            # and no vmlinux anywhere
        if opt == "auto-with-map":
            return v + ["--system-map", paths["map"]]
    if opt == "no-debuginfo":
        return v
    if opt == "btf-is-vmcore":
        return v + ["--debug-info", "btf", "--btf", paths["core"], "--system-map", paths["map"]]
    if opt == "vmlinux-is-vmcore":
        return v + ["--vmlinux", paths["core"]]
    if opt == "vmlinux-is-btf":
        return v + ["--vmlinux", paths["btf"]]
    if opt == "map-empty":
        return v + ["--debug-info", "btf", "--btf", paths["btf"], "--system-map", "/dev/null"]
    if opt == "auto-with-map":
        return v + ["--btf", paths["btf"], "--system-map", paths["map"]]
    return v + ["--debug-info", "btf", "--btf", paths["btf"], "--system-map", paths["map"]]


def _request(args: list[str]):
    """The debug-info request the CLI would build from ``args``."""
    from mmrwatch.agent import cli, targetopts
    ns = cli.build_parser().parse_args(["report", *args])
    return ns.vmcore, targetopts.request(ns)


def run(rng: random.Random, out, keep=None):
    from mmrwatch.collectors.target import open_vmcore
    from tests.fuzz import harness
    if harness.REAL_EVERY and out.seed % harness.REAL_EVERY == harness.REAL_EVERY - 1:
        from tests.fuzz import gen_real
        if gen_real.bases():
            return gen_real.run(rng, out, keep)
    bi = rng.randrange(len(DUMP_BASES))
    b = get_base(bi)
    out.recipe = [f"base dump {bi} (tables base {DUMP_BASES[bi][0]}"
                  + (", kallsyms and BTF in memory)" if b.kallsyms else ", BTF + System.map)")]
    files = {"btf": b.btf, "map": b.map}
    data, cats = bytearray(b.core), []
    for _ in range(rng.choice([1, 1, 1, 2])):
        data = mutate(rng, b, data, files, out.recipe, cats)
    out.sub = cats[0]
    d = keep or harness.tmpdir()
    stem = f"d{out.seed}"
    paths = {"core": os.path.join(d, f"{stem}.elf"), "btf": os.path.join(d, f"{stem}.btf"),
             "map": os.path.join(d, f"{stem}.map")}
    for key, blob in (("core", data), ("btf", files["btf"]), ("map", files["map"])):
        with open(paths[key], "wb") as f:
            f.write(blob)
    args = target_args(files, paths, b.kallsyms)
    cmds = harness.commands(rng)
    try:
        if out.cli:
            return harness.cli_run(out, [c[:1] + args + c[1:] for c in cmds])
        out.command = " ; ".join("mmrwatch " + " ".join(c[:1] + args + c[1:]) for c in cmds)
        vmcore, req = _request(args)

        def body():
            t = open_vmcore(vmcore, req=req)
            return harness.run_commands(t, cmds)
        return harness.inprocess(out, body)
    finally:
        if not keep:
            for p in paths.values():
                os.unlink(p)
