"""Minimal reproductions of the production bugs the fuzz harness found (tests/fuzz/README.md).

    .venv/bin/python -m tests.fuzz.repro [B1 B2a ...] [--dir DIR]

Each one builds a healthy synthetic kernel (``kernels.base_kernel``), makes the one
corruption that matters, writes it as a dump the CLI reads (ELF vmcore + BTF + System.map,
or a 6.0+-style dump with kallsyms and BTF in memory), runs the real CLI on it and prints
the command, its exit code, the time and the last stderr line.  Each docstring says what
the bug did when it was found ("Now") and what a fixed mmrwatch prints ("Fixed"); all ten
are fixed, with their regression tests in tests/unit/test_kernel_state_faults.py (B2c's
pnode 65535 is the kernel's "no pnode", skipped as uv_system_init_hub() skips it).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz import synthdump
from tests.fuzz.kernels import FuzzKernel, base_kernel

MMRWATCH = [sys.executable, "-m", "mmrwatch"]


def _edit(name: str, member, fmt: str, value: int):
    from tests.fuzz.gen_tables import _set
    return lambda k, prog, t, objs: _set(objs, prog, name, member, fmt, value)


def _files(k: FuzzKernel, d: Path, stem: str) -> list[str]:
    return synthdump.cli_args(*synthdump.write_bundle(k, d, stem))


def _run(args: list[str], timeout: float = 30) -> tuple[str, int, float, str]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(MMRWATCH + args, capture_output=True, text=True, timeout=timeout)
        rc, err = r.returncode, r.stderr.strip()
    except subprocess.TimeoutExpired:
        rc, err = -1, f"(killed after {timeout:.0f} s)"
    return "mmrwatch " + " ".join(args), rc, time.monotonic() - t0, (err.splitlines() or [""])[-1]


def b1(d: Path):
    """Crash forensics unguarded: CPU 1's __per_cpu_offset is 0, so its runqueue reads at
    0x1000 (unmapped).  Now: exit 70 "internal error: FaultError: address is not mapped:
    0x1000".  Fixed: the report, with CPU 1's state unreadable (a note)."""
    k = base_kernel(uv=False)
    k.edits.append(_edit("__per_cpu_offset", 8, "<Q", 0))
    return [["report", *_files(k, d, "b1")]]


def b2a(d: Path):
    """UV hub info global_mmr_shift = 2**40: ``1 << shift`` in uvspans.hub_spans.  Now: exit 70
    "internal error: MemoryError".  Fixed: a note naming the bad shift, UV ranges from hub
    info not checked, the rest checked."""
    k = base_kernel()
    k.uv_state["mmr_shift"] = 1 << 40
    return [["report", *_files(k, d, "b2a")]]


def b2b(d: Path):
    """gru_end_paddr = 2**60: GRU_HI segments run past 52-bit PAs and their direct-map VAs
    cross the non-canonical hole.  Now: exit 70 "internal error: ValueError: walk range
    crosses the non-canonical hole".  Fixed: the bad bound reported once."""
    k = base_kernel()
    k.uv_state["gru"] = (0x7FF00000000, 1 << 60)
    return [["report", *_files(k, d, "b2b")]]


def b2c(d: Path):
    """One hub on pnode 65535 (issue 15 item 7's example): 2 x 65536 MMR_HI/GRU_HI
    segments, each checked in both mms.  Now: exit 2 after 8.5 s on an idle 2-core machine
    (the fuzz cases with it pass 10 s under load).  Fixed: bounded by what the hub generation
    allows, reported once."""
    k = base_kernel()
    k.uv_state["pnodes"] = (0, 65535)
    return [["report", *_files(k, d, "b2c")]]


def b2d(d: Path):
    """nr_node_ids = 2**31 - 1: uv._hub_objects reads __uv_hub_info_list[node] for every
    node until a read faults, i.e. to the end of RAM (here 64 MiB: 8 M reads; a UV machine's
    dump: terabytes), every non-zero word a "hub".  Now: exit 2 after 14.9 s here, linear in
    RAM.  Fixed: nr_node_ids bounded (MAX_NUMNODES, 1024 on x86)."""
    k = base_kernel(ram_mib=64)
    k.edits.append(_edit("nr_node_ids", "", "<I", (1 << 31) - 1))
    return [["report", *_files(k, d, "b2d")]]


def b3(d: Path):
    """efi.memmap.desc_size = 2**62: read_memmap reads nr_map * desc_size bytes.  Now: exit 70
    "internal error: OverflowError: Python int too large to convert to C ssize_t" (2**40:
    MemoryError).  Fixed: desc_size bounded like nr_map, a note, EFI regions not checked."""
    k = base_kernel(uv=False)
    k.edits.append(_edit("efi", "memmap.desc_size", "<Q", 1 << 62))
    return [["report", *_files(k, d, "b3")]]


def b4(d: Path):
    """Pre-5.10 structured log with log_next_idx = 1: drgn's get_printk_records never
    reaches it (zero-length record -> back to 0 -> again), called unbounded by
    uvlog.boot_maps and forensics._log.  Now: a hang (killed at 30 s).  Fixed: a bounded
    reader (records within log_buf_len, at most once around)."""
    k = base_kernel()
    k.edits.append(_edit("log_next_idx", "", "<I", 1))
    return [["report", *_files(k, d, "b4")]]


