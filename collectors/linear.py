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
"""
from __future__ import annotations

from array import array

from . import x86
from .x86 import ENTRIES, P, PMD, PSE, PTE, PUD

LEAFY = (PUD, PMD, PTE)
# _TEMPL[level][k] = k * level_size: the shape of a linear table, built once.
_TEMPL = {lvl: array("Q", (k * x86.level_size(lvl) for k in range(ENTRIES))) for lvl in LEAFY}
_LARGE_ALIGN = {PUD: (1 << 30) - 1, PMD: (1 << 21) - 1}
_RAMP = {lvl: int.from_bytes(t, "little") for lvl, t in _TEMPL.items()}
_ONES = int.from_bytes(array("Q", [1] * ENTRIES), "little")     # digit 1 in every slot
_U64 = 1 << 64


class _Shape:
    """The code template and translation pieces of one level's stride."""

    def __init__(self, shift: int) -> None:
        self.byte, bit = divmod(shift, 8)
        nlo, nhi = 1 << (8 - bit), 1 << (bit + 1)
        codes = bytearray()
        for k in range(ENTRIES):
            for j in range(8):
                codes.append(8 + (k & (nlo - 1)) if j == self.byte else
                             8 + nlo + (k >> (8 - bit)) if j == self.byte + 1 else j)
        self.template = bytes(codes)
        self.lo = [bytes((b | x << bit) & 0xFF for x in range(nlo)) for b in range(256)]
        self.hi = [bytes((b | y) & 0xFF for y in range(nhi)).ljust(248 - nlo, b"\0")
                   for b in range(256)]
        self.index_mask = (ENTRIES - 1) << shift


_SHAPES = {lvl: _Shape(x86.level_shift(lvl)) for lvl in LEAFY}


def _leaf_v0(v0: int, level: int) -> bool:
    """A present leaf at ``level`` whose huge page is aligned (else the slow path reports)."""
    if not v0 & P or (level != PTE and not v0 & PSE):
        return False
    return level == PTE or not v0 & _LARGE_ALIGN[level] & ~x86.PAT_LARGE & x86.PTE_PFN_MASK


def whole(raw: bytes, level: int) -> int:
    """v0 when all 512 entries of the table page ``raw`` are one linear run of ``level``
    leaves, else 0."""
    v0 = int.from_bytes(raw[:8], "little")
    if not v0 & P or (level != PTE and not (v0 & PSE and _leaf_v0(v0, level))):
        return 0
    shape = _SHAPES[level]
    if not v0 & shape.index_mask:
        b = shape.byte
        return v0 if raw == shape.template.translate(
            raw[:8] + shape.lo[raw[b]] + shape.hi[raw[b + 1]]) else 0
    last = v0 + _TEMPL[level][ENTRIES - 1]
    if last >= _U64 or int.from_bytes(raw[-8:], "little") != last:
        return 0
    return v0 if int.from_bytes(raw, "little") == v0 * _ONES + _RAMP[level] else 0


def part(arr: memoryview, level: int, i0: int, i1: int) -> int:
    """v0 when entries ``i0..i1`` (at least two) are one linear run of leaves, else 0."""
    n = i1 - i0 + 1
    v0 = arr[i0]
    if n < 2 or not _leaf_v0(v0, level):
        return 0
    last = v0 + _TEMPL[level][n - 1]
    if arr[i1] != last or last >= _U64:
        return 0
    mask = (1 << (64 * n)) - 1
    ok = int.from_bytes(arr[i0:i1 + 1], "little") == v0 * (_ONES & mask) + (_RAMP[level] & mask)
    return v0 if ok else 0
