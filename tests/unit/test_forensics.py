"""Crash forensics (``forensics.analyse``) on synthetic crash dumps (``tests.fuzz.kernels``:
two CPUs, CPU 1 crashed on efi_mm, a structured printk log).  Expected values are what the
synthetic dump holds and the oops formats the kernel prints, not mmrwatch's output; the
real kernels' crashes are tests/test_forensics_real.py."""
from typing import Optional

import pytest

from mmrwatch.collectors import engine, forensics, kernel
from tests.fuzz.kernels import FLASH, FLASH_VA, FuzzKernel, base_kernel
from tests.synth import target

FAULT = FLASH_VA + 0x1000          # the synthetic oops' address: EFI MMIO at its EFI VA


def _analyse(k: FuzzKernel, live: bool = False) -> forensics.Crash:
    """What ``mmrwatch report`` runs: the check, then forensics on its ranges."""
    t = target(k)
    res = engine.run_check(t, engine.default_sources())
    return forensics.analyse(t.prog, res.facts, res.spaces, kernel.make_walker(t.prog, res.facts),
                             res.ranges, res.efi_descs, live)


def test_who_crashed_on_which_table_at_which_address():
    c = _analyse(base_kernel())
    assert (c.crashed, c.panic_cpu, c.task) == (True, 1, "sh[98]")
    assert c.panic_message == "Fatal exception"
    assert c.fault_address == FAULT
    assert c.fault_kind == ["#PF: supervisor read access in kernel mode"]
    assert [(s.cpu, s.mm, s.task, s.crashed) for s in c.cpus] == [
        (0, "init_mm", "swapper/0[0]", False), (1, "efi_mm", "sh[98]", True)]
    # the EFI VA is mapped in efi_mm only (2 MiB, PCD: UC-), so the loaded table had it
    by = {t.mm: t for t in c.translations}
    assert by["init_mm"].mapped is False
    e = by["efi_mm"]
    assert (e.mapped, e.pa, e.page_size, e.cache_mode) == (True, FLASH + 0x1000, 2 << 20, "UC-")
    assert c.fault_region.startswith("efi-MMIO-0 (MMIO, PA 0xffc00000, 4 MiB)")
    assert c.verdict.startswith(f"CPU 1 faulted at 0x{FAULT:x} while on efi_mm;")
    assert c.verdict.endswith("the fault was not a missing translation")
    assert c.log_excerpt[0].startswith("BUG: unable to handle page fault") and not c.notes


def _with_log(lines: list[str], crashed: Optional[int] = 1) -> FuzzKernel:
    k = base_kernel(uv=False)
    k.crashed = crashed
    k.log = [(0, ln) for ln in lines]
    return k


@pytest.mark.parametrize("bug", [
    "BUG: unable to handle page fault for address: 00000000fa001000",          # v5.1+
    "BUG: unable to handle kernel paging request at 00000000fa001000",         # before
    "BUG: unable to handle kernel NULL pointer dereference at 00000000fa001000",
])
def test_every_oops_format_gives_the_address(bug):
    c = _analyse(_with_log(["Linux version 6.1.0", bug, "#PF: error_code(0x0000)",
                            "Kernel panic - not syncing: Fatal exception"]))
    assert c.fault_address == 0xFA001000
    assert c.fault_kind == ["#PF: error_code(0x0000)"]
    # mapped in neither table (the direct map of this kernel starts at page_offset_base)
    assert c.verdict.endswith("mapped in neither init_mm nor efi_mm")


def test_the_last_oops_is_the_one_explained():
    c = _analyse(_with_log(["BUG: unable to handle page fault for address: 0000000000001000",
                            f"BUG: unable to handle page fault for address: {FAULT:016x}"]))
    assert c.fault_address == FAULT


def test_a_panic_without_an_oops_keeps_the_panic_lines():
    c = _analyse(_with_log(["Linux version 6.1.0", "sysrq: Trigger a crash",
                            "Kernel panic - not syncing: sysrq triggered crash"]))
    assert c.fault_address is None and c.translations == []
    assert c.log_excerpt == ["sysrq: Trigger a crash",
                             "Kernel panic - not syncing: sysrq triggered crash"]
    assert c.verdict == "CPU 1 panicked (sysrq triggered crash) while on efi_mm"


def test_no_panic_cpu_is_no_crash_and_a_live_kernel_is_not_analysed():
    c = _analyse(_with_log(["BUG: unable to handle page fault for address: 0000000000001000"],
                           crashed=None))
    assert not c.crashed and c.fault_address is None
    assert c.verdict.startswith("no crash recorded in this dump (panic_cpu unset)")
    live = _analyse(base_kernel(), live=True)
    assert (live.crashed, live.cpus, live.verdict) == (False, [], "live kernel: no crash to analyse")


def test_describe_names_the_direct_map_and_efi_regions():
    k = base_kernel()
    t = target(k)
    res = engine.run_check(t, engine.default_sources())
    assert forensics.describe(k.pob + 0x5000, res.facts, [], []) == "the direct map of PA 0x5000"
    assert forensics.describe(FLASH + 0x10, res.facts, [], res.efi_descs) == \
        "EFI MMIO (PA 0xffc00000, 4 MiB) at its identity VA"
    assert forensics.describe(0x10, res.facts, [], []) is None
