"""The same check run live inside the guest, on its own /proc/kcore, agrees with a dump."""
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


def test_live_check_in_guest_agrees_with_dump(bed, uvk):
    import sys
    from tests.conftest import report_both, report_live
    live = {}

    def in_guest(guest, res):
        # the forwarded loopback port reaches a server inside the guest (the exporter's path)
        guest.run(f"cd /tmp && echo mmrwatch-guest > hello && nohup {sys.executable} -m "
                  "http.server 19864 --bind 0.0.0.0 > /dev/null 2>&1 &")
        live["http"] = _fetch(f"http://127.0.0.1:{NET_PORT}/hello")
        doc, rc = report_live(guest, res)       # DWARF and BTF, compared
        live.update(rc=rc, doc=doc)
        with guest.paused():
            guest.dump(res.dir / "after-live.elf")

    b = bed.boot(f"{uvk}-l5", keep=in_guest)
    assert live["rc"] == 0, live["doc"]
    doc = live["doc"]
    assert doc["target"]["live"] is True and doc["target"]["path"] == "/proc/kcore"
    assert doc["target"]["debug_info"]["symbols"] == "kallsyms"   # in memory, via kcore
    assert doc["target"]["debug_info"]["types_path"] == "/sys/kernel/btf/vmlinux"
    dumped, rc = report_both(["--vmcore", str(b.dir / "after-live.elf")], b.kernel.vmlinux)
    assert rc == 0
    assert doc["kernel"]["page_offset_base"] == dumped["kernel"]["page_offset_base"]
    assert doc["address_spaces"] == dumped["address_spaces"]
    assert _summary(doc) == _summary(dumped)
    assert any(r["kind"] == "MMIO" for r in doc["ranges"])
    assert live["http"] == "mmrwatch-guest\n"
