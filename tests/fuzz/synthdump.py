"""A synthetic kernel as a user hands it to the CLI: ELF vmcore + BTF + System.map.

``SynthKernel.write_vmcore`` writes RAM and VMCOREINFO only; the kernel globals mmrwatch
reads live in a Python object finder, and the dump has no debug info, so ``mmrwatch report
--vmcore`` on it stops at "no debug info" (exit 69).  There is no test hook that gets a
synthetic dump past that (``tests/unit/test_cli_errors.py`` only runs the CLI into its error
exits).  So this module gives the dump what a BTF-era distribution kernel gives: the globals
written into RAM (``init_mm``, ``efi_mm``, ``efi``, ``page_offset_base``, the UV globals, ...),
a raw BTF blob describing their types (generated from ``tests.synth._Types``, so it cannot
drift from the mock program's layouts), and a System.map naming their addresses plus
``swapper_pg_dir`` (which the symbol check compares with VMCOREINFO).  The globals come
from ``tests.fuzz.kernels.FuzzKernel``, which keeps them in RAM for the mock program too.  The CLI then runs its
whole production path: ``--debug-info btf --btf BLOB --system-map MAP``.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

import drgn

from mmrwatch.collectors import btf
from mmrwatch.collectors.kernel import START_KERNEL_MAP
from tests.fuzz.kernels import FuzzKernel, FuzzTypes

K = drgn.TypeKind
PLATFORM = drgn.Platform(drgn.Architecture.X86_64,
                         drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)


class BTFWriter:
    """drgn types -> BTF records (the subset kernel globals use)."""

    def __init__(self) -> None:
        self.strings, self.offs = bytearray(b"\0"), {"": 0}
        self.recs: list[bytes] = []
        self.ids: dict[object, int] = {}       # _key(drgn type) -> BTF id
        self._keep: list[drgn.Type] = []       # keep id()-keyed types alive

    def s(self, name: Optional[str]) -> int:
        name = name or ""
        if name not in self.offs:
            self.offs[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        return self.offs[name]

    def _rec(self, name: Optional[str], kind: int, vlen: int, ref: int, *extra: int) -> int:
        self.recs.append(struct.pack(f"<3I{len(extra)}I", self.s(name), kind << 24 | vlen,
                                     ref, *extra))
        return len(self.recs)

    def _reserve(self) -> int:
        self.recs.append(b"")
        return len(self.recs)

    def add(self, t: drgn.Type) -> int:
        if t.kind == K.VOID:
            return 0
        key = _key(t)
        if key in self.ids:
            return self.ids[key]
        self._keep.append(t)
        if t.kind == K.INT:
            enc = btf.INT_SIGNED if t.is_signed else 0
            tid = self._rec(t.name, btf.INT, 0, t.size, enc << 24 | t.size * 8)
        elif t.kind == K.TYPEDEF:
            tid = self._reserve()
            self.ids[key] = tid
            ref = self.add(t.type)
            self.recs[tid - 1] = struct.pack("<3I", self.s(t.name), btf.TYPEDEF << 24, ref)
        elif t.kind == K.POINTER:
            tid = self._reserve()
            self.ids[key] = tid
            ref = self.add(t.type)
            self.recs[tid - 1] = struct.pack("<3I", 0, btf.PTR << 24, ref)
        elif t.kind == K.ARRAY:
            idx = self.add(_INDEX)
            tid = self._rec(None, btf.ARRAY, 0, 0, self.add(t.type), idx, t.length or 0)
        elif t.kind in (K.STRUCT, K.UNION):
            tid = self._reserve()
            self.ids[key] = tid
            words = []
            kflag = any(m.bit_field_size for m in t.members)
            for m in t.members:
                off = m.bit_offset | (m.bit_field_size or 0) << 24 if kflag else m.bit_offset
                words += [self.s(m.name), self.add(m.type), off]
            kind = btf.STRUCT if t.kind == K.STRUCT else btf.UNION
            self.recs[tid - 1] = struct.pack(f"<3I{len(words)}I", self.s(t.tag), kflag << 31
                                             | kind << 24 | len(t.members), t.size, *words)
        elif t.kind == K.ENUM:
            words = []
            for e in t.enumerators:
                words += [self.s(e.name), e.value & 0xFFFFFFFF]
            tid = self._rec(t.tag, btf.ENUM, len(t.enumerators), 4, *words)
        else:
            raise TypeError(f"no BTF for {t}")
        self.ids[key] = tid
        return tid

    def blob(self) -> bytes:
        types = b"".join(self.recs)
        return struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(types), len(types),
                           len(self.strings)) + types + bytes(self.strings)


def _key(t: drgn.Type) -> object:
    """Named types once by (kind, name); pointers and arrays by what they point at."""
    if t.kind in (K.INT, K.TYPEDEF):
        return (t.kind, t.name)
    if t.kind in (K.STRUCT, K.UNION, K.ENUM) and t.tag:
        return (t.kind, t.tag)
    if t.kind == K.POINTER:
        return (t.kind, _key(t.type))
    if t.kind == K.ARRAY:
        return (t.kind, _key(t.type), t.length)
    return id(t)


_INDEX_PROG = drgn.Program(PLATFORM)
_INDEX = _INDEX_PROG.int_type("unsigned int", 4, False)


def btf_blob(v510: bool = True) -> bytes:
    """BTF for every type the fuzz kernels' mock program has (``kernels.FuzzTypes``), in
    the spellings ``collectors.kglobals.DECLARED`` asks for."""
    prog = drgn.Program(PLATFORM)
    t = FuzzTypes(prog)
    w = BTFWriter()
    for typ in (*t.named().values(), t.hub_v510 if v510 else t.hub_v47, t.u8, t.char_p):
        w.add(typ)
    return w.blob()


def system_map(k: FuzzKernel) -> bytes:
    """``nm -n``-style lines for every global of ``k`` (call ``k.materialize()`` first)."""
    allsyms = dict(k.symbols, swapper_pg_dir=START_KERNEL_MAP + k.init_root)
    lines = sorted((a, n) for n, a in allsyms.items())
    return b"".join(f"{a:016x} D {n}\n".encode() for a, n in lines)


def elf_bytes(ram: bytes, info: bytes, pob: int, holes: tuple[tuple[int, int], ...] = (),
              image: bool = False) -> bytearray:
    """An ELF64 core of ``ram`` laid out as ``SynthKernel.write_vmcore`` lays it out (byte
    for byte when nothing else is asked): a PT_NOTE with the VMCOREINFO note ``info``, then
    PT_LOADs of RAM at the direct map, split around ``holes`` (PA ranges left out of the
    file: pages excluded from the dump), and with ``image`` the same file data again at the
    kernel-image addresses (``START_KERNEL_MAP + pa``), as /proc/vmcore has a kernel-text
    segment."""
    name = b"VMCOREINFO\0"
    note = struct.pack("<III", len(name), len(info), 0) + name.ljust(12, b"\0") + \
        info.ljust((len(info) + 3) & ~3, b"\0")
    spans, pos = [], 0
    for lo, hi in sorted(holes):
        if lo > pos:
            spans.append((pos, lo))
        pos = max(pos, hi)
    if pos < len(ram):
        spans.append((pos, len(ram)))
    nph = 1 + len(spans) * (2 if image else 1)
    note_off = 64 + 56 * nph
    off = (note_off + len(note) + 4095) & ~4095
    loads, data = [], []
    for lo, hi in spans:
        loads.append(struct.pack("<IIQQQQQQ", 1, 7, off, pob + lo, lo, hi - lo, hi - lo, 4096))
        data.append((off, ram[lo:hi]))
        if image:
            loads.append(struct.pack("<IIQQQQQQ", 1, 7, off, START_KERNEL_MAP + lo, lo,
                                     hi - lo, hi - lo, 4096))
        off += hi - lo
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 4, 62, 1, 0, 64,
                       0, 0, 64, 56, nph, 64, 0, 0)
    pt_note = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(note), len(note), 4)
    out = bytearray(ehdr + pt_note + b"".join(loads) + note)
    for o, d in data:
        out += bytes(o - len(out))
        out += d
    return out


def kallsyms_tables(syms: dict[str, int]) -> tuple[bytes, bytes, bytes, bytes, int]:
    """The kernel's compressed kallsyms for ``syms`` (v6.1 layout, what
    ``collectors.kallsyms.decode`` reads): names with 1-byte lengths over a token table of
    the 256 single bytes, base-relative offsets with absolute per-CPU entries
    (x86-64 SMP's --absolute-percpu).  Returns (names, token_table, token_index, offsets,
    relative_base)."""
    base = START_KERNEL_MAP
    names, offsets = bytearray(), []
    for addr, name in sorted((a, n) for n, a in syms.items()):
        entry = (b"d" if addr < START_KERNEL_MAP and addr < 1 << 32 else b"D") + name.encode()
        names += bytes([len(entry)]) + entry
        offsets.append(addr if addr < 1 << 31 else -(addr - base + 1))
    table = b"".join(bytes([i]) + b"\0" for i in range(256))
    index = struct.pack("<256H", *range(0, 512, 2))
    return bytes(names), table, index, struct.pack(f"<{len(offsets)}i", *offsets), base


def bundle_kallsyms(k: FuzzKernel) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """``k`` as a 6.0+ dump carries it: globals at kernel-image addresses, kallsyms and BTF
    in memory (``__start_BTF``), VMCOREINFO naming the kallsyms tables: the CLI needs no
    option but ``--vmcore``.  Returns the core bytes and the PA ranges of what was laid out
    (for corruptions)."""
    k.image_globals = True
    syms = k.materialize()
    blob = btf_blob(not k.uv_state or k.uv_state["v510"])
    regions: dict[str, tuple[int, int]] = {}

    def place(name: str, data: bytes) -> int:
        first = k.alloc()
        for _ in range(1, (len(data) + 4095) // 4096):
            k.alloc()
        k.ram[first:first + len(data)] = data
        regions[name] = (first, first + len(data))
        return first

    bpa = place("btf", blob)
    syms["__start_BTF"] = k.gva(bpa)
    syms["__stop_BTF"] = k.gva(bpa + len(blob))
    syms["swapper_pg_dir"] = START_KERNEL_MAP + k.init_root
    names, table, index, offsets, rbase = kallsyms_tables(syms)
    npa = place("kallsyms_names", names + table)            # token table right after names
    regions["kallsyms_token_table"] = (npa + len(names), npa + len(names) + len(table))
    where = {"kallsyms_names": npa, "kallsyms_token_table": npa + len(names),
             "kallsyms_token_index": place("kallsyms_token_index", index),
             "kallsyms_num_syms": place("kallsyms_num_syms",
                                        struct.pack("<I", len(offsets) // 4)),
             "kallsyms_offsets": place("kallsyms_offsets", offsets),
             "kallsyms_relative_base": place("kallsyms_relative_base",
                                             struct.pack("<Q", rbase))}
    k.vmcoreinfo_extra = b"".join(f"SYMBOL({n})={k.gva(pa):x}\n".encode()
                                  for n, pa in where.items())
    k.materialize()                       # the globals again, after the new allocations
    return bytes(elf_bytes(k.ram, k.vmcoreinfo(), k.pob, image=True)), regions


def garbage_kallsyms(k: FuzzKernel) -> bytes:
    """A 6.0+ dump of ``k`` whose kallsyms token table has no NUL for 200 bytes (fuzz bug B5:
    mmrwatch's decoder gives up, drgn's loader raises BadDataError)."""
    core, regions = bundle_kallsyms(k)
    data = bytearray(core)
    load_off = struct.unpack_from("<Q", data, 64 + 56 + 8)[0]
    lo, _ = regions["kallsyms_token_table"]
    data[load_off + lo:load_off + lo + 200] = b"x" * 200
    return bytes(data)


def bundle(k: FuzzKernel) -> tuple[bytes, bytes, bytes]:
    """(vmcore, btf, System.map) bytes of ``k`` (its globals are written into RAM)."""
    import os
    import tempfile
    k.materialize()
    fd, path = tempfile.mkstemp(prefix="mmrwatch-fuzz-", suffix=".elf", dir=_tmpdir())
    os.close(fd)
    try:
        k.write_vmcore(path)
        with open(path, "rb") as f:
            core = f.read()
    finally:
        os.unlink(path)
    return core, btf_blob(not k.uv_state or k.uv_state["v510"]), system_map(k)


def _tmpdir() -> Optional[str]:
    import os
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def write_bundle(k: FuzzKernel, out: Path, stem: str = "vmcore") -> tuple[Path, Path, Path]:
    """(vmcore, btf, System.map) files of ``k`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{stem}.elf", out / f"{stem}.btf", out / f"{stem}.map"
    for p, data in zip(paths, bundle(k)):
        p.write_bytes(data)
    return paths


def cli_args(vmcore: Path, blob: Path, smap: Path) -> list[str]:
    """The target options that take the CLI through its whole path on a synthetic dump."""
    return ["--vmcore", str(vmcore), "--debug-info", "btf", "--btf", str(blob),
            "--system-map", str(smap)]