def b5(d: Path):
    """6.0+ dump whose kallsyms token table has no NUL for 200 bytes: mmrwatch's decoder
    returns None (tokens over 64 bytes) and drgn's loader raises BadDataError, which
    symbols.load_builtin does not catch.  Now: exit 70 "internal error: BadDataError: ...".
    Fixed: exit 65 "kallsyms in memory unreadable"."""
    path = d / "b5.elf"
    path.write_bytes(synthdump.garbage_kallsyms(base_kernel(uv=False)))
    return [["report", "--vmcore", str(path)]]


def b6(d: Path):
    """BTF whose uv_hub_info_s member "numa_blade_id" is spelled "numa_blade_iX" (one byte
    of the string table): passes the layout check (VMCOREINFO has no SIZE/OFFSET of it) and
    uv.discover raises AttributeError.  Now: exit 70.  Fixed: exit 69 naming the missing
    member, or the UV source unreadable (a note)."""
    k = base_kernel()
    args = _files(k, d, "b6")
    blob = Path(args[5]).read_bytes().replace(b"numa_blade_id\0", b"numa_blade_iX\0")
    Path(args[5]).write_bytes(blob)
    return [["report", *args]]


def b7(d: Path):
    """System.map (or kallsyms) giving page_offset_base an unreadable address (0): passes
    the symbol check (only swapper_pg_dir is compared) and kernel.read_facts' read faults.
    Now: exit 70 "internal error: FaultError: address is not mapped: 0x0".  Fixed: exit 65
    naming the symbol."""
    k = base_kernel(uv=False)
    args = _files(k, d, "b7")
    smap = Path(args[7])
    lines = [("0000000000000000 D page_offset_base" if ln.endswith(" page_offset_base") else ln)
             for ln in smap.read_text().splitlines()]
    smap.write_text("\n".join(lines) + "\n")
    return [["report", *args]]


def b8(d: Path):
    """ptdump --uv when the UV source could not read its state (__uv_hub_info_list points
    nowhere): engine._collect turns the fault into a finding but leaves no summary, and
    cli._uv_annotation reads res.summaries['uv'].  Now: exit 70 "internal error: KeyError:
    'uv'".  Fixed: the table plus the UV state's reason."""
    k = base_kernel()
    k.edits.append(_edit("__uv_hub_info_list", "", "<Q", 0xFFFF888000000000 + (1 << 40)))
    return [["ptdump", *_files(k, d, "b8"), "--uv"], ["report", *_files(k, d, "b8")]]


def b9(d: Path):
    """__pte2cachemode_tbl holding 7 (not a page_cache_mode): the JSON report says cache
    mode "mode7", which the shipped report.schema.json rejects (enum WB/WC/UC-/UC/WT/WP).
    Now: exit 0-2 with a report that does not validate.  Fixed: schema and code agree."""
    k = base_kernel(uv=False)
    k.cachemode_tbl = [7, 1, 2, 3, 0, 5, 2, 4]
    return [["report", *_files(k, d, "b9"), "--format", "json"]]


def b10(d: Path):
    """A source that cannot read its state (issue 15 item 5; here __uv_hub_info_list points
    nowhere) is reported as a range "uv-state" of size 0, and the JSON report then fails the
    shipped schema (ranges[].size has minimum 1).  Now: exit 2 with a report that does not
    validate.  Fixed: schema and report agree."""
    k = base_kernel()
    k.edits.append(_edit("__uv_hub_info_list", "", "<Q", 0xFFFF888000000000 + (1 << 40)))
    return [["report", *_files(k, d, "b10"), "--format", "json"]]


REPROS = {"B1": b1, "B2a": b2a, "B2b": b2b, "B2c": b2c, "B2d": b2d, "B3": b3, "B4": b4,
          "B5": b5, "B6": b6, "B7": b7, "B8": b8, "B9": b9, "B10": b10}


def _schema_problem(args: list[str]) -> str:
    import json

    import jsonschema
    from tests.synth import report_schema
    out = subprocess.run(MMRWATCH + args, capture_output=True, text=True).stdout
    schema = report_schema()
    try:
        jsonschema.validate(json.loads(out), schema)
        return "JSON validates"
    except jsonschema.ValidationError as e:
        return f"JSON fails the schema: {e.message[:120]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.repro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bugs", nargs="*", default=list(REPROS))
    p.add_argument("--dir", default="/tmp/mmrwatch-repro")
    p.add_argument("--timeout", type=float, default=30)
    a = p.parse_args(argv)
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    for bug in a.bugs:
        fn = REPROS[bug]
        print(f"== {bug}: {' '.join(fn.__doc__.split())}")
        for args in fn(d):
            cmd, rc, took, last = _run(args, a.timeout)
            print(f"   $ {cmd}\n   exit {rc} in {took:.1f} s: {last}")
            if bug in ("B9", "B10") and rc in (0, 1, 2):
                print(f"   {_schema_problem(args)}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
