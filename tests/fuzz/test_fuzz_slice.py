"""The CI-sized slice of the fuzz harness (issue 15 item 11): fixed seeds of every kind,
in process and a few through the CLI; any case in the ``fail`` class fails the test with
its reproduction (case id, corruption, traceback, replay command).

Cases that hit a bug already reported (``KNOWN``) run in ``test_known_bug`` as strict
xfails: they must still fail (an XPASS means the bug was fixed: drop the entry), and are
not skipped.  The full run: ``.venv/bin/python -m tests.fuzz --count 100000``.
"""
from __future__ import annotations

import collections
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fuzz import gen_dumps, gen_tables, harness, synthdump

# seeds per kind (in process), and the cases run through the CLI
SLICE = {"tables": range(0, 600), "dumps": range(0, 600), "ranges": range(0, 600)}
CLI = [("tables", s) for s in (1, 2, 3)] + [("dumps", s) for s in (1, 4, 6)] + \
    [("ranges", s) for s in (2, 5, 9)]

# The production bugs the slice hits (tests/fuzz/README.md has each one's reproduction).
BUGS = {
    "B1": "crash forensics is not guarded: unreadable or garbage CPU/task state "
          "(__per_cpu_offset, runqueues, rq->curr, nr_cpu_ids, a missing symbol or member) "
          "raises FaultError/LookupError/AttributeError out of forensics.analyse: exit 70",
    "B2": "UV hub info and GRU bounds are not validated: 1 << global_mmr_shift (MemoryError), "
          "GRU_HI/MMR_HI spans past 52 bits (ValueError from the walker), a huge pnode "
          "(thousands of ranges, over 10 s)",
    "B3": "efi.memmap nr_map/desc_size garbage: prog.read of nr_map * desc_size raises "
          "OverflowError/MemoryError, which engine.context does not catch",
    "B4": "a corrupt pre-5.10 printk log (log_next_idx) loops forever in drgn's "
          "get_printk_records (uvlog.boot_maps, forensics._log): a hang",
    "B5": "drgn's kallsyms loader raises BadDataError on a garbage kallsyms table "
          "(symbols.load_builtin does not catch it): exit 70",
    "B6": "a BTF that lacks a member the collectors read (corrupt blob) raises "
          "AttributeError in uv.discover / efi / forensics: exit 70",
    "B7": "a global whose symbol points at an unreadable address (corrupt kallsyms or "
          "System.map) raises FaultError out of kernel.read_facts / mm.efi_mm: exit 70",
}
# (kind, seed, cli) -> the bug it reproduces
KNOWN: dict[tuple[str, int, bool], str] = {
    **{("tables", s, False): "B1" for s in (21, 106, 111, 120, 131, 178, 346, 384, 402,
                                            439, 468, 471, 512, 518)},
    **{("dumps", s, False): "B1" for s in (9, 40, 81, 193, 239, 345, 368, 379, 477, 575,
                                           579)},
    **{("tables", s, False): "B2" for s in (50, 179, 198, 203, 261, 268, 297, 309, 334,
                                            351, 379, 403, 569, 583, 590)},
    ("dumps", 74, False): "B2",
    **{("tables", s, False): "B3" for s in (26, 532, 537, 549)},
    ("tables", 91, False): "B4",
    **{("dumps", s, False): "B5" for s in (6, 48, 82, 86, 105, 183, 291, 306, 308, 481,
                                           521)},
    ("dumps", 6, True): "B5",
    ("dumps", 331, False): "B6",
    ("dumps", 350, False): "B6",
    ("dumps", 483, False): "B7",
}
KNOWN_LIMIT = 3.0      # a known hang must still be one; 3 s shows it (a fix makes it ms)


@pytest.fixture(scope="module", autouse=True)
def _scratch():
    """The cases' scratch directory (tmpfs) goes when the slice is done."""
    yield
    harness.cleanup()


def _fails(cases) -> list[harness.Outcome]:
    out = []
    for kind, seed, cli in cases:
        o = harness.run_case(kind, seed, cli)
        if o.cls == "fail":
            out.append(o)
    return out


