"""Facts about the running/dumped kernel that every check needs, read once per target.

Each fact is taken from what the kernel actually has (a variable, a vmcoreinfo key), with
the fallback used only when the kernel lacks it; e.g. ``page_offset_base`` exists only
with CONFIG_RANDOMIZE_MEMORY (v4.8, "x86/mm: Implement ASLR for kernel memory regions") /
DYNAMIC_MEMORY_LAYOUT, ``physical_mask`` only with DYNAMIC_PHYSICAL_MASK (v4.17, "x86/mm:
Decouple dynamic __PHYSICAL_MASK from AMD SME"), ``__pte2cachemode_tbl`` since v3.19
("x86: Make page cache mode a real type").  What the facts mean to a walk (levels, entry
bits, cache modes) is the architecture's: ``KernelFacts.arch``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Optional, TypeVar

import drgn

from . import faults, x86
from .errors import DATA, TargetError, one_line
from .pagetable import TableReader, Walker
from .x86 import START_KERNEL_MAP

T = TypeVar("T")


def lookup(prog: drgn.Program, name: str) -> Optional[drgn.Object]:
    """The object ``name`` or None when this kernel has no such variable."""
    try:
        return prog[name]
    except (KeyError, LookupError):
        return None


def has_member(obj: drgn.Object, member: str) -> bool:
    """Whether a struct object has ``member`` (kernel layouts change across generations)."""
    try:
        obj.member_(member)
        return True
    except LookupError:
        return False


@dataclass
class KernelFacts:
    """Paging depth, physical mask, direct-map base and cache decoding of one kernel."""

    release: str
    levels: int
    page_offset_base: int
    phys_base: int
    phys_mask: int
    sme_me_mask: int
    cache: x86.CacheModes
    kaslr_offset: int
    vmcoreinfo: dict[str, str]
    notes: list[str] = field(default_factory=list)   # facts read with a fallback, and why

    @cached_property
    def arch(self) -> x86.X86_64:
        """This kernel's paging as the walker, checker and ptdump see it (``arch.Arch``)."""
        return x86.X86_64(self.levels, self.phys_mask, self.cache)

    def image_pa(self, va: int) -> int:
        """PA of a kernel-image address (``__pa_symbol``)."""
        return va - START_KERNEL_MAP + self.phys_base

    def direct_pa(self, va: int) -> int:
        """PA of a direct-map address (``__pa``)."""
        return va - self.page_offset_base

    def kernel_pa(self, va: int) -> int:
        """PA of a kernel pointer into the image or the direct map."""
        return self.image_pa(va) if va >= START_KERNEL_MAP else self.direct_pa(va)


def parse_vmcoreinfo(prog: drgn.Program) -> dict[str, str]:
    """VMCOREINFO as a dict (drgn exposes it as the special object ``VMCOREINFO``)."""
    try:
        raw = prog["VMCOREINFO"].string_().decode(errors="replace")
    except (KeyError, LookupError, drgn.FaultError):
        return {}
    out = {}
    for line in raw.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


def kernel_release(prog: drgn.Program) -> str:
    """``uname -r`` of the kernel, printable whatever bytes a corrupt dump holds there."""
    return one_line(prog["UTS_RELEASE"].string_().decode(errors="replace"), 80)


def _number(vmci: dict[str, str], key: str) -> int:
    """A VMCOREINFO number, 0 when absent or garbage (a corrupt note must not stop the
    check: every consumer has a safe meaning for 0)."""
    try:
        return int(vmci.get(key, "0"), 0)
    except ValueError:
        return 0


def _essential(what: str, read: Callable[[], T]) -> T:
    """A fact no check can do without (paging depth, the direct map's base, the KASLR
    offset): unreadable, the target is not usable (exit 65 with the cause), never a crash."""
    value, bad = faults.catch(read)
    if bad:
        raise TargetError(DATA, f"kernel state unreadable: {what} ({bad})")
    return value  # type: ignore[return-value]


def _value(prog: drgn.Program, name: str) -> Optional[int]:
    obj = lookup(prog, name)
    return None if obj is None else obj.value_()


