"""drgn types built on demand from BTF, plugged into drgn as a type finder.

drgn 0.3.0 reads only DWARF, but lets a program register its own type finder: drgn asks
it for ``struct mm_struct`` and gets a ``drgn.Type`` built from the BTF record, with
members built lazily (a member's type is made when first used), so opening a kernel costs
one index pass over the blob and each check touches only the few dozen types it reads.
Types are cached per id: the same BTF type is the same drgn type.
"""
from __future__ import annotations

from typing import Callable, Optional

import drgn

from . import btf
from .btf import BTF, BTFError

_QUALIFIER = {btf.CONST: drgn.Qualifiers.CONST, btf.VOLATILE: drgn.Qualifiers.VOLATILE,
              btf.RESTRICT: drgn.Qualifiers.RESTRICT}
# which BTF kinds answer a drgn lookup of each kind (a FWD only when nothing complete does)
_FOR_KIND = {drgn.TypeKind.STRUCT: (btf.STRUCT,), drgn.TypeKind.UNION: (btf.UNION,),
             drgn.TypeKind.ENUM: (btf.ENUM, btf.ENUM64), drgn.TypeKind.TYPEDEF: (btf.TYPEDEF,),
             drgn.TypeKind.INT: (btf.INT,), drgn.TypeKind.BOOL: (btf.INT,),
             drgn.TypeKind.FLOAT: (btf.FLOAT,)}


FINDER = "mmrwatch-btf"
MAX_DEPTH = 200          # nested pointer/typedef/const chains; real kernels need < 20


class BTFTypes:
    """The drgn types of one BTF blob for one program."""

    def __init__(self, prog: drgn.Program, blob: BTF) -> None:
        self.prog, self.btf = prog, blob
        self._cache: dict[int, drgn.Type] = {}
        self._building: set[int] = set()

    def register(self) -> None:
        """Make drgn ask this BTF for every type it cannot find elsewhere."""
        self.prog.register_type_finder(FINDER, self.find, enable_index=-1)

    def find(self, prog: drgn.Program, kinds: drgn.TypeKindSet, name: str,
             filename: Optional[str]) -> Optional[drgn.Type]:
        """drgn's type-finder callback (BTF has no file names: ``filename`` is ignored)."""
        for kind in kinds:
            for tid in self.btf.find(name, _FOR_KIND.get(kind, ())):
                t = self.type(tid)
                if t.kind == kind:
                    return t
            if kind in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
                fwd = self._forward(name, kind == drgn.TypeKind.UNION)
                if fwd is not None:
                    return fwd
        return None

    def type(self, tid: int) -> drgn.Type:
        """The drgn type of BTF type ``tid`` (0 is void)."""
        t = self._cache.get(tid)
        if t is not None:
            return t
        if tid == 0:
            return self.prog.void_type()
        if tid in self._building:
            raise BTFError(f"{self.btf.origin}: type {tid} refers to itself")
        if len(self._building) > MAX_DEPTH:
            raise BTFError(f"{self.btf.origin}: type {tid} is nested over {MAX_DEPTH} deep")
        self._building.add(tid)
        try:
            t = self._build(self.btf.record(tid))
        finally:
            self._building.discard(tid)
        self._cache[tid] = t
        return t

    def _lazy(self, tid: int) -> Callable[[], drgn.Type]:
        return lambda: self.type(tid)

    def _build(self, r: btf.Record) -> drgn.Type:
        p, k = self.prog, r.kind
        if k == btf.INT:
            enc = r.extra[0] >> 24
            if enc & btf.INT_BOOL:
                return p.bool_type(r.name, r.ref)
            return p.int_type(r.name, r.ref, bool(enc & btf.INT_SIGNED))
        if k == btf.FLOAT:
            return p.float_type(r.name, r.ref)
        if k == btf.PTR:
            return p.pointer_type(self.type(r.ref), 8)
        if k == btf.ARRAY:
            elem, _index, n = r.extra
            return p.array_type(self.type(elem), n)
        if k in (btf.STRUCT, btf.UNION):
            return self._compound(r)
        if k in (btf.ENUM, btf.ENUM64):
            values = self.btf.enum_values(r.id)
            signed = any(v < 0 for _, v in values)
            compat = p.int_type(("" if signed else "unsigned ") + ("long" if r.ref == 8 else "int"),
                                r.ref, signed)
            return p.enum_type(r.name or None, compat,
                               [drgn.TypeEnumerator(n, v) for n, v in values])
        if k == btf.FWD:
            return self._forward(r.name, r.kflag) or \
                (p.union_type if r.kflag else p.struct_type)(r.name, None, None)
        if k == btf.TYPEDEF:
            return p.typedef_type(r.name, self.type(r.ref))
        if k in _QUALIFIER:
            inner = self.type(r.ref)
            return inner.qualified(inner.qualifiers | _QUALIFIER[k])
        if k == btf.TYPE_TAG:
            return self.type(r.ref)
        if k == btf.FUNC:
            return self.type(r.ref)
        if k == btf.FUNC_PROTO:
            items = r.items(2)
            variadic = bool(items) and items[-1] == (0, 0)
            params = [drgn.TypeParameter(self._lazy(t), self.btf.string(n) or None)
                      for n, t in (items[:-1] if variadic else items)]
            return p.function_type(self.type(r.ref), params, variadic)
        raise BTFError(f"{self.btf.origin}: type {r.id} is a {btf.KIND_NAMES[k]}, not a type")

    def _compound(self, r: btf.Record) -> drgn.Type:
        members = []
        for name_off, tid, off in r.items(3):
            bits = off >> 24 if r.kflag else 0
            bit_offset = off & 0xFFFFFF if r.kflag else off
            name = self.btf.string(name_off) or None
            if bits:
                members.append(drgn.TypeMember(self._bitfield(tid, bits), name, bit_offset))
            else:
                members.append(drgn.TypeMember(self._lazy(tid), name, bit_offset))
        make = self.prog.union_type if r.kind == btf.UNION else self.prog.struct_type
        return make(r.name or None, r.ref, members)

    def _bitfield(self, tid: int, bits: int) -> Callable[[], drgn.Object]:
        return lambda: drgn.Object(self.prog, self.type(tid), bit_field_size=bits)

    def _forward(self, name: str, union: bool) -> Optional[drgn.Type]:
        """The complete definition of a forward-declared struct/union, when BTF has one."""
        for tid in self.btf.find(name, (btf.UNION if union else btf.STRUCT,)):
            return self.type(tid)
        return None
