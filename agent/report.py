"""Turn a ``CheckResult`` into the report formats: text (verdict first) and JSON.

JSON (``schema_version`` 1) is documented in ``docs/report-json.md``; addresses are strings
``"0x..."`` because many exceed JSON's exact-integer range, byte counts are integers.
"""
from __future__ import annotations

import json
from typing import Any

import mmrwatch
from mmrwatch.collectors.check import Finding
from mmrwatch.collectors.engine import CheckResult
from mmrwatch.collectors.forensics import Crash
from mmrwatch.collectors.mm import EFI_MM, INIT_MM
from mmrwatch.collectors.ranges import human_size
from mmrwatch.collectors.vocab import (CRITICAL, HUBLESS, INFO, NOT_UV_HW, NOT_UV_KERNEL, OK,
                                       SOURCE_UV, UNREADABLE, WARNING)

from .exits import EXIT_CRITICAL, EXIT_OK, EXIT_WARNING

SCHEMA_VERSION = 1


def _hex(v: int | None) -> str | None:
    if v is None:
        return None
    return f"-0x{-v:x}" if v < 0 else f"0x{v:x}"   # phys_base may be negative


def verdict_line(res: CheckResult) -> str:
    """One sentence an SRE can act on."""
    problems = [f for f in res.findings if f.problem]
    if not problems:
        n = len(res.ranges)
        return f"OK: {n} range{'s' if n != 1 else ''} checked, every required mapping present"
    crit = [f for f in problems if f.severity == CRITICAL]
    head = "CRITICAL" if crit else "WARNING"
    first = (crit or problems)[0]
    more = len(problems) - 1
    return (f"{head}: {first.range.label} ({_hex(first.range.phys)}, {human_size(first.range.size)}) "
            f"{first.message}" + (f"; and {more} more problem{'s' if more > 1 else ''}"
                                  if more else ""))


def _finding_line(f: Finding) -> str:
    modes = "/".join(f.cache_modes) or "-"
    pages = "/".join(human_size(p).replace(" ", "") for p in f.page_sizes) or "-"
    return (f"    {f.mm:<8} {f.exp.rule:<8} {f.severity.upper():<8} {f.status:<11} "
            f"mapped {human_size(f.mapped_bytes):>8}  missing {human_size(f.missing_bytes):>8}  "
            f"cache {modes:<6} pages {pages:<8} {f.message}")


def crash_lines(c: Crash) -> list[str]:
    """The crash-forensics section (text and Markdown share it)."""
    out = [f"  {c.verdict}"]
    if not c.crashed:
        return out + [f"  ({n})" for n in c.notes]
    out.append(f"  crashed CPU    {c.panic_cpu if c.panic_cpu is not None else 'unknown'}"
               f"{', task ' + c.task if c.task else ''}")
    if c.panic_message:
        out.append(f"  panic          {c.panic_message}")
    if c.fault_address is not None:
        out.append(f"  fault address  {_hex(c.fault_address)}"
                   f"{' (' + c.fault_region + ')' if c.fault_region else ''}")
        out += [f"                 {k}" for k in c.fault_kind]
        for tr in c.translations:
            if tr.mapped is None:
                how = tr.note
            elif tr.mapped:
                how = (f"mapped -> PA {_hex(tr.pa)}, {human_size(tr.page_size or 0)} page, "
                       f"{tr.cache_mode} {tr.perms}")
            else:
                how = "not mapped"
            out.append(f"  in {tr.mm + ':':<16} {how}")
    out.append("  CPUs (page table loaded at the crash)")
    for cpu in c.cpus:
        out.append(f"    CPU {cpu.cpu:<3} {cpu.mm:<26} running {cpu.task}"
                   f"{'   <- crashed' if cpu.crashed else ''}")
    if c.log_excerpt:
        out.append("  kernel log")
        out += [f"    {ln}" for ln in c.log_excerpt]
    if c.notes:
        out.append("  could not be read")
        out += [f"    {n}" for n in c.notes]
    return out


def debug_info_dict(t) -> dict[str, str]:
    """Where the target's types and symbols came from (DWARF, or BTF + kallsyms/System.map)."""
    d = t.debuginfo
    if d is None:
        return {"types": "dwarf", "types_path": t.vmlinux or "(loaded by drgn)",
                "symbols": "dwarf", "symbols_path": t.vmlinux or "(loaded by drgn)"}
    return {"types": d.types, "types_path": d.types_path, "symbols": d.symbols,
            "symbols_path": d.symbols_path}


