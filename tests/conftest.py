"""Shared fixtures: the real-kernel test bed (one boot serves many tests).

In CI (``CI`` set) a missing QEMU/OVMF is a failure, never a skip: ``tests/run`` installs
them.  Locally, real-kernel tests skip with the reason when the host lacks them.
"""
import os
import subprocess
import sys

import pytest

from tests.bed.boots import BedSession
from tests.bed.cache import have_host_tools

MMRWATCH = [sys.executable, "-m", "mmrwatch"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """A test booting a UV-kernel plan needs that kernel even when its module is not marked
    (tests/run runs those after the background build; ``-m`` sees this mark)."""
    from tests.bed.boots import PLANS
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(v, str) and v in PLANS and PLANS[v].kernel == "uv"
               for v in params.values()):
            item.add_marker(pytest.mark.uvkernel)


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


def report_on_dump(guest, boot, tag: str, also=None, paused: bool = False):
    """Pause the guest (unless it already is), dump it, resume it, and run ``mmrwatch
    report --format json`` on the dump; ``also(dump)`` runs before the dump is deleted.
    Returns (parsed JSON, exit code)."""
    import json
    if not paused:
        guest.pause()
    try:
        dump = guest.dump(boot.dir / f"{tag}.elf")
    finally:
        guest.resume()
    res = mmrwatch("report", "--vmcore", str(dump), "--vmlinux", str(boot.kernel.vmlinux),
                   "--format", "json")
    if also is not None:
        also(dump)
    dump.unlink()
    return json.loads(res.stdout), res.returncode


def report_live(guest, boot):
    """``mmrwatch report --live`` inside the guest, on its /proc/kcore: (JSON or stderr, rc)."""
    import json
    rc, out, err = guest.run(f"{sys.executable} -m mmrwatch report --live --vmlinux "
                             f"{boot.kernel.vmlinux} --format json", timeout=900, check=False)
    return (json.loads(out) if out.strip() else err), rc
