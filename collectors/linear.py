"""Is a slice of a page table one linear run of leaves?  Decided exactly, at C speed.

A run is linear when entry k is ``v0 + k * stride`` (same flags, contiguous physical pages):
the whole direct map, every MMR range.  The walker asks this for every leaf table it meets,
so the answer must cost about as much as reading the table, not 512 Python integers.

* Whole tables whose v0 has its 9 index bits ``[shift, shift + 9)`` clear (the common case:
  a 2 MiB-aligned PTE table, a 1 GiB-aligned PMD table): entry k is ``v0 | k << shift``, so
  every byte of it is one of v0's bytes except the two holding the index bits.  A code
  template (per entry: codes 0-7 for v0's bytes, then one code per value of each of the two
  index-carrying bytes) translated through a 256-byte table built from v0 is the exact
  expected 4 KiB: one ``bytes.translate`` and one ``==`` (memcmp).
* Otherwise a big-int identity: the table read as one little-endian integer equals v0 in
  every 64-bit digit plus the ramp ``k * stride`` (no digit overflows: checked on the last).

Which entries may start a run (present, a leaf, a huge one aligned) is the architecture's
rule (``arch.Arch.linear_leaf``); the shapes depend only on its level shifts.
"""
from __future__ import annotations

import weakref
from array import array
from functools import lru_cache

from .arch import Arch

_U64 = 1 << 64


class _Shape:
    """The code template and translation pieces of one stride (``1 << shift``)."""

    def __init__(self, shift: int, entries: int) -> None:
        self.byte, bit = divmod(shift, 8)
        nlo, nhi = 1 << (8 - bit), 1 << (bit + 1)
        codes = bytearray()
        for k in range(entries):
            for j in range(8):
                codes.append(8 + (k & (nlo - 1)) if j == self.byte else
                             8 + nlo + (k >> (8 - bit)) if j == self.byte + 1 else j)
        self.template = bytes(codes)
        self.lo = [bytes((b | x << bit) & 0xFF for x in range(nlo)) for b in range(256)]
        self.hi = [bytes((b | y) & 0xFF for y in range(nhi)).ljust(248 - nlo, b"\0")
                   for b in range(256)]
        self.index_mask = (entries - 1) << shift
        # _ramp[k] = k * stride: the shape of a linear table; as one integer for whole().
        self.ramp = array("Q", (k << shift for k in range(entries)))
        self.ramp_int = int.from_bytes(self.ramp, "little")
        self.ones = int.from_bytes(array("Q", [1] * entries), "little")   # digit 1 per slot


@lru_cache(maxsize=None)
def _shape(shift: int, entries: int) -> _Shape:
    """Built once per stride (a few ms): every walker of every check shares it."""
    return _Shape(shift, entries)


def for_arch(arch: Arch) -> Linear:
    """The tests for ``arch``, built once per arch object: a check makes a walker, and
    building them per walker was measurable in ``tests/bench/walk.py``'s targeted check."""
    test = _BY_ARCH.get(arch)
    if test is None:
        test = _BY_ARCH[arch] = Linear(arch)
    return test


class Linear:
    """The linear-run tests of one architecture's leaf levels."""

    def __init__(self, arch: Arch) -> None:
        self._leaf = arch.linear_leaf
        self._entries = arch.entries
        self._shapes = {lvl: _shape(arch.level_shift(lvl), arch.entries)
                        for lvl in arch.leaf_levels}

    def whole(self, raw: bytes, level: int) -> int:
        """v0 when all entries of the table page ``raw`` are one linear run of ``level``
        leaves, else 0."""
        v0 = int.from_bytes(raw[:8], "little")
        if not self._leaf(v0, level):
            return 0
        shape = self._shapes[level]
        if not v0 & shape.index_mask:
            b = shape.byte
            return v0 if raw == shape.template.translate(
                raw[:8] + shape.lo[raw[b]] + shape.hi[raw[b + 1]]) else 0
        last = v0 + shape.ramp[self._entries - 1]
        if last >= _U64 or int.from_bytes(raw[-8:], "little") != last:
            return 0
        return v0 if int.from_bytes(raw, "little") == v0 * shape.ones + shape.ramp_int else 0

    def part(self, arr: memoryview, level: int, i0: int, i1: int) -> int:
        """v0 when entries ``i0..i1`` (at least two) are one linear run of leaves, else 0."""
        n = i1 - i0 + 1
        v0 = arr[i0]
        if n < 2 or not self._leaf(v0, level):
            return 0
        shape = self._shapes[level]
        last = v0 + shape.ramp[n - 1]
        if arr[i1] != last or last >= _U64:
            return 0
        mask = (1 << (64 * n)) - 1
        ok = int.from_bytes(arr[i0:i1 + 1], "little") == v0 * (shape.ones & mask) + \
            (shape.ramp_int & mask)
        return v0 if ok else 0


_BY_ARCH: weakref.WeakKeyDictionary[Arch, Linear] = weakref.WeakKeyDictionary()
