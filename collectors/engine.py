"""One check, end to end: target -> address spaces -> ranges -> walk -> findings.

Range *sources* are plain callables ``source(ctx) -> Collected``; the EFI memory map and
the user's ranges file are two of them, the UV hub discovery plugs in the same way.  Data
flows one way: the context is read-only, each source *returns* its ranges, notes and
summary, and ``run_check`` alone puts them together (so a source cannot see, or spoil,
what another found).  One ``TableReader`` serves every walk of a check, so tables shared
between efi_mm and init_mm are read once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import drgn

from . import efi, faults, userranges, uv
from .check import SEVERITY_ORDER, Checker, Finding, worst
from .kernel import KernelFacts, make_walker, read_facts
from .mm import EFI_MM, AddressSpace, address_spaces
from .pagetable import WalkError
from .ranges import Range, state_range
from .target import Target
from .vocab import SOURCE_CONFIG, SOURCE_EFI, SOURCE_UV, UNREADABLE


@dataclass(frozen=True)
class Context:
    """What range sources may look at (read-only: a source returns what it found)."""

    prog: drgn.Program
    facts: KernelFacts
    spaces: dict[str, AddressSpace]
    efi_descs: list[efi.Descriptor]
    notes: tuple[str, ...] = ()     # the kernel's and the EFI map's, before any source's
    memmap_fault: str = ""          # why efi.memmap could not be read ("" when it could)

    @cached_property
    def sane_descs(self) -> list[efi.Descriptor]:
        """The descriptors other sources may rely on (garbage ones are efi_source's to
        report), judged once per check however many sources ask."""
        return [d for d in self.efi_descs if not d.problem(self.facts.levels)]


@dataclass(frozen=True)
class Collected:
    """What one source found: its ranges, its notes for the report and, for a source with
    a state of its own (UV), the summary reports show for it."""

    ranges: list[Range]
    notes: list[str] = field(default_factory=list)
    summary: Optional[dict] = None


RangeSource = Callable[[Context], Collected]


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
    unconfirmed: int = 0        # live problems a second walk did not see (``confirm``)

    @property
    def verdict(self) -> str:
        return worst(f.severity for f in self.findings)

    @cached_property
    def _by_range(self) -> dict[int, list[Finding]]:
        """Findings grouped by range, once per result (``confirm`` makes a new result, so
        a grouping never outlives the findings it was made from)."""
        out: dict[int, list[Finding]] = {}
        for f in self.findings:
            out.setdefault(id(f.range), []).append(f)
        return out

    def findings_of(self, rng: Range) -> list[Finding]:
        """The findings of one range, in check order."""
        return self._by_range.get(id(rng), [])

    def severity_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in SEVERITY_ORDER}
        for f in self.findings:
            counts[f.severity] += 1
        return counts


def efi_source(ctx: Context) -> Collected:
    """EFI runtime regions from ``efi.memmap`` (garbage descriptors reported, not checked;
    an unreadable map is one "unreadable" finding)."""
    if ctx.memmap_fault:
        return Collected([state_range(f"{SOURCE_EFI}-state", SOURCE_EFI,
                                      f"{SOURCE_EFI} state unreadable: {ctx.memmap_fault}")])
    out = efi.runtime_ranges(ctx.prog, ctx.facts, ctx.efi_descs)
    notes = [f"EFI memory map: a descriptor at PA 0x{d.phys:x} is garbage ({bad}): not checked"
             for d in ctx.efi_descs for bad in [d.problem(ctx.facts.levels)] if bad]
    return Collected(out, notes)
efi_source.label = SOURCE_EFI        # type: ignore[attr-defined]


def uv_source(ctx: Context) -> Collected:
    """UV hub MMR ranges (none on non-UV kernels, non-UV hardware and hubless systems)."""
    sysm = uv.discover(ctx.prog)
    out, notes = uv.ranges(sysm, ctx.facts, ctx.sane_descs, ctx.spaces[EFI_MM].old_memmap)
    return Collected(out, sysm.notes + notes, sysm.summary())
uv_source.label = SOURCE_UV          # type: ignore[attr-defined]


def file_source(path: Path) -> RangeSource:
    """Ranges from a TOML file, validated now (before any kernel is opened)."""
    specs = userranges.load(path)

    def source(ctx: Context) -> Collected:
        descs = ctx.sane_descs
        return Collected(userranges.to_ranges(specs, ctx.facts,
                                              lambda pa: efi.efi_va_of(descs, pa)))
    source.label = SOURCE_CONFIG     # type: ignore[attr-defined]
    return source


def label_of(src: RangeSource) -> str:
    """The name a source's summary, notes and state range go by."""
    return getattr(src, "label", getattr(src, "__name__", "source"))


def _collect(src: RangeSource, ctx: Context) -> Collected:
    """One source's findings; when it cannot read its state (``faults.is_kernel_fault``), a
    note, an "unreadable" summary and a state range saying so: every other source and
    range is still checked.  The user's ranges file keeps its own error and exit code."""
    label = label_of(src)
    try:
        return src(ctx)
    except userranges.RangesError:
        raise
    except Exception as e:                     # noqa: BLE001 - filtered by is_kernel_fault
        if not faults.is_kernel_fault(e):
            raise
        why = faults.why(e)
        return Collected(
            [state_range(f"{label}-state", label, f"{label} state unreadable: {why}")],
            [f"{label}: cannot read its state from the kernel ({why}): its ranges are not "
             "checked"],
            {"state": UNREADABLE, "reason": why})


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
    return Context(prog, facts, spaces, descs or [], tuple(notes), memmap_fault=bad)


def run_check(target: Target, sources: list[RangeSource],
              ctx: Optional[Context] = None, deadline: Optional[float] = None) -> CheckResult:
    """Collect every source's ranges and check them against both address spaces.

    With ``deadline`` (``time.monotonic()``) the walks raise ``WalkTimeout`` past it.
    """
    t0 = time.monotonic()
    ctx = ctx or context(target)
    ranges: list[Range] = []
    notes = list(ctx.notes)
    summaries: dict[str, dict] = {}
    for src in sources:
        got = _collect(src, ctx)
        ranges.extend(got.ranges)
        notes.extend(got.notes)
        if got.summary is not None:
            summaries[label_of(src)] = got.summary
    walker = make_walker(ctx.prog, ctx.facts, deadline)
    findings = Checker(ctx.facts, ctx.spaces, walker).check(ranges)
    return CheckResult(target, ctx.facts, ctx.spaces, ranges, findings, list(walker.errors),
                       notes, ctx.efi_descs, time.monotonic() - t0, walker.reader.reads,
                       summaries)


def confirm(res: CheckResult, deadline: Optional[float] = None) -> CheckResult:
    """The result with every problem finding re-walked with a fresh table cache.

    A live kernel changes its page tables while we read them (a table freed and reused
    between two reads looks like a hole), so a live problem is reported only when a second,
    independent walk sees it too; the second walk's finding replaces the first, and
    ``unconfirmed`` counts the problems it did not see.  ``res`` itself is left as it was.
    Pointless (and skipped: ``res`` is returned) on a dump.
    """
    if not res.target.live:
        return res
    walker = make_walker(res.target.prog, res.facts, deadline)
    checker = Checker(res.facts, res.spaces, walker)
    findings, dropped = [], 0
    for f in res.findings:
        again = checker.check_one(f.range, f.exp) if f.problem else f
        dropped += bool(f.problem and not again.problem)
        findings.append(again)            # the fresher of two views
    return replace(res, findings=findings, walk_errors=res.walk_errors + list(walker.errors),
                   unconfirmed=res.unconfirmed + dropped)
