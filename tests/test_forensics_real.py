"""Crash forensics on real crashes, against what the kernel itself logged.

The 2016 failure, reproduced for real: the kernel (on a process's page table, whose kernel
half is init_mm's) jumps into EFI runtime code at its 1:1 address, which only efi_mm maps.
The guest's sysrq crash handler pointer is redirected to the start of a
RuntimeServicesCode region (written into guest RAM while paused), ``echo c`` makes the kernel
call it, the instruction fetch faults, ``oops=panic`` kdumps, makedumpfile writes the dump.
Expected facts come from that setup (the address we chose, the CPU the shell ran on, the
mapping rules), and the oops text is the kernel's own.
"""
import struct

import jsonschema
import pytest

from mmrwatch.collectors import efi
from tests.bed import uvinject as U
from tests.conftest import report_both
from tests.synth import report_schema

pytestmark = [pytest.mark.realkernel, pytest.mark.uvkernel]


def _report(dump, vmlinux, fmt="json"):
    """The report (DWARF and BTF agree on everything, crash verdict included)."""
    out, rc = report_both(["--vmcore", str(dump)], vmlinux, fmt)
    assert rc in (0, 1, 2), out
    if fmt != "json":
        return out
    jsonschema.validate(out, report_schema())
    return out


def test_fault_in_efi_code_while_on_the_kernel_page_table(bed, uvk):
    chosen = {}

    def redirect(guest, res):
        def patch(gm):
            code = [d for d in efi.read_memmap(gm.prog)
                    if d.type == efi.RUNTIME_CODE and d.runtime]
            chosen["addr"] = code[0].phys
            t = gm.prog.type("struct sysrq_key_op")
            off = next(m.offset for m in t.members if m.name == "handler") // 8
            struct.pack_into("<Q", gm.ram, gm.pa_of("sysrq_crash_op") + off, code[0].phys)
        U.inject(guest, patch)
        _, out, _ = guest.run("cat /proc/sys/kernel/panic_on_oops")
        chosen["panic_on_oops"] = out.strip()

    b = bed.boot(f"{uvk}-efifault", keep=redirect)
    assert chosen["panic_on_oops"] == "1"
    doc = _report(b.real_kdump, b.kernel.vmlinux)
    c = doc["crash"]
    addr = f"0x{chosen['addr']:x}"
    assert c["crashed"] and c["fault_address"] == addr
    # the kernel's own words: an instruction fetch of a not-present page
    assert any("instruction fetch" in k for k in c["fault_kind"]), c
    assert any("not-present" in k for k in c["fault_kind"]), c
    tr = {t["mm"]: t for t in c["translations"]}
    assert tr["init_mm"]["mapped"] is False
    assert tr["efi_mm"]["mapped"] is True and tr["efi_mm"]["pa"] == addr     # 1:1
    crashed = [x for x in c["cpus"] if x["crashed"]]
    assert len(crashed) == 1 and crashed[0]["cpu"] == c["panic_cpu"]
    assert crashed[0]["mm"] not in ("efi_mm",)          # not inside an EFI call
    loaded = [t for t in c["translations"] if t["mm"] == crashed[0]["mm"]]
    assert loaded and loaded[0]["mapped"] is False
    assert "RuntimeServicesCode" in c["fault_region"]
    assert c["verdict"].startswith(f"CPU {c['panic_cpu']} faulted at {addr} while on ")
    assert c["verdict"].endswith("mapped only in efi_mm")
    text = _report(b.real_kdump, b.kernel.vmlinux, "text")
    assert f"CRASH    CPU {c['panic_cpu']} faulted at {addr}" in text
    md = _report(b.real_kdump, b.kernel.vmlinux, "markdown")
    assert f"**Crash:** CPU {c['panic_cpu']} faulted at {addr}" in md
    assert "| init_mm | **no** |" in md and "| efi_mm | yes |" in md


def test_sysrq_crash_and_running_dumps(bed, uvk):
    b = bed.boot(f"{uvk}-kdump")
    c = _report(b.real_kdump, b.kernel.vmlinux)["crash"]
    assert c["crashed"] and c["fault_address"] is None
    assert c["panic_message"] == "sysrq triggered crash"
    assert c["verdict"].startswith(f"CPU {c['panic_cpu']} panicked (sysrq triggered crash)")
    running = _report(b.elf, b.kernel.vmlinux)["crash"]
    assert running["crashed"] is False and "no crash recorded" in running["verdict"]
