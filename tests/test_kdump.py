"""A real kdump (crashkernel=, kexec -p, sysrq-c, makedumpfile in the capture kernel)."""
import pytest

from tests.conftest import report_both

pytestmark = [pytest.mark.realkernel, pytest.mark.uvkernel]


def _summary(doc):
    return sorted((r["name"], e["mm"], e["rule"], e["status"], e["mapped_bytes"])
                  for r in doc["ranges"] for e in r["expectations"])


def test_real_kdump_reads_like_the_live_dump(bed, uvk):
    b = bed.boot(f"{uvk}-kdump")
    assert "crashkernel=192M" in b.facts["cmdline"]
    with open(b.real_kdump, "rb") as f:
        assert f.read(8) == b"KDUMP   "          # makedumpfile -c output, not flattened
    real, rc_real = report_both(["--vmcore", str(b.real_kdump)], b.kernel.vmlinux)
    before, rc_before = report_both(["--vmcore", str(b.elf)], b.kernel.vmlinux)
    assert rc_real == rc_before == 0
    assert real["target"]["format"] == "kdump"
    assert real["kernel"]["page_offset_base"] == before["kernel"]["page_offset_base"]
    assert real["address_spaces"]["efi_mm"]["state"] == "table"
    assert _summary(real) == _summary(before)
    # and it is a real crash: the crashed thread went through sysrq's crash handler
    from mmrwatch.collectors import target
    t = target.open_vmcore(str(b.real_kdump), str(b.kernel.vmlinux))
    frames = [f.name for f in t.prog.crashed_thread().stack_trace()]
    assert "sysrq_handle_crash" in frames