def _page_offset_base(prog: drgn.Program) -> int:
    """``page_offset_base``, else drgn's own search for the direct map (kernels built
    without KASLR of memory have no such variable); a read fault goes to that search too."""
    pob, bad = faults.catch(lambda: _value(prog, "page_offset_base"))
    if pob is not None:
        return pob
    from _drgn import _linux_helper_direct_mapping_offset
    try:
        return _linux_helper_direct_mapping_offset(prog)
    except Exception as e:  # noqa: BLE001 - drgn raises a plain Exception when it finds none
        raise TargetError(DATA, "kernel state unreadable: page_offset_base "
                          f"({bad or 'no such variable'}) and the direct map not found "
                          f"({faults.why(e)})") from None


def _cache_modes(prog: drgn.Program, notes: list[str]) -> x86.CacheModes:
    """The kernel's PTE-bits -> cache-mode table (default PAT layout when it has none or it
    is unreadable; an entry that is no ``enum page_cache_mode`` is noted once)."""
    tbl = faults.attempt("__pte2cachemode_tbl (default Linux PAT layout assumed)",
                         lambda: _table(prog), notes, None)
    modes = x86.CacheModes(tbl)
    for i, m in enumerate(modes.table):
        if modes.name(m) == x86.BROKEN:
            notes.append(f"__pte2cachemode_tbl[{i}] holds {m}, which is no page_cache_mode "
                         f"(0-5): mappings through PAT index {i} are reported as cache mode "
                         f"'{x86.BROKEN}' (the kernel's word for it, cattr_name())")
    return modes


def _table(prog: drgn.Program) -> Optional[list[int]]:
    tbl = lookup(prog, "__pte2cachemode_tbl")
    if tbl is None:
        return None
    out = [int(x) for x in tbl.read_()]
    if len(out) != 8:
        raise ValueError(f"{len(out)} entries, not 8")
    return out


def read_facts(prog: drgn.Program) -> KernelFacts:
    """Collect the paging facts from memory (variables first, vmcoreinfo second).

    Facts with a safe fallback (``phys_base``, ``physical_mask``, ``sme_me_mask``, the
    cache-mode table) fall back with a note when unreadable; the rest are ``_essential``."""
    from drgn.helpers.linux.boot import kaslr_offset, pgtable_l5_enabled

    vmci = parse_vmcoreinfo(prog)
    notes: list[str] = []
    levels = 5 if _essential("paging depth", lambda: pgtable_l5_enabled(prog)) else 4
    pob = _page_offset_base(prog)
    phys_base = faults.attempt("phys_base (VMCOREINFO's taken)",
                               lambda: _value(prog, "phys_base"), notes, None)
    if phys_base is None:
        phys_base = _number(vmci, "NUMBER(phys_base)")
    phys_mask = faults.attempt("physical_mask (52 bits assumed)",
                               lambda: _value(prog, "physical_mask"), notes, None) \
        or (1 << 52) - 1
    sme = faults.attempt("sme_me_mask (VMCOREINFO's taken)",
                         lambda: _value(prog, "sme_me_mask"), notes, None) \
        or _number(vmci, "NUMBER(sme_mask)")
    cache = _cache_modes(prog, notes)
    release = _essential("UTS_RELEASE", lambda: kernel_release(prog))
    kaslr = _essential("the KASLR offset", lambda: kaslr_offset(prog))
    return KernelFacts(release, levels, pob, phys_base, phys_mask & ~sme, sme, cache, kaslr,
                       vmci, notes)


def make_walker(prog: drgn.Program, facts: KernelFacts,
                deadline: Optional[float] = None) -> Walker:
    """A walker over this program's physical memory, with a fresh table cache.

    ``deadline`` (a ``time.monotonic()`` value) makes every table read past it raise
    ``WalkTimeout``, so a daemon's check cannot run unbounded on a huge or changing table.
    """
    reader = TableReader(lambda pa, n: prog.read(pa, n, True), deadline=deadline)
    return Walker(reader, facts.arch)
