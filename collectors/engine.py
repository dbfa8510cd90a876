"""One check, end to end: target -> address spaces -> ranges -> walk -> findings.

Range *sources* are plain callables ``source(ctx) -> list[Range]``; the EFI memory map and
the user's ranges file are two of them, the UV hub discovery plugs in the same way.  One
``TableReader`` serves every walk of a check, so tables shared between efi_mm and init_mm
are read once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import drgn

from . import efi, faults, userranges, uv
from .check import SEVERITY_ORDER, Checker, Finding, worst
from .kernel import KernelFacts, make_walker, read_facts
from .mm import EFI_MM, INIT_MM, AddressSpace, address_spaces
from .pagetable import WalkError
from .ranges import Range, state_range
from .target import Target


@dataclass
class Context:
    """What range sources may look at."""

    prog: drgn.Program
    facts: KernelFacts
    spaces: dict[str, AddressSpace]
    efi_descs: list[efi.Descriptor]
    notes: list[str] = field(default_factory=list)
    summaries: dict[str, dict] = field(default_factory=dict)   # per source, for reports
    memmap_fault: str = ""          # why efi.memmap could not be read ("" when it could)


RangeSource = Callable[[Context], list[Range]]


@dataclass
class CheckResult:
    """Everything a report or an exporter needs from one check."""

    target: Target
    facts: KernelFacts
    spaces: dict[str, AddressSpace]
    ranges: list[Range]
    findings: list[Finding]
    walk_errors: list[WalkError]
    notes: list[str]
    efi_descs: list[efi.Descriptor]
    seconds: float
    table_reads: int
    summaries: dict[str, dict] = field(default_factory=dict)
    _by_range: Optional[dict[int, list[Finding]]] = field(default=None, repr=False)

    @property
    def verdict(self) -> str:
        return worst(f.severity for f in self.findings)

    def findings_of(self, rng: Range) -> list[Finding]:
        """The findings of one range, in check order (grouped once, on first use)."""
        if self._by_range is None:
            self._by_range = {}
            for f in self.findings:
                self._by_range.setdefault(id(f.range), []).append(f)
        return self._by_range.get(id(rng), [])

    def severity_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in SEVERITY_ORDER}
        for f in self.findings:
            counts[f.severity] += 1
        return counts


def efi_source(ctx: Context) -> list[Range]:
    """EFI runtime regions from ``efi.memmap`` (garbage descriptors reported, not checked;
    an unreadable map is one "unreadable" finding)."""
    if ctx.memmap_fault:
        return [state_range("efi-memmap-state", "efi-memmap",
                            f"efi-memmap state unreadable: {ctx.memmap_fault}")]
    for d in ctx.efi_descs:
        bad = d.problem(ctx.facts.levels)
        if bad:
            ctx.notes.append(f"EFI memory map: a descriptor at PA 0x{d.phys:x} is garbage "
                             f"({bad}): not checked")
    return efi.runtime_ranges(ctx.prog, ctx.facts, ctx.efi_descs)
efi_source.label = "efi-memmap"      # type: ignore[attr-defined]


def _sane(ctx: Context) -> list[efi.Descriptor]:
    """The descriptors other sources may rely on (garbage ones are efi_source's to report)."""
    return [d for d in ctx.efi_descs if not d.problem(ctx.facts.levels)]


def uv_source(ctx: Context) -> list[Range]:
    """UV hub MMR ranges (none on non-UV kernels, non-UV hardware and hubless systems)."""
    sysm = uv.discover(ctx.prog)
    ctx.summaries["uv"] = sysm.summary()
    out = uv.ranges(sysm, ctx.facts, _sane(ctx), ctx.spaces[EFI_MM].old_memmap)
    ctx.notes.extend(sysm.notes)
    return out
uv_source.label = "uv"               # type: ignore[attr-defined]


def file_source(path: Path) -> RangeSource:
    """Ranges from a TOML file, validated now (before any kernel is opened)."""
    specs = userranges.load(path)

    def source(ctx: Context) -> list[Range]:
        descs = _sane(ctx)
        return userranges.to_ranges(specs, ctx.facts, lambda pa: efi.efi_va_of(descs, pa))
    source.label = "config"          # type: ignore[attr-defined]
    return source


def _collect(src: RangeSource, ctx: Context) -> list[Range]:
    """One source's ranges; when it cannot read its state (``faults.is_kernel_fault``), a
    note, an "unreadable" summary and a state range saying so: every other source and
    range is still checked.  The user's ranges file keeps its own error and exit code."""
    label = getattr(src, "label", getattr(src, "__name__", "source"))
    try:
        return src(ctx)
    except userranges.RangesError:
        raise
    except Exception as e:                     # noqa: BLE001 - filtered by is_kernel_fault
        if not faults.is_kernel_fault(e):
            raise
        why = faults.why(e)
        ctx.notes.append(f"{label}: cannot read its state from the kernel ({why}): its "
                         "ranges are not checked")
        ctx.summaries[label] = {"state": "unreadable", "reason": why}
        return [state_range(f"{label}-state", label, f"{label} state unreadable: {why}")]


def default_sources(ranges_file: Optional[Path] = None) -> list[RangeSource]:
    """The sources a plain ``mmrwatch report`` uses."""
    sources: list[RangeSource] = [uv_source, efi_source]
    if ranges_file is not None:
        sources.append(file_source(ranges_file))
    return sources


def context(target: Target) -> Context:
    """Kernel facts, address spaces and the EFI map of one target."""
    prog = target.prog
    facts = read_facts(prog)
    spaces = address_spaces(prog, facts)
    notes = list(facts.notes)
    descs, bad = faults.catch(lambda: efi.read_memmap(prog))
    if bad:
        notes.append(f"efi-memmap: the EFI memory map is not readable ({bad}): EFI runtime "
                     "regions are not checked")
    return Context(prog, facts, spaces, descs or [], notes, memmap_fault=bad)


def run_check(target: Target, sources: list[RangeSource],
              ctx: Optional[Context] = None, deadline: Optional[float] = None) -> CheckResult:
    """Collect every source's ranges and check them against both address spaces.

    With ``deadline`` (``time.monotonic()``) the walks raise ``WalkTimeout`` past it.
    """
    t0 = time.monotonic()
    ctx = ctx or context(target)
    ranges: list[Range] = []
    for src in sources:
        ranges.extend(_collect(src, ctx))
    walker = make_walker(ctx.prog, ctx.facts, deadline)
    findings = Checker(ctx.facts, ctx.spaces, walker).check(ranges)
    return CheckResult(target, ctx.facts, ctx.spaces, ranges, findings, list(walker.errors),
                       ctx.notes, ctx.efi_descs, time.monotonic() - t0, walker.reader.reads,
                       ctx.summaries)


def confirm(res: CheckResult, deadline: Optional[float] = None) -> int:
    """Re-walk every problem finding with a fresh table cache; keep only what repeats.

    A live kernel changes its page tables while we read them (a table freed and reused
    between two reads looks like a hole), so a live problem is reported only when a second,
    independent walk sees it too; the second walk's finding replaces the first.  Returns
    how many problems were not confirmed.  Pointless (and skipped) on a dump.
    """
    if not res.target.live:
        return 0
    walker = make_walker(res.target.prog, res.facts, deadline)
    checker = Checker(res.facts, res.spaces, walker)
    dropped = 0
    for i, f in enumerate(res.findings):
        if not f.problem:
            continue
        again = checker.check_one(f.range, f.exp)
        dropped += not again.problem
        res.findings[i] = again           # the fresher of two views
    res._by_range = None
    res.walk_errors.extend(walker.errors)
    return dropped
