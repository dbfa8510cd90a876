"""What one background check leaves behind for scrapes, status lines and plugins.

A ``Snapshot`` is immutable and self-contained: the exporter, the textfile writer, the
systemd STATUS line and ``mmrwatch check`` read it without touching drgn, so a scrape can
never wait on (or race with) a walk.  It holds physical ranges and byte counts only, never
a kernel virtual address (KASLR).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from mmrwatch.collectors.check import Finding, worst
from mmrwatch.collectors.engine import CheckResult
from mmrwatch.collectors.vocab import (CRITICAL, DIVERGED, INFO, OK, SEVERITY_ORDER, STALE,
                                       SOURCE_UV, TABLE, UNMAPPED_STATUSES, WARNING,
                                       WRONG_CACHE)


@dataclass(frozen=True)
class RangeState:
    """One physical range and, per address space that must map it, what is wrong."""

    name: str
    blade: str                     # "" for ranges that belong to no blade
    pnode: str                     # "" except for UV segments (a pnode without a hub: no blade)
    source: str                    # uv | efi-memmap | config
    kind: str
    phys: int
    size: int
    unmapped: dict[str, int]       # mm -> bytes missing/misdirected at a required VA
    wrong_cache: dict[str, int]    # mm -> bytes mapped with a forbidden cache mode
    stale: dict[str, int]          # mm -> bytes only absent because efi_mm is not re-synced
    severity: str

    @property
    def mismatched_mms(self) -> list[str]:
        return sorted(mm for mm in self.unmapped
                      if self.unmapped[mm] or self.wrong_cache[mm])


@dataclass(frozen=True)
class Snapshot:
    """The result of one successful check, as plain data."""

    started: float                 # unix time the check started
    duration: float                # seconds
    verdict: str                   # ok | info | warning | critical
    ranges: tuple[RangeState, ...]
    problems: tuple[str, ...]      # one line per warning/critical finding
    findings: dict[str, int]       # severity -> count
    unconfirmed: int               # live problems a second walk did not see
    kernel_release: str
    paging_levels: int
    mms: dict[str, str]            # mm -> "table" | reason it has none
    uv: dict[str, object] = field(default_factory=dict)
    table_reads: int = 0
    types: str = ""                # where types came from: "btf" | "dwarf"
    symbols: str = ""              # "kallsyms" | "proc-kallsyms" | "system-map" | "dwarf"

    def mismatched(self, mm: str) -> int:
        return sum(mm in r.mismatched_mms for r in self.ranges)

    def total(self, attr: str, mm: str) -> int:
        return sum(getattr(r, attr).get(mm, 0) for r in self.ranges)

    @property
    def problem_ranges(self) -> int:
        """Ranges with at least one warning or critical finding."""
        return sum(SEVERITY_ORDER[r.severity] >= SEVERITY_ORDER[WARNING] for r in self.ranges)

    @property
    def mm_names(self) -> list[str]:
        return sorted(self.mms)

    def status_line(self) -> str:
        """One line for systemd's STATUS= and the plugin output."""
        n = len(self.ranges)
        if self.verdict in (OK, INFO):
            return f"{n} ranges mapped as required in {' and '.join(self.mm_names)}"
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{self.problems[0]}{more}"


def _line(f: Finding) -> str:
    return f"{f.range.label} {f.status} in {f.mm}: {f.message}"


def _range_state(rng, findings: list[Finding]) -> RangeState:
    unmapped: dict[str, int] = {}
    wrong: dict[str, int] = {}
    stale: dict[str, int] = {}
    for f in findings:
        if not f.exp.required:
            continue
        mm = f.mm
        unmapped.setdefault(mm, 0)
        wrong.setdefault(mm, 0)
        if f.exp.shared_from:              # only a shared kernel half can be "not yet copied"
            stale.setdefault(mm, 0)
        if f.severity == CRITICAL and f.status in UNMAPPED_STATUSES:
            unmapped[mm] = max(unmapped[mm], f.missing_bytes + f.misdirected_bytes)
        elif f.severity == CRITICAL and f.status == WRONG_CACHE:
            wrong[mm] = max(wrong[mm], f.wrong_cache_bytes)
        elif f.status in (STALE, DIVERGED):     # efi_mm's copy is out of date
            stale[mm] = max(stale.get(mm, 0), f.missing_bytes)
    sev = worst(f.severity for f in findings)
    return RangeState(rng.name, "" if rng.blade is None else str(rng.blade),
                      "" if rng.pnode is None else str(rng.pnode), rng.source,
                      rng.kind, rng.phys, rng.size, unmapped, wrong, stale, sev)


def from_result(res: CheckResult, started: float) -> Snapshot:
    """Condense a check into a snapshot (``started`` is the wall-clock start time)."""
    states = tuple(_range_state(r, res.findings_of(r)) for r in res.ranges)
    counts = res.severity_counts()
    problems = tuple(_line(f) for f in sorted(
        (f for f in res.findings if f.problem),
        key=lambda f: (-SEVERITY_ORDER[f.severity], f.range.phys, f.mm)))
    mms = {name: (TABLE if s.has_table else s.reason) for name, s in res.spaces.items()}
    info = res.target.debuginfo
    return Snapshot(started, res.seconds, res.verdict, states, problems, counts, res.unconfirmed,
                    res.facts.release, res.facts.levels, mms, dict(res.summaries.get(SOURCE_UV, {})),
                    res.table_reads, info.types if info else "dwarf",
                    info.symbols if info else "dwarf")
