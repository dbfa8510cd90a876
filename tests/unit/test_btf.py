"""The BTF reader and type finder (issue 13): BTF must answer exactly what DWARF answers.

Without DWARF, every layout mmrwatch reads comes from ``collectors.btf`` + ``btftypes``; a
wrong member offset there would silently read the wrong page-table root.  So the types the
collectors use are compared with drgn's own DWARF reading of the same Debian vmlinux, and
the reader is fed corrupt blobs, which must fail with one ``BTFError`` line (what the CLI
prints), never an IndexError, struct.error or RecursionError.
"""
from __future__ import annotations

import os
import struct
import subprocess

import drgn
import pytest

from mmrwatch.collectors import btf, kglobals
from mmrwatch.collectors.btftypes import BTFTypes

PLATFORM = drgn.Platform(drgn.Architecture.X86_64,
                         drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
K = drgn.TypeKind
COMPOUND = (K.STRUCT, K.UNION)
# Types the collectors reach from the declared globals and per-CPU variables; a tuple
# limits the comparison to the members read (task_struct is huge, rq is read for curr).
REACHED = dict.fromkeys([
    "struct mm_struct", "struct efi", "struct efi_memory_map", "struct printk_ringbuffer",
    "struct prb_desc_ring", "struct prb_data_ring", "struct prb_desc", "struct printk_info",
    "struct prb_data_blk_lpos", "struct cpumask", "struct addr_marker", "pgd_t", "atomic_t",
    "atomic_long_t", "struct tlb_state"]) | {
    "struct rq": ("curr",), "struct task_struct": ("comm", "pid", "mm", "active_mm")}
COMPARED = dict.fromkeys(kglobals.DECLARED.values()) | REACHED
# vlen items' width in u32 words, from btf.rst (not from btf.py: a shared table hides bugs)
WIDTH = {btf.STRUCT: 3, btf.UNION: 3, btf.ENUM: 2, btf.FUNC_PROTO: 2, btf.DATASEC: 3,
         btf.ENUM64: 3}


# --- synthetic blobs ------------------------------------------------------------------------
class Blob:
    """Header + type records + string table.  ``add`` returns the new type id; a str among
    the words is a name (interned), an int a raw offset; vlen defaults to the item count."""

    def __init__(self) -> None:
        self.strings, self.offs, self.recs = bytearray(b"\0"), {"": 0}, []

    def s(self, name) -> int:
        if isinstance(name, int):
            return name
        if name not in self.offs:
            self.offs[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        return self.offs[name]

    def add(self, kind: int, name="", ref: int = 0, *extra, vlen=None, kflag=0) -> int:
        words = [self.s(w) for w in extra]
        vlen = len(words) // WIDTH.get(kind, 1 << 30) if vlen is None else vlen
        self.recs.append(struct.pack(f"<3I{len(words)}I", self.s(name),
                                     kflag << 31 | kind << 24 | vlen, ref, *words))
        return len(self.recs)

    def bytes(self, **hdr: int) -> bytes:
        types = b"".join(self.recs)
        h = dict(magic=btf.MAGIC, version=1, hdr_len=24, type_off=0, type_len=len(types),
                 str_off=len(types), str_len=len(self.strings)) | hdr
        return struct.pack("<HBBIIIII", h["magic"], h["version"], 0, h["hdr_len"],
                           h["type_off"], h["type_len"], h["str_off"], h["str_len"]) \
            + types + bytes(self.strings)


def blob(*records, **hdr) -> bytes:
    """A blob of ``records`` (argument tuples of ``Blob.add``, or raw bytes)."""
    b = Blob()
    for r in records:
        if isinstance(r, bytes):
            b.recs.append(r)
        else:
            b.add(*r)
    return b.bytes(**hdr)


INT = (btf.INT, "int", 4, btf.INT_SIGNED << 24 | 32)
UINT = (btf.INT, "unsigned int", 4, 32)


def program(data: bytes) -> tuple[drgn.Program, BTFTypes]:
    prog = drgn.Program(PLATFORM)
    types = BTFTypes(prog, btf.BTF(data, "test"))
    types.register()
    return prog, types


def raises_one_line(call, *args) -> str:
    """What the CLI prints: a BTFError (drgn passes callback errors through), one line."""
    with pytest.raises(Exception) as ei:
        call(*args)
    e = ei.value
    assert isinstance(e, btf.BTFError), f"{type(e).__name__}: {e}"
    assert str(e) and "\n" not in str(e), repr(str(e))
    return str(e)


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("data, why", [
    (b"", "too short"),
    (blob(magic=0x1234), "magic 0x1234"),
    (blob(magic=0x9FEB), "big-endian"),                     # 0xEB9F written big-endian
    (blob(INT, version=2), "version 2"),
    (blob(INT, hdr_len=4096), "header length"),
    (blob(INT, type_len=400), "past"),
    (blob(INT, str_len=4096), "past"),
    (blob(INT, str_off=0, str_len=1), "string section"),    # starts with a type, not NUL
    (blob(struct.pack("<2I", 0, btf.INT << 24)), "truncated type record"),  # 2 of 3 words
    (blob((31, "x", 4)), "unknown kind 31"),
], ids=["empty", "magic", "big-endian", "version", "hdr-len", "types-past-end",
        "strings-past-end", "strings-no-nul", "short-record", "kind-31"])
def test_corrupt_blob_is_one_line_btferror(data, why):
    assert why in raises_one_line(btf.BTF, data, "test")


def test_truncated_last_record():
    """A struct announcing two members with words for one: caught by the index pass."""
    b = Blob()
    b.add(*INT)
    b.add(btf.STRUCT, "s", 8, "a", 1, 0, vlen=2)
    assert "runs past" in raises_one_line(btf.BTF, b.bytes())


def test_member_type_id_past_the_end():
    """A member's type is built lazily, when drgn first needs it: the error must surface
    there as the BTFError itself."""
    prog, _ = program(blob(INT, (btf.STRUCT, "s", 4, "x", 99, 0)))
    t = prog.type("struct s")                # the struct itself is fine
    assert "99" in raises_one_line(lambda: t.member("x").type)


def test_typedef_loop_is_btferror_not_recursion():
    prog, types = program(blob((btf.TYPEDEF, "A", 2), (btf.TYPEDEF, "B", 1)))
    raises_one_line(prog.type, "A")
    raises_one_line(prog.type, "B")
    raises_one_line(types.btf.resolve, 1)


def test_a_long_chain_is_btferror_not_recursion():
    """5000 CONSTs over an int: nested deeper than any kernel, and no RecursionError."""
    b = Blob()
    b.add(*INT)
    for i in range(5000):
        b.add(btf.CONST, "", i + 1)
    b.add(btf.TYPEDEF, "deep", 5001)
    prog, _ = program(b.bytes())
    assert "nested over" in raises_one_line(prog.type, "deep")


def test_string_offset_outside_the_string_section():
    prog, types = program(blob(INT, (btf.STRUCT, "s", 4, 1000, 1, 0), (btf.TYPEDEF, 2000, 1)))
    assert "outside the string section" in raises_one_line(prog.type, "struct s")
    assert "outside the string section" in raises_one_line(types.btf.record, 3)


# --- a synthetic blob that is right ---------------------------------------------------------
def test_synthetic_types():
    """Every kind the kernel's types use, decoded into drgn types the way DWARF would."""
    b = Blob()
    i, u = b.add(*INT), b.add(*UINT)                                         # 1, 2
    pint = b.add(btf.PTR, "", i)
    fwd = b.add(btf.FWD, "s")
    pfwd = b.add(btf.PTR, "", fwd)
    arr = b.add(btf.ARRAY, "", 0, i, u, 4)
    td = b.add(btf.TYPEDEF, "myint", i)
    cst = b.add(btf.CONST, "", td)
    s = b.add(btf.STRUCT, "s", 40, "a", i, 0, "flags", u, 3 << 24 | 37, "next", pfwd, 64,
              "arr", arr, 128, "c", cst, 256, kflag=1)
    es = b.add(btf.ENUM, "e_signed", 4, "NEG", 0xFFFFFFFF, "POS", 1, kflag=1)
    eu = b.add(btf.ENUM, "e_unsigned", 4, "BIG", 0xFFFFFFFF)
    e64 = b.add(btf.ENUM64, "e64", 8, "M2", 0xFFFFFFFE, 0xFFFFFFFF, kflag=1)
    proto = b.add(btf.FUNC_PROTO, "", i, "fmt", pint, 0, 0)                  # (fmt, ...)
    func = b.add(btf.FUNC, "logf", proto, vlen=1)
    var = b.add(btf.VAR, "counter", u, 1)
    b.add(btf.DATASEC, btf.PERCPU_SECTION, 4, var, 0, 4)
    other = b.add(btf.VAR, "not_percpu", i, 1)
    b.add(btf.DATASEC, ".data", 4, other, 0, 4)
    prog, types = program(b.bytes())

    t = prog.type("struct s")
    assert t.size == 40 and [m.name for m in t.members] == ["a", "flags", "next", "arr", "c"]
    assert [m.bit_offset for m in t.members] == [0, 37, 64, 128, 256]
    assert [m.bit_field_size for m in t.members] == [None, 3, None, None, None]
    assert t.member("flags").type.type_name() == "unsigned int"
    assert not t.member("flags").type.is_signed and t.member("a").type.is_signed
    nxt = t.member("next").type
    assert nxt.kind == K.POINTER and nxt.size == 8
    assert nxt.type.size == 40 and types.type(fwd) is types.type(s)  # FWD: the definition
    a = t.member("arr").type
    assert a.kind == K.ARRAY and a.length == 4 and a.type_name() == "int [4]"
    c = t.member("c").type
    assert c.qualifiers == drgn.Qualifiers.CONST and c.type_name() == "const myint"
    assert c.kind == K.TYPEDEF and c.type.type_name() == "int"
    assert drgn.sizeof(prog.type("myint")) == 4

    def values(name):
        return [(e.name, e.value) for e in prog.type(name).enumerators]
    assert values("enum e_signed") == [("NEG", -1), ("POS", 1)]
    assert values("enum e_unsigned") == [("BIG", 0xFFFFFFFF)]
    assert values("enum e64") == [("M2", -2)]
    assert prog.type("enum e_signed").type.is_signed
    assert not prog.type("enum e_unsigned").type.is_signed
    assert drgn.sizeof(prog.type("enum e64")) == 8
    assert types.btf.enumerator("NEG") == (es, -1)
    assert types.btf.enumerator("BIG") == (eu, 0xFFFFFFFF)
    assert types.btf.enumerator("M2") == (e64, -2)
    assert types.btf.enumerator("nope") is None

    f = types.type(proto)
    assert f.kind == K.FUNCTION and f.is_variadic and f.type.type_name() == "int"
    assert [(p.name, p.type.type_name()) for p in f.parameters] == [("fmt", "int *")]
    assert types.type(func) is f
    assert types.btf.percpu_variables() == {"counter": u}
    assert types.btf.resolve(cst).kind == btf.INT
    assert types.btf.count == len(b.recs) + 1                # void and every record


# --- the Debian kernel: BTF against DWARF ---------------------------------------------------
def _debian_vmlinux() -> str:
    """The cached Debian vmlinux; locally a skip when it is not cached (no 930 MB download
    from a unit test), in CI provisioned like every other artefact: never a skip."""
    from tests.bed.cache import cache_root, cached
    from tests.bed.kernels import debian_abi, debian_cache_name, debian_kernel
    if not os.environ.get("CI"):
        try:
            abi = debian_abi()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"cannot tell the current Debian kernel ABI: {e}")
        if not cached(debian_cache_name(abi)):
            pytest.skip(f"Debian {abi} vmlinux not cached in {cache_root()} "
                        "(python -m tests.bed.kernels side provisions it)")
    return str(debian_kernel().vmlinux)


@pytest.fixture(scope="module")
def kernel():
    """(DWARF program, BTF program, BTFTypes) of one vmlinux, without a core dump.

    drgn 0.3's load_debug_info ignores a file that no loaded module claims, and a vmlinux
    cannot be the main module (no loadable segment holds its program headers), so DWARF
    is loaded as an extra module: types only, which is all this compares."""
    vmlinux = _debian_vmlinux()
    dwarf = drgn.Program(PLATFORM)
    mod = dwarf.extra_module(vmlinux, create=True)
    mod.try_file(vmlinux, force=True)
    assert mod.debug_file_status == drgn.ModuleFileStatus.HAVE, vmlinux
    with open(vmlinux, "rb") as f:
        data = btf.from_elf(f, vmlinux)
    prog = drgn.Program(PLATFORM)
    types = BTFTypes(prog, btf.BTF(data, vmlinux))
    types.register()
    kglobals.KernelObjects(types).register()          # constants: prog.constant()
    return dwarf, prog, types


def _sizeof(t: drgn.Type):
    try:
        return drgn.sizeof(t)
    except TypeError:                    # void, functions, incomplete arrays and structs
        return None


def _strip(t: drgn.Type) -> drgn.Type:
    t = t.unqualified()
    while t.kind == K.TYPEDEF:           # atomic_long_t = atomic64_t = struct {...}
        t = t.type.unqualified()
    return t


def _members(t: drgn.Type, base: int = 0):
    """Members as code names them: anonymous structs/unions flattened, offsets absolute."""
    for m in t.members or ():
        if m.name is None and _strip(m.type).kind in COMPOUND:
            yield from _members(_strip(m.type), base + m.bit_offset)
        else:
            yield m, base + m.bit_offset


def _flex(name: str, size):
    """BTF has one encoding (nelems 0) for ``T x[0]`` and ``T x[]``, which DWARF tells
    apart: both compare as ``T []`` of no size."""
    return (name[:-3] + "[]", None) if name.endswith("[0]") else (name, size)


def layout(t: drgn.Type, only=None, depth: int = 1, path: str = "") -> dict:
    """{path: facts} of ``t`` and, ``depth`` levels down, of its named members' types."""
    path = path or t.type_name()
    out = {path: (t.kind.name, _sizeof(t))}
    if t.kind == K.TYPEDEF:
        out[path + " ="] = (t.type.type_name(), _sizeof(t.type))
    for m, off in _members(_strip(t)) if _strip(t).kind in COMPOUND else ():
        if only is not None and m.name not in only:
            continue
        mt, key = m.type, f"{path}.{m.name}"
        out[key] = (off, m.bit_field_size) + _flex(mt.type_name(), _sizeof(mt))
        if _strip(mt).kind == K.INT:
            out[key + " signed"] = _strip(mt).is_signed
        if depth and m.name and mt.unqualified().kind in COMPOUND + (K.TYPEDEF,):
            out.update(layout(mt.unqualified(), None, depth - 1, key + ":"))
    return out


def assert_same(want: drgn.Type, got: drgn.Type, only=None) -> None:
    a, b = layout(want, only), layout(got, only)
    diff = [f"  {k}: DWARF {a.get(k, '-')} BTF {b.get(k, '-')}"
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    assert not diff, f"{want.type_name()}: {len(diff)} differences:\n" + "\n".join(diff[:40])


@pytest.mark.parametrize("spelling", sorted(COMPARED))
def test_btf_layout_equals_dwarf(kernel, spelling):
    """Each DECLARED spelling and reached type: BTF answers it, with DWARF's layout."""
    dwarf, prog, _ = kernel
    try:
        want = dwarf.type(spelling)
    except LookupError:                  # UV types: Debian's kernel is built without UV
        with pytest.raises(LookupError):     # absent from BTF too, as kglobals expects
            prog.type(spelling)
        return
    got = prog.type(spelling)
    assert_same(want, got, REACHED.get(spelling))
    if want.kind in (K.ARRAY, K.POINTER):    # the element / pointee is what the code reads
        assert_same(want.type, got.type)


@pytest.mark.parametrize("var", ["cpu_tlbstate", "runqueues"])
def test_percpu_variable_types(kernel, var):
    """Per-CPU variables are the only variables BTF has: their types must be DWARF's."""
    dwarf, _, types = kernel
    want = dwarf.variable(var).type_
    got = types.type(types.btf.percpu_variables()[var])
    assert got.type_name() == want.type_name()
    assert_same(want, got, REACHED.get(want.type_name()))


@pytest.mark.parametrize("constant", ["desc_committed", "desc_finalized", "LOG_CONT"])
def test_enumerators(kernel, constant):
    """uvlog and drgn's printk helper test descriptor states and LOG_CONT by value; the enum
    is found through the constant (``enum log_flags`` is ``enum printk_info_flags`` in
    later kernels, this one included)."""
    dwarf, prog, types = kernel
    enum = dwarf.constant(constant).type_
    want = [(e.name, e.value) for e in enum.enumerators]
    assert [(e.name, e.value) for e in prog.type(enum.type_name()).enumerators] == want
    value = dwarf.constant(constant).value_()
    assert types.btf.enumerator(constant)[1] == value
    assert prog.constant(constant).value_() == value
    assert prog.constant(constant).type_.type_name() == enum.type_name()
