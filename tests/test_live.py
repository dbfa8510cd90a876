"""The same check run live inside the guest, on its own /proc/kcore, agrees with a dump."""
import json

import pytest

from tests.bed.boots import NET_PORT

pytestmark = [pytest.mark.realkernel, pytest.mark.uvkernel]


def _summary(doc):
    return sorted((r["name"], e["mm"], e["rule"], e["status"], e["mapped_bytes"],
                   tuple(e["cache_modes"])) for r in doc["ranges"] for e in r["expectations"])


def _fetch(url: str, timeout: float = 120) -> str:
    """GET ``url`` on the host's loopback, retrying while the guest's server starts."""
    import time
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_live_check_in_guest_agrees_with_dump(bed):
    import sys
    from tests.conftest import mmrwatch
    live = {}

    def in_guest(guest, res):
        # the forwarded loopback port reaches a server inside the guest (the exporter's path)
        guest.run(f"cd /tmp && echo mmrwatch-guest > hello && nohup {sys.executable} -m "
                  "http.server 19864 --bind 0.0.0.0 > /dev/null 2>&1 &")
        live["http"] = _fetch(f"http://127.0.0.1:{NET_PORT}/hello")
        rc, out, err = guest.run(f"{sys.executable} -m mmrwatch report --live --vmlinux "
                                 f"{res.kernel.vmlinux} --format json", timeout=600, check=False)
        live.update(rc=rc, out=out, err=err)
        guest.pause()
        try:
            guest.dump(res.dir / "after-live.elf")
        finally:
            guest.resume()

    b = bed.boot("uv-l5", keep=in_guest)
    assert live["rc"] == 0, live["err"][-2000:]
    doc = json.loads(live["out"])
    assert doc["target"]["live"] is True and doc["target"]["path"] == "/proc/kcore"
    dumped = json.loads(mmrwatch("report", "--vmcore", str(b.dir / "after-live.elf"),
                                 "--vmlinux", str(b.kernel.vmlinux), "--format", "json",
                                 check_rc=0).stdout)
    assert doc["kernel"]["page_offset_base"] == dumped["kernel"]["page_offset_base"]
    assert doc["address_spaces"] == dumped["address_spaces"]
    assert _summary(doc) == _summary(dumped)
    assert any(r["kind"] == "MMIO" for r in doc["ranges"])
    assert live["http"] == "mmrwatch-guest\n"
