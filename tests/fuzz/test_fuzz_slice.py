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
# (sized for ~60 s of the suite on 2 shared cores; every sub-kind of each kind is drawn)
SLICE = {"tables": range(0, 400), "dumps": range(0, 450), "ranges": range(0, 600)}
CLI = [("tables", s) for s in (1, 2, 3)] + [("dumps", s) for s in (1, 4, 6)] + \
    [("ranges", s) for s in (2, 5, 9)]

# The production bugs the slice hits, by id (tests/fuzz/README.md has each one's story).
# B1-B10 are fixed, each with its regression test in tests/unit/test_kernel_state_faults.py;
# a new bug found by a run goes here with the seeds that hit it until it is fixed.
BUGS: dict[str, str] = {}
# (kind, seed, cli) -> the bug it reproduces
KNOWN: dict[tuple[str, int, bool], str] = {}
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