def _message(fails: list[harness.Outcome]) -> str:
    return f"{len(fails)} fuzz case(s) failed:\n\n" + "\n\n".join(o.describe() for o in fails)


@pytest.mark.parametrize("kind", list(SLICE))
def test_slice_in_process(kind):
    cases = [(kind, s, False) for s in SLICE[kind] if (kind, s, False) not in KNOWN]
    classes = collections.Counter()
    fails = []
    for c in cases:
        o = harness.run_case(*c)
        classes[o.cls] += 1
        if o.cls == "fail":
            fails.append(o)
    assert not fails, _message(fails)
    # the slice must reach the check, not only the error exits
    reached = classes["result"] + classes["walk-error"]
    assert reached >= len(cases) // 5, dict(classes)


def test_slice_cli():
    fails = _fails([(k, s, True) for k, s in CLI if (k, s, True) not in KNOWN])
    assert not fails, _message(fails)


@pytest.mark.parametrize("case", [
    pytest.param(c, id=f"{c[0]}:{c[1]}{'-cli' if c[2] else ''}-{bug}",
                 marks=pytest.mark.xfail(strict=True, reason=f"{bug}: {BUGS[bug]}"))
    for c, bug in sorted(KNOWN.items())] or [pytest.param(None, id="none")])
def test_known_bug(case):
    """A case of a reported bug: it must still fail (strict); fixed, drop it from KNOWN."""
    if case is None:
        return
    o = harness.run_case(*case, limit=KNOWN_LIMIT)
    assert o.cls != "fail", o.describe()


# -- the harness itself -----------------------------------------------------------------
def test_base_dump_is_what_write_vmcore_writes():
    """``synthdump.elf_bytes`` rebuilds dumps with edited VMCOREINFO or holes; unedited it is
    byte for byte ``SynthKernel.write_vmcore``'s file (plus the kernel-image PT_LOAD of the
    kallsyms bases)."""
    for i, (_, kallsyms) in enumerate(gen_dumps.DUMP_BASES):
        b = gen_dumps.get_base(i)
        assert bytes(gen_dumps.elf_core(b, b.info)) == b.core
        assert struct.unpack_from("<H", b.core, 56)[0] == (3 if kallsyms else 2)


@pytest.mark.parametrize("i", range(len(gen_tables.BASES)))
def test_healthy_bases_reach_a_result(i):
    """Uncorrupted, every base kernel is a check result in process, without walk errors."""
    k = gen_tables.base(i).clone()
    out = harness.inprocess(harness.Outcome("tables", -1, False),
                            lambda: harness.run_commands(gen_tables.target_of(k),
                                                         [["report", "--format", "json"]]))
    assert out.cls == "result", out.describe()


@pytest.mark.parametrize("i", range(len(gen_dumps.DUMP_BASES)))
def test_healthy_dumps_reach_a_result_through_the_cli(i):
    """Every base dump is a check result through the CLI (BTF + System.map, or nothing but
    --vmcore for the kallsyms ones): the fuzz reaches the walker, not exit 69."""
    b = gen_dumps.get_base(i)
    with tempfile.TemporaryDirectory() as d:
        paths = [Path(d) / f"v.{ext}" for ext in ("elf", "btf", "map")]
        for p, data in zip(paths, (b.core, b.btf, b.map)):
            p.write_bytes(data)
        args = ["--vmcore", str(paths[0])] if b.kallsyms else synthdump.cli_args(*paths)
        res = subprocess.run([sys.executable, "-m", "mmrwatch", "report", *args, "--format",
                              "json"], capture_output=True, text=True, timeout=60)
    assert res.returncode in (0, 1, 2), res.stderr
    assert '"walk_errors": []' in res.stdout
    want = "kallsyms" if b.kallsyms else "system-map"
    assert f'"symbols": "{want}"' in res.stdout


def test_classes_are_exactly_item_11s():
    assert harness.CLASSES == ("result", "walk-error", "documented", "fail")
    assert set(harness.DOCUMENTED) == {64, 65, 66, 69, 77}
