"""Hostile kernel data (issue 15): shared subtrees, garbage EFI descriptors and configured
ranges that cannot hold end one branch or one range with a recorded reason, promptly."""

import pytest

from mmrwatch.collectors import kernel, pagetable, x86
from mmrwatch.collectors.check import CRITICAL, OK
from mmrwatch.collectors.pagetable import extents
from mmrwatch.collectors.userranges import RangesError
from tests.synth import KERNEL, UC, SynthKernel, check

RUNTIME, MMIO = 1 << 63, 11


def _walker(k: SynthKernel):
    prog = k.program()
    return kernel.make_walker(prog, kernel.read_facts(prog))


def _dag(k: SynthKernel, va: int, pud_refs: int):
    """A non-linear PTE table that all 512 entries of its PMD table point at, and that
    PMD table pointed at by ``pud_refs`` PUD entries: 512 * pud_refs paths to one page."""
    for i in range(512):       # alternating cache modes: no run, no linear shortcut
        k.map(k.init_root, va + i * 4096, 0x10_0000 + i * 4096, 4096, 4096,
              KERNEL | (UC if i % 2 else 0))
    pmd = k.table_for(k.init_root, va, x86.PMD)
    for i in range(512):
        k.write_entry(pmd, i, k.read_entry(pmd, 0))
    pud = k.table_for(k.init_root, va, x86.PUD)
    first = (va >> 30) & 511
    for i in range(first, min(512, first + pud_refs)):
        k.write_entry(pud, i, k.read_entry(pud, first))


def test_shared_subtrees_are_walked_a_bounded_number_of_times():
    """512 PUD entries -> one PMD table -> 512 entries -> one PTE table: 262144 references
    to one page (minutes before); a table of tables is walked for at most MAX_SERVED VAs, a
    PTE table for MAX_SERVED_LEAF (every entry of each allowed walk of its parent, as the
    kernel's ESPfix area needs), and the rest is recorded, once per parent table, as a walk
    error with a count.  (The work bound is counted, not timed: see tests/bench.)"""
    k = SynthKernel()
    va = k.pob + (512 << 30)                  # PUD index 0 of the second root entry
    _dag(k, va, 512)
    w = _walker(k)
    leaves = []
    w.walk(k.init_root, va, va + (512 << 30), lambda *a: leaves.append(a))
    assert len(leaves) <= pagetable.MAX_SERVED_LEAF * 512
    assert w.reader.reads <= 8               # each table page read once
    shared = [e for e in w.errors if "shared subtree" in e.message]
    assert len(shared) == 1                  # one per (parent table, child table)
    assert shared[0].level == x86.PUD and "508 entries" in shared[0].message
    assert all("not walked again" in e.message and "entries)" in e.message for e in shared)
    # the first VA the tables serve is still walked exactly
    assert w.translate(k.init_root, va + 4096)[0] == 0x10_1000


