"""Kernel BTF, read lazily: the format of the kernel's ``Documentation/bpf/btf.rst``.

A distribution kernel built with ``CONFIG_DEBUG_INFO_BTF=y`` carries every type it was
compiled with in a few megabytes (``/sys/kernel/btf/vmlinux`` live, ``__start_BTF`` ..
``__stop_BTF`` in the kernel image of a dump).  mmrwatch needs a few dozen of those types,
so this module indexes the blob once (one pass over the records, names kept as string
offsets) and decodes a record only when asked; ``btftypes`` turns records into drgn types.

Everything read from the blob is bounds-checked: a truncated or corrupt blob raises
``BTFError`` with a one-line cause, never ``IndexError`` or ``struct.error``.
"""
from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Optional

from .errors import DEBUGINFO, TargetError

MAGIC = 0xEB9F
(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
 FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(1, 20)
KIND_NAMES = {INT: "int", PTR: "ptr", ARRAY: "array", STRUCT: "struct", UNION: "union",
              ENUM: "enum", FWD: "fwd", TYPEDEF: "typedef", VOLATILE: "volatile",
              CONST: "const", RESTRICT: "restrict", FUNC: "func", FUNC_PROTO: "func_proto",
              VAR: "var", DATASEC: "datasec", FLOAT: "float", DECL_TAG: "decl_tag",
              TYPE_TAG: "type_tag", ENUM64: "enum64"}
# u32 words after the 3-word header of a record: fixed, and per vlen item
_EXTRA_FIXED = {INT: 1, ARRAY: 3, VAR: 1, DECL_TAG: 1}
_EXTRA_PER_ITEM = {STRUCT: 3, UNION: 3, ENUM: 2, FUNC_PROTO: 2, DATASEC: 3, ENUM64: 3}
_NAMED = frozenset({INT, STRUCT, UNION, ENUM, FWD, TYPEDEF, FUNC, VAR, DATASEC, FLOAT, ENUM64})
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4
PERCPU_SECTION = ".data..percpu"
MAX_TYPES = 1 << 22          # kernels have ~130k; more is garbage, not a kernel
MAX_BLOB = 256 << 20         # kernels have 4-8 MiB


class BTFError(TargetError):
    """The blob is not usable BTF (one-line cause): debug info that cannot be used."""

    def __init__(self, message: str) -> None:
        super().__init__(DEBUGINFO, message)


@dataclass(frozen=True)
class Record:
    """One decoded type record: ``ref`` is the size or the referenced type id."""

    id: int
    kind: int
    name: str
    vlen: int
    kflag: bool
    ref: int
    extra: tuple[int, ...]         # the u32 words that follow the header

    def items(self, width: int) -> list[tuple[int, ...]]:
        """The vlen items (members, enumerators, params, secinfos) as tuples of ``width``."""
        return [self.extra[i:i + width] for i in range(0, len(self.extra), width)]


class BTF:
    """An indexed BTF blob (little-endian, version 1)."""

    def __init__(self, data: bytes, origin: str = "BTF") -> None:
        self.origin = origin
        self._data = bytes(data)
        self._parse_header()
        self._index()
        self._enumerators: Optional[array] = None     # (name offset << 32 | enum id), sorted
        self._percpu: Optional[dict[str, int]] = None
        self._records: dict[int, Record] = {}
        self._offsets: dict[str, Optional[int]] = {}

    # --- layout -----------------------------------------------------------------------
    def _parse_header(self) -> None:
        d = self._data
        if len(d) < 24:
            raise BTFError(f"{self.origin}: too short for a BTF header ({len(d)} bytes)")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", d, 0)
        if magic == 0x9FEB:
            raise BTFError(f"{self.origin}: big-endian BTF is not supported")
        if magic != MAGIC:
            raise BTFError(f"{self.origin}: not BTF (magic 0x{magic:04x})")
        if version != 1:
            raise BTFError(f"{self.origin}: BTF version {version} is not supported")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", d, 8)
        if hdr_len < 24 or hdr_len > len(d):
            raise BTFError(f"{self.origin}: bad header length {hdr_len}")
        body = len(d) - hdr_len
        if type_off + type_len > body or str_off + str_len > body or type_len % 4 \
                or (hdr_len + type_off) % 4:
            raise BTFError(f"{self.origin}: truncated or corrupt (sections run past the "
                           f"{len(d)}-byte blob)")
        self._words = memoryview(d)[hdr_len + type_off:hdr_len + type_off + type_len].cast("I")
        # the string section stays inside the blob (offsets, no copy of its megabytes)
        self._str0, self._str1 = hdr_len + str_off, hdr_len + str_off + str_len
        if str_len == 0 or d[self._str0] != 0:
            raise BTFError(f"{self.origin}: corrupt string section")

    def _index(self) -> None:
        """One pass: where each record starts, and which records carry which name.

        This loop is the whole cost of opening BTF (~130k records), hence the flat tables
        indexed by kind and the int-or-tuple values (lists only where names collide)."""
        w, n = self._words, len(self._words)
        fixed, per = [0] * 32, [0] * 32
        valid, named = [False] * 32, [False] * 32
        for k in KIND_NAMES:
            fixed[k] = 3 + _EXTRA_FIXED.get(k, 0)
            per[k] = _EXTRA_PER_ITEM.get(k, 0)
            valid[k], named[k] = True, k in _NAMED
        starts = array("I", [0])            # type id 0 is void
        append = starts.append
        names = array("Q")                   # name offset << 32 | type id, sorted below
        add_name = names.append
        enums: list[int] = []
        pos = 0
        while pos < n:
            info = w[pos + 1] if pos + 3 <= n else self._truncated(len(starts))
            kind = (info >> 24) & 0x1F
            if not valid[kind]:
                raise BTFError(f"{self.origin}: type {len(starts)} has unknown kind {kind}")
            if named[kind]:
                no = w[pos]
                if no:
                    add_name(no << 32 | len(starts))
            append(pos)
            pos += fixed[kind] + per[kind] * (info & 0xFFFF)
            if kind == ENUM or kind == ENUM64:
                enums.append(len(starts) - 1)
            if len(starts) > MAX_TYPES:
                raise BTFError(f"{self.origin}: more than {MAX_TYPES} types: not kernel BTF")
        if pos != n:
            raise BTFError(f"{self.origin}: last type record runs past the type section")
        self._starts, self._names, self._enum_ids = starts, array("Q", sorted(names)), enums

    def _truncated(self, tid: int) -> int:
        raise BTFError(f"{self.origin}: truncated type record {tid}")

    def _named(self, name_off: int) -> list[int]:
        """Type ids whose name is at ``name_off`` (binary search of the sorted pairs)."""
        names, out = self._names, []
        i = bisect_left(names, name_off << 32)
        while i < len(names) and names[i] >> 32 == name_off:
            out.append(names[i] & 0xFFFFFFFF)
            i += 1
        return out

    @property
    def count(self) -> int:
        """Number of type ids, void (0) included."""
        return len(self._starts)

    def string(self, off: int) -> str:
        """The NUL-terminated string at ``off`` in the string section."""
        start = self._str0 + off
        if start >= self._str1:
            raise BTFError(f"{self.origin}: name offset {off} outside the string section")
        end = self._data.find(b"\0", start, self._str1)
        if end < 0:
            raise BTFError(f"{self.origin}: unterminated string at {off}")
        return self._data[start:end].decode("utf-8", "replace")

    def _name_offset(self, name: str) -> Optional[int]:
        """Where ``name`` sits in the (deduplicated) string section, if anywhere (a scan of
        a few MB, so remembered: drgn asks for the same names again and again)."""
        if name not in self._offsets:
            i = self._data.find(b"\0" + name.encode() + b"\0", self._str0, self._str1)
            self._offsets[name] = None if i < 0 else i + 1 - self._str0
        return self._offsets[name]

    # --- records ----------------------------------------------------------------------
    def record(self, tid: int) -> Record:
        """The decoded record of type ``tid`` (not void)."""
        rec = self._records.get(tid)
        if rec is not None:
            return rec
        if not 0 < tid < len(self._starts):
            raise BTFError(f"{self.origin}: reference to type id {tid}, which does not exist "
                           f"(0..{len(self._starts) - 1})")
        w, pos = self._words, self._starts[tid]
        info = w[pos + 1]
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        nextra = _EXTRA_FIXED.get(kind, 0) + _EXTRA_PER_ITEM.get(kind, 0) * vlen
        rec = Record(tid, kind, self.string(w[pos]), vlen, bool(info >> 31), w[pos + 2],
                     tuple(w[pos + 3:pos + 3 + nextra]))
        self._records[tid] = rec
        return rec

    def find(self, name: str, kinds: Iterable[int]) -> list[int]:
        """Ids of the named types of one of ``kinds``, in blob order."""
        off = self._name_offset(name)
        if off is None:
            return []
        want = set(kinds)
        return [t for t in self._named(off) if self.record(t).kind in want]

    def enumerator(self, name: str) -> Optional[tuple[int, int]]:
        """(enum type id, value) of an enumerator constant such as ``desc_committed``.

        drgn asks for a constant at every object lookup that is not a variable, so the
        enumerators are indexed by name offset (ints, no string decoded) on first use."""
        if self._enumerators is None:
            w, pairs = self._words, array("Q")
            for tid in self._enum_ids:
                pos = self._starts[tid]
                width = 2 if (w[pos + 1] >> 24) & 0x1F == ENUM else 3
                for i in range(pos + 3, pos + 3 + width * (w[pos + 1] & 0xFFFF), width):
                    pairs.append(w[i] << 32 | tid)
            self._enumerators = array("Q", sorted(pairs))
        off = self._name_offset(name)
        if off is None:
            return None
        pairs = self._enumerators
        i = bisect_left(pairs, off << 32)
        if i == len(pairs) or pairs[i] >> 32 != off:
            return None
        tid = pairs[i] & 0xFFFFFFFF
        return tid, dict(self.enum_values(tid))[name]

    def enum_values(self, tid: int) -> list[tuple[str, int]]:
        """(name, value) of each enumerator; signedness from kind_flag (pahole 1.24+)."""
        rec = self.record(tid)
        out = []
        if rec.kind == ENUM:
            for name_off, raw in rec.items(2):
                value = raw - (1 << 32) if rec.kflag and raw >> 31 else raw
                out.append((self.string(name_off), value))
        elif rec.kind == ENUM64:
            for name_off, lo, hi in rec.items(3):
                value = hi << 32 | lo
                out.append((self.string(name_off),
                            value - (1 << 64) if rec.kflag and value >> 63 else value))
        return out

    def percpu_variables(self) -> dict[str, int]:
        """Per-CPU variables (the only variables kernel BTF has): name -> type id."""
        if self._percpu is None:
            out: dict[str, int] = {}
            for sec in self.find(PERCPU_SECTION, (DATASEC,)):
                for var_id, _off, _size in self.record(sec).items(3):
                    var = self.record(var_id)
                    if var.kind == VAR:
                        out.setdefault(var.name, var.ref)
            self._percpu = out
        return self._percpu

    def resolve(self, tid: int) -> Record:
        """The record behind typedefs, qualifiers and type tags (bounded: loops are errors)."""
        seen = 0
        rec = self.record(tid)
        while rec.kind in (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG):
            seen += 1
            if seen > 64 or rec.ref == 0:
                raise BTFError(f"{self.origin}: type {tid} does not resolve (loop or void)")
            rec = self.record(rec.ref)
        return rec


def from_elf(f: BinaryIO, origin: str) -> bytes:
    """The ``.BTF`` section of an open ELF file (a vmlinux), read by seeking, bounds-checked."""
    size = os.fstat(f.fileno()).st_size
    eh = f.read(64)
    if len(eh) < 64 or eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
        raise BTFError(f"{origin}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", eh, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", eh, 0x3A)
    if shentsize < 64 or shoff + shnum * shentsize > size or shstrndx >= shnum:
        raise BTFError(f"{origin}: truncated or corrupt ELF section headers")
    f.seek(shoff)
    shdrs = f.read(shnum * shentsize)

    def sh(i: int) -> tuple[int, int, int]:
        name, = struct.unpack_from("<I", shdrs, i * shentsize)
        off, sz = struct.unpack_from("<QQ", shdrs, i * shentsize + 0x18)
        return name, off, sz
    _, stroff, strsize = sh(shstrndx)
    if stroff + strsize > size or strsize > 1 << 20:
        raise BTFError(f"{origin}: corrupt section name table")
    f.seek(stroff)
    names = f.read(strsize)
    for i in range(shnum):
        name, off, sz = sh(i)
        if names[name:name + 5] == b".BTF\0":
            if off + sz > size or sz > MAX_BLOB:
                raise BTFError(f"{origin}: .BTF section runs past the end of the file")
            f.seek(off)
            return f.read(sz)
    raise BTFError(f"{origin}: ELF file without a .BTF section (built without "
                   "CONFIG_DEBUG_INFO_BTF)")
