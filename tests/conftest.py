"""Shared fixtures: the real-kernel test bed (one boot serves many tests).

In CI (``CI`` set) a missing QEMU/OVMF is a failure, never a skip: ``tests/run`` installs
them.  Locally, real-kernel tests skip with the reason when the host lacks them.
"""
import os
import subprocess
import sys

import pytest

from tests.bed.boots import UV_KERNELS, BedSession
from tests.bed.cache import have_host_tools

MMRWATCH = [sys.executable, "-m", "mmrwatch"]


def pytest_configure(config):
    """SIGTERM ends the session as Ctrl-C does: tests/run stops a stream that way, and a
    test's context managers must still stop its guests (each runs in a session of its own,
    which a signal to pytest's process group does not reach)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """A test booting a UV-kernel plan needs that kernel even when its module is not marked
    (tests/run runs those in its UV streams, each after its kernel's build; ``-m`` sees these
    marks): every UV test is ``uvkernel``, and the 6.12 ones (``uvk`` = uv612, or a uv612-*
    plan) also ``uv612``."""
    from tests.bed.boots import PLANS
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        kernels = {PLANS[v].kernel for v in params.values() if isinstance(v, str) and v in PLANS}
        if params.get("uvk") in UV_KERNELS:
            kernels.add(params["uvk"])
        if kernels & set(UV_KERNELS):
            item.add_marker(pytest.mark.uvkernel)
        if "uv612" in kernels:
            item.add_marker(pytest.mark.uv612)


@pytest.fixture(scope="session", params=list(UV_KERNELS), ids=list(UV_KERNELS.values()))
def uvk(request) -> str:
    """The UV-enabled kernel a UV test runs on (a ``tests.bed.boots.KERNELS`` key): every
    UV real-kernel test runs on each, 6.1 and 6.12 (issue 14).  Its boots are
    ``f"{uvk}-{suffix}"`` (``uv-l4``, ``uv612-l4``)."""
    return request.param


@pytest.fixture(scope="session")
def bed(tmp_path_factory) -> BedSession:
    why = have_host_tools()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"test bed unavailable in CI: {why}")
        pytest.skip(why)
    return BedSession(tmp_path_factory.mktemp("bed"))


def mmrwatch(*args: str, check_rc: int | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would (a subprocess), capturing output."""
    res = subprocess.run(MMRWATCH + list(args), capture_output=True, text=True)
    if check_rc is not None:
        assert res.returncode == check_rc, (res.returncode, res.stdout[-3000:], res.stderr[-3000:])
    return res


def report_on_dump(guest, boot, tag: str, also=None):
    """Pause the guest (a no-op if an injection left it paused), dump it, resume it, run
    ``mmrwatch report --format json`` on the dump; ``also(dump)`` runs before the dump is
    deleted.  Returns (parsed JSON, exit code)."""
    with guest.paused():
        dump = guest.dump(boot.dir / f"{tag}.elf")
    doc, rc = report_both(["--vmcore", str(dump)], boot.kernel.vmlinux)
    if also is not None:
        also(dump)
    dump.unlink()
    return doc, rc


def report_live(guest, boot):
    """``mmrwatch report --live`` inside the guest, on its /proc/kcore: (JSON or stderr, rc)."""
    import json
    runs = {}
    for mode in ("dwarf", "btf"):
        src = f"--vmlinux {boot.kernel.vmlinux}" if mode == "dwarf" else "--debug-info btf"
        rc, out, err = guest.run(f"{sys.executable} -m mmrwatch report --live {src} "
                                 "--format json", timeout=900, check=False)
        runs[mode] = ((json.loads(out) if out.strip() else err), rc)
    (dw, rc_dw), (bt, rc_bt) = runs["dwarf"], runs["btf"]
    assert rc_dw == rc_bt, (rc_dw, rc_bt, dw if rc_dw > 2 else "", bt if rc_bt > 2 else "")
    if isinstance(bt, dict):
        assert bt["target"]["debug_info"]["types"] == "btf"
        assert live_view(dw) == live_view(bt)
    return bt, rc_bt


def without_debuginfo(doc: dict) -> dict:
    """A report minus what legitimately depends on the source of types and symbols (the
    source itself) and on timing: what must be identical with DWARF and with BTF."""
    import copy
    d = copy.deepcopy(doc)
    d.pop("stats", None)
    d["target"].pop("vmlinux", None)
    d["target"].pop("debug_info", None)
    return d


def live_view(doc: dict) -> dict:
    """What two live reports a few seconds apart must agree on (a live kernel's vmalloc
    space changes between them; the checked ranges' verdicts do not)."""
    return {"verdict": doc["verdict"], "summary": doc["summary"], "uv": doc.get("uv"),
            "spaces": doc["address_spaces"],
            "ranges": sorted((r["name"], e["mm"], e["rule"], e["status"], e["mapped_bytes"])
                             for r in doc["ranges"] for e in r["expectations"])}


def report_both(args: list, vmlinux, fmt: str = "json", btf_args: tuple = ()):
    """``mmrwatch report`` with DWARF (``--vmlinux``) and without (``--debug-info btf``
    plus ``btf_args``, e.g. ``--system-map``): identical findings, byte counts, UV summary
    and crash verdict (issue 13).  Returns the BTF run's (parsed JSON or text, exit code)."""
    import json
    dw = mmrwatch("report", *args, "--vmlinux", str(vmlinux), "--format", fmt)
    bt = mmrwatch("report", *args, "--debug-info", "btf", *btf_args, "--format", fmt)
    assert dw.returncode == bt.returncode, (dw.returncode, bt.returncode, dw.stderr, bt.stderr)
    if fmt != "json":            # the same content as the JSON compared below
        return bt.stdout, bt.returncode
    if bt.returncode > 2:
        return bt.stderr, bt.returncode
    a, b = json.loads(dw.stdout), json.loads(bt.stdout)
    assert b["target"]["debug_info"]["types"] == "btf", b["target"]
    assert without_debuginfo(a) == without_debuginfo(b)
    return b, bt.returncode
