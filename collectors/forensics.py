"""Crash forensics: who crashed, on which page table, at which address, and why.

The 2016 engineers worked this out by hand from a console log: a CPU inside a UV BIOS
callback faulted on an address that only one of the two page tables mapped.  Here the same
facts come from the dump itself: ``panic_cpu`` (or x86's ``crashing_cpu``), each CPU's
``cpu_tlbstate.loaded_mm`` (the page table it had loaded), the oops in the kernel's log
buffer, and the faulting address translated in both ``init_mm`` and ``efi_mm``.

A dump of a crashed machine is the least trustworthy input there is: each of those facts is
read on its own (``faults``), and one that cannot be read (a CPU's runqueue outside the
dump, a garbage ``nr_cpu_ids``, a type a corrupt BTF lacks) is a line in ``Crash.notes``
and an "(unreadable)" field, never the end of the report.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import drgn
from drgn.helpers.linux.cpumask import cpu_online_mask
from drgn.helpers.linux.percpu import per_cpu
from drgn.helpers.linux.sched import cpu_curr

from . import efi, faults, printk
from .kernel import KernelFacts, has_member, lookup
from .mm import EFI_MM, INIT_MM, AddressSpace
from .pagetable import Walker
from .ranges import Range, human_size

# v5.1+ "BUG: unable to handle page fault for address: X"; older "... kernel paging request
# at X" and "... kernel NULL pointer dereference at X".
_FAULT = re.compile(r"BUG: unable to handle (?:page fault for address: |kernel paging request "
                    r"at |kernel NULL pointer dereference at )([0-9a-fA-F]{1,16})\b")
_CPU = re.compile(r"^CPU: (\d+) PID: (\d+) Comm: (\S+)")
MAX_CPUS = 8192        # NR_CPUS_RANGE_END on x86-64 (MAXSMP): no cpumask is longer
UNREADABLE = "(unreadable)"
_KEEP = ("BUG: ", "#PF: ", "Oops: ", "CPU: ", "RIP: ", "Kernel panic", "PGD ", "sysrq: ",
         "Call Trace", "general protection fault")


@dataclass
class CpuState:
    cpu: int
    mm: str                 # init_mm | efi_mm | "mm of COMM[PID]" | "mm at 0x..."
    task: str               # what ran there: COMM[PID]
    crashed: bool = False
    root_pa: Optional[int] = None   # the loaded table's top level

    @property
    def shared_kernel_half(self) -> bool:
        """A process's table: its kernel half is init_mm's (copied pgd entries)."""
        return self.mm not in (INIT_MM, EFI_MM, UNREADABLE)


@dataclass
class Translation:
    mm: str
    mapped: Optional[bool]          # None: that mm has no page table
    pa: Optional[int] = None
    page_size: Optional[int] = None
    cache_mode: Optional[str] = None
    perms: Optional[str] = None
    note: str = ""


@dataclass
class Crash:
    crashed: bool
    panic_cpu: Optional[int] = None
    task: Optional[str] = None
    panic_message: Optional[str] = None
    fault_address: Optional[int] = None
    fault_kind: list[str] = field(default_factory=list)
    log_excerpt: list[str] = field(default_factory=list)
    cpus: list[CpuState] = field(default_factory=list)
    translations: list[Translation] = field(default_factory=list)
    fault_region: Optional[str] = None
    verdict: str = ""
    notes: list[str] = field(default_factory=list)   # what could not be read, and why


def _panic_cpu(prog: drgn.Program) -> Optional[int]:
    """The CPU that panicked; None if nothing panicked (keyed by which symbol exists)."""
    obj = lookup(prog, "panic_cpu")
    if obj is not None:
        v = int(obj.counter) if has_member(obj, "counter") else int(obj)
        if v >= 0:
            return v
    obj = lookup(prog, "crashing_cpu")          # x86 kdump, set in the crash shutdown path
    if obj is not None and int(obj) >= 0:
        return int(obj)
    return None


def _task(t: drgn.Object) -> str:
    return f"{t.comm.string_().decode(errors='replace')}[{int(t.pid)}]"


def _mm_name(prog: drgn.Program, mm: int, cur: drgn.Object) -> str:
    for name in (INIT_MM, EFI_MM):
        sym = lookup(prog, name)
        if sym is not None and sym.address_ == mm:
            return name
    if mm and cur and int(cur.mm) == mm:
        return f"mm of {_task(cur)}"
    if mm and cur and not cur.mm:
        return "a process's mm (lazy TLB)"      # a kernel thread keeps the last mm loaded
    return f"mm at 0x{mm:x}"


def online_cpus(prog: drgn.Program, notes: list[str]) -> list[int]:
    """The online CPUs, read word by word from ``cpu_online_mask`` up to ``nr_cpu_ids``
    (drgn's iterator trusts ``nr_cpu_ids``: a garbage one walks gigabytes), never past the
    mask's own length or ``MAX_CPUS``."""
    bits = cpu_online_mask(prog).bits
    words = min(bits.type_.length or 1, MAX_CPUS // 64)
    nr = lookup(prog, "nr_cpu_ids")
    limit = int(nr) if nr is not None else 1        # as drgn: no nr_cpu_ids, one CPU
    if not 0 < limit <= words * 64:
        notes.append(f"nr_cpu_ids {limit:#x} is no CPU count for a {words * 64}-bit online "
                     "mask: the whole mask is read")
        limit = words * 64
    ws = [int(bits[i]) for i in range((limit + 63) // 64)]
    return [c for c in range(limit) if ws[c // 64] >> (c % 64) & 1]


def _cpu_state(prog: drgn.Program, facts: KernelFacts, tlb: Optional[drgn.Object],
               cpu: int, crashed: bool) -> CpuState:
    """One CPU: what ran there and the page table it had loaded."""
    cur = cpu_curr(prog, cpu)
    mm = per_cpu(tlb, cpu).loaded_mm if tlb is not None else cur.active_mm
    root = None
    if mm:
        mm_t = prog.type("struct mm_struct *")
        root, _ = faults.catch(lambda: facts.kernel_pa(int(drgn.Object(prog, mm_t, int(mm)).pgd)))
    return CpuState(cpu, _mm_name(prog, int(mm), cur), _task(cur), crashed, root)


def cpu_states(prog: drgn.Program, facts: KernelFacts, crashed_cpu: Optional[int],
               notes: Optional[list[str]] = None) -> list[CpuState]:
    """Each online CPU's loaded page table (``cpu_tlbstate``; ``active_mm`` before v4.10);
    a CPU whose state cannot be read is listed as unreadable (one note for all of them)."""
    notes = notes if notes is not None else []
    tlb = lookup(prog, "cpu_tlbstate")
    tlb = tlb if tlb is not None and has_member(tlb, "loaded_mm") else None
    out, bad = [], []
    for cpu in online_cpus(prog, notes):
        st, why = faults.catch(lambda: _cpu_state(prog, facts, tlb, cpu, cpu == crashed_cpu))
        if st is None:
            bad.append((cpu, why))
            st = CpuState(cpu, UNREADABLE, UNREADABLE, cpu == crashed_cpu)
        out.append(st)
    if bad:
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        notes.append(f"CPU {', '.join(str(c) for c, _ in bad[:8])}{more}: state unreadable "
                     f"({bad[0][1]})")
    return out


def _log(prog: drgn.Program, notes: list[str]) -> list[str]:
    """The kernel log's lines (``printk``: bounded on any buffer); [] when unreadable."""
    log = faults.attempt("kernel log", lambda: printk.read_log(prog), notes, printk.Log())
    if log.problem:
        notes.append(f"kernel log: read up to a corrupt record ({log.problem})")
    return [r.text for r in log.records]


def _last_oops(lines: list[str]) -> tuple[Optional[int], int]:
    """(fault address, index of its BUG line) of the last page-fault oops in the log."""
    for i in range(len(lines) - 1, -1, -1):
        m = _FAULT.search(lines[i])
        if m:
            return int(m.group(1), 16), i
    return None, -1


def translate(walker: Walker, name: str, root_pa: Optional[int],
              va: int, why_none: str = "") -> Translation:
    if root_pa is None:
        return Translation(name, None, note=f"no page table: {why_none}")
    hit, bad = faults.catch(lambda: walker.translate(root_pa, va))
    if bad:
        return Translation(name, None, note=f"not translated: {bad}")
    if hit is None:
        return Translation(name, False)
    pa, level, val = hit
    arch = walker.arch
    return Translation(name, True, pa, arch.level_size(level), arch.cache_mode(val, level),
                       arch.perms(val))


def describe(va: int, facts: KernelFacts, ranges: list[Range],
             descs: list[efi.Descriptor]) -> Optional[str]:
    """What lives at ``va``: a checked range's expected VA, an EFI region, the direct map."""
    for r in ranges:
        for e in r.expectations:
            if e.va <= va < e.va + r.size:
                return f"{r.label} ({r.kind}, PA 0x{r.phys:x}, {human_size(r.size)}) at its {e.rule} VA"
    for d in descs:
        for base, how in ((d.phys, "identity"), (d.virt, "EFI")):
            if base and base <= va < base + d.size:
                return (f"EFI {d.type_name} (PA 0x{d.phys:x}, {human_size(d.size)}) at its "
                        f"{how} VA")
    if facts.page_offset_base <= va < facts.page_offset_base + (1 << 46):
        return f"the direct map of PA 0x{va - facts.page_offset_base:x}"
    return None


def _verdict(c: Crash) -> str:
    if not c.crashed:
        return ("no crash recorded in this dump (panic_cpu unset): a dump of a running "
                "system, nothing to explain")
    cpu = next((s for s in c.cpus if s.crashed), None)
    on = cpu.mm if cpu else "an unknown page table"
    on_text = (f"the page table of {on.removeprefix('mm of ')} (kernel half shared with init_mm)"
               if cpu and cpu.shared_kernel_half and on.startswith("mm of ")
               else f"{on} (kernel half shared with init_mm)" if cpu and cpu.shared_kernel_half
               else on)
    who = f"CPU {c.panic_cpu}"
    if c.fault_address is None:
        return (f"{who} panicked ({c.panic_message or 'no panic message in the log'}) while "
                f"on {on_text}")
    addr = f"0x{c.fault_address:x}"
    what = f"that address is {c.fault_region}" if c.fault_region else "that address"
    mapped = [t.mm for t in c.translations if t.mapped]
    if on in mapped:
        tail = (f"mapped in the loaded table ({next(t.perms for t in c.translations if t.mm == on)}"
                "): the fault was not a missing translation")
    elif not mapped:
        tail = "mapped in neither init_mm nor efi_mm"
    else:
        tail = f"mapped only in {' and '.join(mapped)}"
    return f"{who} faulted at {addr} while on {on_text}; {what} {tail}"


def analyse(prog: drgn.Program, facts: KernelFacts, spaces: dict[str, AddressSpace],
            walker: Walker, ranges: list[Range], descs: list[efi.Descriptor],
            live: bool) -> Crash:
    """The crash section of a report (a live kernel has not crashed)."""
    if live:
        return Crash(False, verdict="live kernel: no crash to analyse")
    notes: list[str] = []
    pcpu = faults.attempt("panic_cpu", lambda: _panic_cpu(prog), notes, None)
    lines = _log(prog, notes)
    c = Crash(pcpu is not None, pcpu, notes=notes)
    c.cpus = faults.attempt("online CPUs", lambda: cpu_states(prog, facts, pcpu, notes),
                            notes, [])
    panic = [ln for ln in lines if ln.startswith("Kernel panic - not syncing")]
    c.panic_message = panic[-1].removeprefix("Kernel panic - not syncing: ") if panic else None
    addr, at = _last_oops(lines)
    if c.crashed and addr is not None:
        c.fault_address = addr
        block = lines[at:at + 40]
        c.fault_kind = [ln for ln in block if ln.startswith("#PF: ")]
        c.log_excerpt = [ln for ln in block if ln.startswith(_KEEP)][:12]
        m = next((m for m in map(_CPU.match, block) if m), None)
        if m and pcpu is None:
            c.panic_cpu = int(m.group(1))
        c.translations = [translate(walker, n, spaces[n].root_pa, addr, spaces[n].reason)
                          for n in (INIT_MM, EFI_MM)]
        cur = next((s for s in c.cpus if s.crashed), None)
        if cur is not None and cur.shared_kernel_half:
            c.translations.insert(0, translate(walker, cur.mm, cur.root_pa, addr))
        c.fault_region = describe(addr, facts, ranges, descs)
    elif c.crashed:
        c.log_excerpt = [ln for ln in lines[-60:] if ln.startswith(_KEEP)][-12:]
    cur = next((s for s in c.cpus if s.crashed), None)
    c.task = cur.task if cur else None
    c.verdict = _verdict(c)
    return c
