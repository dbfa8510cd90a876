"""The range model: physical ranges and where each address space must map them.

A *source* (EFI memory map, a user's TOML file, the UV hub discovery) turns kernel state
into ``Range`` objects, each carrying its ``Expectation``s.  The checker only ever sees this
model, so a new source plugs in without touching it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from . import vocab
from .kernel import KernelFacts

DIRECT, IDENTITY, EFI_VA = "direct", "identity", "efi_va"
VA_RULES = (DIRECT, IDENTITY, EFI_VA)
# not a VA: a range source could not read its kernel state (the finding says why)
STATE = "state"
CACHE_ALIASES = {
    "uncached": vocab.UNCACHED,
    "any": None,
}
CACHE_MODES = vocab.CACHE_MODES


# What x86-64 allows (Intel SDM vol. 3 4.1.4, 4.5): physical addresses of at most 52 bits,
# and linear addresses canonical: bits 63..47 (4-level) or 63..56 (5-level) all equal.
PHYS_BITS = 52
PHYS_LIMIT = 1 << PHYS_BITS
_U64 = 1 << 64


def va_span_problem(va: int, size: int, levels: int) -> str:
    """Why ``[va, va + size)`` is no VA range x86-64 with ``levels``-level paging can map
    ("" when it can): it must be non-empty and lie within one canonical half."""
    half = 1 << (56 if levels == 5 else 47)
    end = va + size
    if size <= 0 or va < 0:
        return "is empty"
    if end <= half or (va >= _U64 - half and end <= _U64):
        return ""
    if end > _U64:
        return "passes the top of the address space (2^64)"
    return f"is not canonical with {levels}-level paging"


def cache_set(spec: object) -> Optional[frozenset[str]]:
    """Normalise a cache requirement: a mode, an alias, or a non-empty list of modes and
    aliases (None = any); anything else is a ``ValueError`` naming what was given."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, (list, tuple, set, frozenset)):
        raise ValueError(f"cache must be a mode or a list of modes, not {type(spec).__name__}")
    if not spec:
        raise ValueError('cache: an empty list allows no mode (use "any" for no requirement)')
    modes: set[str] = set()
    for s in spec:
        if not isinstance(s, str):
            raise ValueError(f"cache modes are strings, not {type(s).__name__}")
        if s in CACHE_ALIASES:
            alias = CACHE_ALIASES[s]
            if alias is None:
                return None
            modes |= alias
        elif s in CACHE_MODES:
            modes.add(s)
        else:
            raise ValueError(f"unknown cache mode {s[:20]!r} (use one of "
                             f"{', '.join(CACHE_MODES)}, uncached, any)")
    return frozenset(modes)


@dataclass(frozen=True)
class Expectation:
    """"``mm`` must map the range at ``va`` (by ``rule``) with these attributes"."""

    mm: str
    rule: str
    va: int
    cache: Optional[frozenset[str]] = None
    writable: Optional[bool] = None
    executable: Optional[bool] = None
    required: bool = True          # False: only observed (reported as info, never a failure)
    shared_from: Optional[str] = None  # efi_mm sees this VA through init_mm's copied slots
    why: str = ""
    # Non-empty: this expectation cannot hold whatever the tables say (e.g. rule efi_va for
    # a range no EFI runtime descriptor covers: there is no EFI VA), and this says why.  The
    # checker reports it as missing with this reason; ``va`` is then only a stand-in.
    unmet: str = ""


@dataclass(frozen=True)
class Range:
    """A physical range that firmware and/or kernel rely on."""

    name: str
    phys: int
    size: int
    source: str                    # vocab.SOURCES
    kind: str = ""                 # e.g. "MMIO", "RuntimeServicesCode", "LOCAL_MMR"
    blade: Optional[int] = None
    attrs: tuple[tuple[str, str], ...] = ()
    expectations: tuple[Expectation, ...] = field(default=())
    pnode: Optional[int] = None    # a UV segment's pnode (blade only where it has a hub)

    @property
    def end(self) -> int:
        return self.phys + self.size

    @property
    def label(self) -> str:
        return segment_label(self.name, self.pnode, self.blade)


def state_range(name: str, source: str, why: str) -> Range:
    """Kernel state a source could not read or trust, as a range of its own: no physical
    range (size 0, kind "unreadable") and one ``STATE`` expectation, which the checker
    reports as an "unreadable" warning saying ``why`` (the report's one line for it)."""
    exp = Expectation("init_mm", STATE, 0, required=False, why=f"{source} kernel state",
                      unmet=why)
    return Range(name, 0, 0, source, vocab.UNREADABLE, None, (("error", why),), (exp,))


def segment_label(name: str, pnode: Optional[int], blade: Optional[int]) -> str:
    """``MMR_HI[pnode 3, blade 1]``, ``MMR_HI[pnode 2]`` (no hub there), ``LOCAL_MMR``."""
    parts = ([f"pnode {pnode}"] if pnode is not None else []) + \
        ([f"blade {blade}"] if blade is not None else [])
    return f"{name}[{', '.join(parts)}]" if parts else name


def human_size(n: int) -> str:
    """Bytes in the largest exact binary unit (``32 MiB``), else ``n B`` / ``x.x MiB``."""
    for unit, sh in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << sh and n % (1 << sh) == 0:
            return f"{n >> sh} {unit}"
    return f"{n} B" if n < 1 << 10 else f"{n / (1 << 20):.1f} MiB"


def va_for(rule: str, phys: int, facts: KernelFacts, efi_va: Optional[int] = None) -> int:
    """Where ``rule`` says ``phys`` is mapped: direct map, 1:1, or the firmware's EFI VA."""
    if rule == DIRECT:
        return facts.page_offset_base + phys
    if rule == IDENTITY:
        return phys
    if rule == EFI_VA:
        if efi_va is None:
            raise ValueError("no EFI virtual address known for this range")
        return efi_va
    raise ValueError(f"unknown VA rule {rule!r} (use {', '.join(VA_RULES)})")


def overlaps(a_start: int, a_size: int, ranges: Iterable[Range]) -> list[Range]:
    """The ranges that share at least one byte with ``[a_start, a_start + a_size)``."""
    return [r for r in ranges if r.phys < a_start + a_size and a_start < r.end]