def debug_info_line(t) -> str:
    d = debug_info_dict(t)
    if d["types"] == "dwarf":
        return f"DWARF {d['types_path']}"
    return f"BTF {d['types_path']}; symbols: {d['symbols']} {d['symbols_path']}"


def text(res: CheckResult, verbose: bool = False, crash: Crash | None = None) -> str:
    """The human report: verdict, crash, kernel identity, address spaces, ranges, errors."""
    k, t, arch = res.facts, res.target, res.facts.arch
    out = [f"mmrwatch {mmrwatch.__version__} report", "",
           f"VERDICT  {verdict_line(res)}"]
    if crash is not None and crash.crashed:
        out.append(f"CRASH    {crash.verdict}")
    out.append("")
    out += ["Kernel",
            f"  release        {k.release}",
            f"  build-id       {t.build_id or 'not recorded in the dump'}",
            f"  target         {t.path} ({t.fmt}{', live' if t.live and t.fmt != 'live' else ''})",
            f"  debug info     {debug_info_line(t)}",
            f"  paging         {k.levels}-level, direct map at {_hex(k.page_offset_base)}, "
            f"KASLR offset {_hex(k.kaslr_offset)}",
            f"  cache modes    {'kernel __pte2cachemode_tbl' if k.cache.from_kernel else 'default Linux PAT'}"
            f" {list(k.cache.table)}", ""]
    uvs = res.summaries.get(SOURCE_UV)
    if uvs:
        out += ["UV system", "  " + uv_line(uvs), ""]
    if crash is not None:
        out += ["Crash forensics"] + crash_lines(crash) + [""]
    out += ["Address spaces"]
    for name in (INIT_MM, EFI_MM):
        s = res.spaces[name]
        detail = (f"root PA {_hex(s.root_pa)} (from {s.source})" if s.has_table
                  else f"no page table: {s.reason}")
        out.append(f"  {name:<8} {detail}")
    out += ["", f"Ranges ({len(res.ranges)})"]
    for r in res.ranges:
        attrs = " ".join(f"{a}={v}" for a, v in r.attrs)
        out.append(f"  {r.label}  PA {_hex(r.phys)}-{_hex(r.end)} ({human_size(r.size)}), "
                   f"source {r.source}{', ' + attrs if attrs else ''}")
        for f in res.findings_of(r):
            out.append(_finding_line(f))
            if verbose or f.severity != OK:
                for e in f.extents[:8]:
                    out.append(f"        VA {_hex(e.va)} -> PA {_hex(e.pa)} {human_size(e.size)} "
                               f"{human_size(e.page_size).replace(' ', '')} pages "
                               f"{arch.cache_mode(e.val, e.level)} {arch.perms(e.eff)}")
                if len(f.extents) > 8:
                    out.append(f"        ... {len(f.extents) - 8} more extents")
    if res.walk_errors:
        out += ["", f"Page-table errors ({len(res.walk_errors)})"]
        out += [f"  {e}" for e in res.walk_errors[:50]]
    if res.notes:
        out += ["", "Notes"] + [f"  {n}" for n in res.notes]
    out += ["", f"checked in {res.seconds:.2f} s, {res.table_reads} table pages read"]
    return "\n".join(out) + "\n"


def uv_line(s: dict) -> str:
    """The UV summary (``uv.UVSystem.summary()``) as one line, by its state."""
    text = {NOT_UV_KERNEL: "not a UV kernel (no UV symbols)",
            NOT_UV_HW: "UV kernel on non-UV hardware (uv_system_type UV_NONE)",
            HUBLESS: "hubless UV system: no hub MMRs are mapped"}
    if s["state"] in text:
        return text[s["state"]]
    if s["state"] == UNREADABLE:
        return f"UV state unreadable ({s.get('reason', '?')}): UV ranges not checked"
    return (f"hubbed {s['hub']} (revision {s['revision']}), {s['blades']} blade(s), "
            f"pnodes {s['min_pnode']}-{s['max_pnode']}")


