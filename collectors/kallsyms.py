"""The kernel's own kallsyms, decoded from memory into one names blob and searched on demand.

mmrwatch asks for a few dozen symbols by name; a drgn ``SymbolIndex`` of all ~100k kernel
symbols costs ~0.35 s and ~9 MiB to build (drgn 0.3.0's loader), most of a report without
DWARF.  Here the compressed names (``kallsyms_names``, expanded through
``kallsyms_token_table``/``_index``, as ``kallsyms_expand_symbol()`` does) become one
newline-separated blob, a lookup by name is one regex search of it (remembered), and an
address is computed only for the symbols found (``kallsyms_sym_address()``).  kallsyms is
sorted by address, so a symbol's size is the distance to the next entry and an address
lookup is a binary search over entry numbers.

Layouts handled (v6.0 .. v6.12, where VMCOREINFO carries the locations, commit
f09bddbd8661): 1-byte name lengths, and 2-byte "big" ones (v6.1 73bbb94466fd "kallsyms:
support "big" kernel symbols"); base-relative offsets, with absolute per-CPU entries
(x86-64 SMP's --absolute-percpu: negative offsets relative to ``kallsyms_relative_base - 1``,
non-negative ones absolute).  Anything else (v7.x dropped ``kallsyms_relative_base``) is
``None`` here, and the caller uses drgn's own loader.
"""
from __future__ import annotations

from array import array
from bisect import bisect_right
from typing import Optional

import drgn

MAX_NAMES = 64 << 20
MAX_TEXT = 64 << 20
_NM_BYTES = frozenset(b"tTdDbBrRaAvVwWgGnNsSuUiI")     # nm(1) type letters


class KallsymsTable:
    """A drgn symbol finder over decoded kallsyms (``find`` is the callback)."""

    def __init__(self, text: bytes, starts: array, offsets: array, base: int,
                 absolute_percpu: bool) -> None:
        self._text, self._starts, self._offsets = text, starts, offsets
        self._base, self._abs = base, absolute_percpu
        self._by_name: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._offsets)

    def address(self, i: int) -> int:
        off = self._offsets[i]
        if not self._abs:
            return (self._base + (off & 0xFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        return off if off >= 0 else (self._base - 1 - off) & 0xFFFFFFFFFFFFFFFF

    def _entry(self, i: int) -> tuple[str, str]:
        """(nm type letter, name) of entry ``i``."""
        raw = self._text[self._starts[i]:self._starts[i + 1] - 1]
        return chr(raw[0]), raw[1:].decode("ascii", "replace")

    def _symbol(self, i: int) -> drgn.Symbol:
        from drgn.helpers.linux.kallsyms import _nm_type_to_binding_kind
        typ, name = self._entry(i)
        addr = self.address(i)
        nxt = self.address(i + 1) if i + 1 < len(self) else addr     # as drgn's loader
        nxt = max(nxt, addr)
        binding, kind = _nm_type_to_binding_kind(typ)
        return drgn.Symbol(name, addr, nxt - addr, binding, kind)

    def lookup(self, name: str) -> list[int]:
        """Entry numbers of the symbols called ``name`` (one search of the blob, remembered)."""
        hit = self._by_name.get(name)
        if hit is None:
            text, needle, hit = self._text, name.encode() + b"\n", []
            pos = text.find(needle, 2)
            while pos >= 0:              # a hit counts when it is a whole entry's name
                if text[pos - 2] == 10 and text[pos - 1] in _NM_BYTES:
                    hit.append(bisect_right(self._starts, pos - 1) - 1)
                pos = text.find(needle, pos + 1)
            self._by_name[name] = hit
        return hit

    def _at(self, address: int) -> Optional[int]:
        """The entry covering ``address`` (binary search: kallsyms is address-sorted)."""
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.address(mid) <= address:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1 if lo else None

    def find(self, prog: drgn.Program, name: Optional[str], address: Optional[int],
             one: bool) -> list[drgn.Symbol]:
        """drgn's symbol-finder callback."""
        if name is not None:
            out = [self._symbol(i) for i in self.lookup(name)]
            if address is not None:
                out = [s for s in out if s.address <= address < s.address + max(s.size, 1)]
        elif address is not None:
            i = self._at(address)
            out = [] if i is None else [self._symbol(i)]
            out = [s for s in out if s.address <= address < s.address + max(s.size, 1)]
        else:
            out = [self._symbol(i) for i in range(len(self))]
        return out[:1] if one else out

    __call__ = find


def decode(prog: drgn.Program, syms: dict[str, int]) -> Optional[KallsymsTable]:
    """The kallsyms table located by VMCOREINFO's ``syms``; None for layouts not handled."""
    need = ("kallsyms_names", "kallsyms_token_table", "kallsyms_token_index",
            "kallsyms_num_syms", "kallsyms_offsets", "kallsyms_relative_base")
    if not all(n in syms for n in need):
        return None
    n = prog.read_u32(syms["kallsyms_num_syms"])
    base = prog.read_u64(syms["kallsyms_relative_base"])
    index = array("H", prog.read(syms["kallsyms_token_index"], 512))
    table = prog.read(syms["kallsyms_token_table"], max(index) + 256)
    tokens = []
    for off in index:
        end = table.find(b"\0", off)
        tokens.append(table[off:end] if end >= 0 else b"")
    span = syms["kallsyms_token_table"] - syms["kallsyms_names"]
    # each entry is a length byte and at least one token; tokens are short (the kernel's
    # compressor builds them from pairs): garbage must not turn into gigabytes of names
    if not 0 < span <= MAX_NAMES or not 0 < n <= span // 2 or max(map(len, tokens)) > 64:
        return None
    blob = prog.read(syms["kallsyms_names"], span)
    offsets = array("i", prog.read(syms["kallsyms_offsets"], 4 * n))
    try:
        return _expand(blob, tokens, n, offsets, base)
    except IndexError:                 # names run past kallsyms_names: garbage
        return None


def _expand(blob: bytes, tokens: list[bytes], n: int, offsets: array,
            base: int) -> Optional[KallsymsTable]:
    """``kallsyms_expand_symbol()`` for every entry, into one newline-separated blob."""
    parts, starts, pos, at = [b""], array("I"), 0, 1
    join = b"".join
    for _ in range(n):
        ln = blob[pos]
        if ln & 0x80:
            ln = (ln & 0x7F) | blob[pos + 1] << 7
            pos += 2
        else:
            pos += 1
        name = join([tokens[c] for c in blob[pos:pos + ln]])
        if not name or at > MAX_TEXT:
            return None
        starts.append(at)
        parts.append(name)
        at += len(name) + 1
        pos += ln
    starts.append(at)
    text = b"\n".join(parts) + b"\n"
    return KallsymsTable(text, starts, offsets, base, bool(offsets) and min(offsets) < 0)
