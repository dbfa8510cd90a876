"""The same check run live inside the guest, on its own /proc/kcore, agrees with a dump."""
import json

import pytest

pytestmark = [pytest.mark.realkernel, pytest.mark.uvkernel]


def _summary(doc):
    return sorted((r["name"], e["mm"], e["rule"], e["status"], e["mapped_bytes"],
                   tuple(e["cache_modes"])) for r in doc["ranges"] for e in r["expectations"])


def test_live_check_in_guest_agrees_with_dump(bed):
    import sys
    from tests.conftest import mmrwatch
    live = {}

    def in_guest(guest, res):
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