def _finding_json(f: Finding, res: CheckResult) -> dict[str, Any]:
    e, arch = f.exp, res.facts.arch
    return {
        "mm": e.mm, "rule": e.rule, "va": _hex(e.va), "required": e.required,
        "cache_required": sorted(e.cache) if e.cache is not None else None,
        "writable_required": e.writable, "executable_required": e.executable,
        "why": e.why, "status": f.status, "severity": f.severity, "message": f.message,
        "mapped_bytes": f.mapped_bytes, "missing_bytes": f.missing_bytes,
        "misdirected_bytes": f.misdirected_bytes, "wrong_cache_bytes": f.wrong_cache_bytes,
        "wrong_perm_bytes": f.wrong_perm_bytes, "cache_modes": f.cache_modes,
        "page_sizes": f.page_sizes,
        "extents": [{"va": _hex(x.va), "pa": _hex(x.pa), "size": x.size,
                     "page_size": x.page_size, "cache_mode": arch.cache_mode(x.val, x.level),
                     "writable": arch.writable(x.eff), "executable": arch.executable(x.eff),
                     "user": arch.user(x.eff)} for x in f.extents],
    }


def crash_dict(c: Crash) -> dict[str, Any]:
    return {"crashed": c.crashed, "verdict": c.verdict, "panic_cpu": c.panic_cpu,
            "task": c.task, "panic_message": c.panic_message,
            "fault_address": _hex(c.fault_address), "fault_kind": c.fault_kind,
            "fault_region": c.fault_region,
            "translations": [{"mm": t.mm, "mapped": t.mapped, "pa": _hex(t.pa),
                              "page_size": t.page_size, "cache_mode": t.cache_mode,
                              "perms": t.perms, "note": t.note or None}
                             for t in c.translations],
            "cpus": [{"cpu": x.cpu, "mm": x.mm, "task": x.task, "crashed": x.crashed}
                     for x in c.cpus],
            "log_excerpt": c.log_excerpt, "notes": c.notes}


def as_dict(res: CheckResult, crash: Crash | None = None) -> dict[str, Any]:
    """The versioned JSON document."""
    k, t = res.facts, res.target
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "mmrwatch", "version": mmrwatch.__version__},
        "verdict": res.verdict,
        "verdict_text": verdict_line(res),
        "target": {"path": t.path, "format": t.fmt, "live": t.live, "vmlinux": t.vmlinux,
                   "build_id": t.build_id, "debug_info": debug_info_dict(t)},
        "kernel": {"release": k.release, "paging_levels": k.levels,
                   "page_offset_base": _hex(k.page_offset_base),
                   "kaslr_offset": _hex(k.kaslr_offset), "phys_base": _hex(k.phys_base),
                   "sme_me_mask": _hex(k.sme_me_mask),
                   "cache_modes_from_kernel": k.cache.from_kernel},
        "address_spaces": {n: {"state": s.state, "root_pa": _hex(s.root_pa),
                               "source": s.source, "reason": s.reason or None}
                           for n, s in res.spaces.items()},
        "summary": {"ranges": len(res.ranges), "findings": res.severity_counts()},
        "uv": res.summaries.get(SOURCE_UV),
        "ranges": [{"name": r.name, "blade": r.blade, "pnode": r.pnode, "source": r.source,
                    "kind": r.kind,
                    "phys_start": _hex(r.phys), "phys_end": _hex(r.end), "size": r.size,
                    "attrs": dict(r.attrs),
                    "expectations": [_finding_json(f, res) for f in res.findings_of(r)]}
                   for r in res.ranges],
        "walk_errors": [{"level": e.level, "va": _hex(e.va), "table_pa": _hex(e.table_pa),
                         "message": e.message} for e in res.walk_errors],
        "notes": res.notes,
        "crash": crash_dict(crash) if crash is not None else None,
        "stats": {"seconds": round(res.seconds, 4), "table_reads": res.table_reads},
    }


def as_json(res: CheckResult, crash: Crash | None = None) -> str:
    """The document, indented, with one line per range.  A UV system may have 16,384 pnodes
    (two segments and four findings each): indenting every range's fields through Python's
    pure encoder took 4 s for 20 MB there, one C-encoded line per range is 4x faster and
    still one range per ``grep`` hit; the same separators (``", "``, ``": "``) throughout."""
    parts = []
    for key, value in as_dict(res, crash).items():
        if key == "ranges" and value:
            text = "[\n" + ",\n".join("    " + json.dumps(r) for r in value) + "\n  ]"
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def exit_status(res: CheckResult) -> int:
    """0 nothing wrong, 1 warnings only, 2 critical findings."""
    return {OK: EXIT_OK, INFO: EXIT_OK, WARNING: EXIT_WARNING, CRITICAL: EXIT_CRITICAL}[res.verdict]