def test_shared_subtree_in_a_checked_range_is_unreadable_not_ok(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    va = k.pob + (8 << 30)
    _dag(k, va, 8)
    k.new_efi_root()
    toml = f'[[range]]\nname = "big"\nstart = {8 << 30:#x}\nsize = "8GiB"\nmms = ["kernel"]\n'
    res = check(k, tmp=tmp_path, ranges_toml=toml)
    (f,) = [f for f in res.findings if f.range.name == "big"]
    assert f.status == "unreadable" and f.severity == CRITICAL and "shared subtree" in f.message


def test_a_table_shared_by_two_vas_is_walked_for_both():
    """A sane tree can reach one table at two VAs (the UV1 EFI prolog's 1:1 copy of the
    direct map's PUD entries): both translate, no error."""
    k = SynthKernel()
    va = k.pob + (4 << 30)
    k.map(k.init_root, va, 0x20_0000, 8 * 4096, 4096, KERNEL | UC)
    pud = k.table_for(k.init_root, va, x86.PUD)
    ident_pud = k.table_for(k.init_root, 4 << 30, x86.PUD)
    k.write_entry(ident_pud, 4, k.read_entry(pud, (va >> 30) & 511))   # 1:1 at VA 4 GiB
    w = _walker(k)
    assert w.translate(k.init_root, va + 4096)[0] == 0x20_1000
    assert w.translate(k.init_root, (4 << 30) + 4096)[0] == 0x20_1000
    a = list(extents(w, k.init_root, va, va + 8 * 4096))
    b = list(extents(w, k.init_root, 4 << 30, (4 << 30) + 8 * 4096))
    assert [(e.pa, e.size) for e in a] == [(e.pa, e.size) for e in b] == [(0x20_0000, 8 * 4096)]
    assert not w.errors


# -- item 7: garbage EFI descriptors ----------------------------------------------------------
@pytest.mark.parametrize("phys,virt,pages,why", [
    (0xFED0_0000, 0xFFFF_FFFE_FED0_0000, 1 << 60, "passes 52-bit"),
    (0xFED0_0000, 0x0000_9000_0000_0000, 1, "virt_addr 0x900000000000"),   # non-canonical
    (0xFED0_0000, 0xFFFF_FFFF_FFFF_F000, 2, "2^64"),
    (0xFED0_0000, 0xFFFF_FFFE_FED0_0000, 0, "num_pages is 0"),
    (1 << 48, 0xFFFF_FFFE_0000_0000, 1, "its 1:1 VA"),                      # 4-level 1:1
])
def test_garbage_efi_descriptor_is_reported_once_and_skipped(tmp_path, phys, virt, pages, why):
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    k.map(k.efi_root, 0x7F00_0000, 0x7F00_0000, 4096, 4096, KERNEL | UC)
    k.add_efi_desc(MMIO, 0x7F00_0000, 0, 1, RUNTIME)                        # a sane one
    k.add_efi_desc(MMIO, phys, virt, pages, RUNTIME)
    toml = f'[[range]]\nname = "fw"\nstart = {phys:#x}\nsize = 4096\nmms = ["efi"]\nva = "efi_va"\n'
    res = check(k, tmp=tmp_path, ranges_toml=toml if phys < 1 << 47 else "")
    bad = [r for r in res.ranges if dict(r.attrs).get("bad")]
    assert len(bad) == 1 and not bad[0].expectations and why in dict(bad[0].attrs)["bad"]
    assert not [f for f in res.findings if f.range is bad[0]]
    sane = [f for f in res.findings if f.range.phys == 0x7F00_0000 and f.mm == "efi_mm"]
    assert sane and all(f.severity == OK for f in sane)
    if phys < 1 << 47:          # a configured efi_va range never takes the garbage VA
        (f,) = [f for f in res.findings if f.range.name == "fw"]
        assert f.severity == CRITICAL and f.exp.unmet


# -- item 9: a required efi_va range no descriptor covers is a finding -----------------------
def test_required_efi_va_range_without_descriptor_is_critical(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    toml = '[[range]]\nname = "bmc"\nstart = 0xfed40000\nsize = "16KiB"\nmms = ["efi"]\nva = "efi_va"\n'
    res = check(k, tmp=tmp_path, ranges_toml=toml)
    (f,) = [f for f in res.findings if f.range.name == "bmc"]
    assert f.severity == CRITICAL and f.status == "missing" and res.verdict == CRITICAL
    assert "no EFI runtime descriptor covers PA 0xfed40000" in f.exp.unmet == f.exp.why
    # ... even when something maps the 1:1 stand-in VA to the right page
    k.map(k.efi_root, 0xFED4_0000, 0xFED4_0000, 16 << 10, 4096, KERNEL | UC)
    (f,) = [f for f in check(k, tmp=tmp_path, ranges_toml=toml).findings if f.range.name == "bmc"]
    assert f.severity == CRITICAL


def test_efi_va_range_with_descriptor_is_checked_at_its_efi_va(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    eva = 0xFFFF_FFFE_FED4_0000
    k.map(k.efi_root, eva, 0xFED4_0000, 16 << 10, 4096, KERNEL | UC)
    k.add_efi_desc(MMIO, 0xFED4_0000, eva, 4, RUNTIME)
    toml = '[[range]]\nname = "bmc"\nstart = 0xfed40000\nsize = "16KiB"\nmms = ["efi"]\nva = "efi_va"\n'
    (f,) = [f for f in check(k, tmp=tmp_path, ranges_toml=toml).findings if f.range.name == "bmc"]
    assert (f.severity, f.exp.va, f.exp.unmet) == (OK, eva, "")


def test_range_past_the_direct_map_is_refused_at_check_time(tmp_path):
    """start = 0, size = 4096TiB validates (52-bit PA) but its direct VA passes 2^64."""
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    with pytest.raises(RangesError, match="passes the top of the address space"):
        check(k, tmp=tmp_path, ranges_toml='[[range]]\nname = "all"\nstart = 0\nsize = "4096TiB"\n')
