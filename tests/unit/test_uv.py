"""UV discovery and expectations on mock programs; expected values come from the rules in
v6.1 arch/x86/kernel/apic/x2apic_uv_x.c (uv_system_init_hub, map_low_mmrs, map_mmr_high,
map_gru_high), not from mmrwatch's output."""
import pytest

from mmrwatch.collectors import efi, engine, uv, uvbios, x86
from mmrwatch.collectors.check import CRITICAL, OK, WARNING
from mmrwatch.collectors.target import Target
from tests.synth import KERNEL, MMR_HI, UC, UV_HUBS, SynthKernel, check, uv_kernel

UV = [engine.uv_source]

@pytest.mark.parametrize("hub", list(UV_HUBS))
@pytest.mark.parametrize("blades", [1, 2, 8])
def test_healthy_hubs(hub, blades):
    res = check(uv_kernel(hub, blades), UV)
    s = res.summaries["uv"]
    assert (s["state"], s["hub"], s["blades"], s["max_pnode"]) == ("hubbed", hub, blades, blades - 1)
    names = sorted({r.name for r in res.ranges})
    want = {"LOCAL_MMR", "MMR_HI", "GRU_HI"} | ({"GLOBAL_MMR32"} if hub in ("UV2", "UV3") else set())
    assert set(names) == want
    assert sum(r.name == "MMR_HI" for r in res.ranges) == blades
    seg = 1 << (25 if hub == "UV5" else 26)
    assert [r.phys for r in res.ranges if r.name == "MMR_HI"] == [MMR_HI + i * seg for i in range(blades)]
    assert res.verdict == OK, [(f.range.label, f.mm, f.message) for f in res.findings if f.problem]
    gru = [f for f in res.findings if f.range.name == "GRU_HI"]
    assert gru and all(f.cache_modes == ["WB"] for f in gru)


def test_uv4_before_v510_has_16mib_global_mmr32():
    res = check(uv_kernel("UV4", 1, v510=False), UV)
    (g,) = [r for r in res.ranges if r.name == "GLOBAL_MMR32"]
    assert (g.phys, g.size) == (0xFC000000, 16 << 20)


def test_one_blade_segment_missing():
    k = uv_kernel("UV3", 2, healthy=True)
    # unmap blade 1's MMR_HI segment from init_mm (and so from efi_mm's shared copy)
    base = MMR_HI + (1 << 26)
    for off in range(0, 1 << 26, 1 << 21):
        pmd = k.table_for(k.init_root, k.pob + base + off, x86.PMD)
        k.write_entry(pmd, ((k.pob + base + off) >> 21) & 511, 0)
    res = check(k, UV)
    bad = {(f.range.label, f.mm) for f in res.findings if f.severity == CRITICAL}
    assert bad == {("MMR_HI[pnode 1, blade 1]", "init_mm"), ("MMR_HI[pnode 1, blade 1]", "efi_mm")}


def test_write_back_mmr_is_critical():
    k = uv_kernel("UV2", 1, healthy=False, gru=False)
    k.map(k.init_root, k.pob + 0xFA000000, 0xFA000000, 32 << 20, 1 << 21, KERNEL)   # WB
    res = check(k, UV)
    f = next(f for f in res.findings if f.range.name == "LOCAL_MMR" and f.mm == "init_mm")
    assert (f.status, f.severity) == ("wrong-cache", CRITICAL)


def test_stale_slot_is_a_warning():
    """MMR_HI mapped after efi_mm's last sync: its top-level slot is not yet in efi_mm."""
    k = uv_kernel("UV4", 1, healthy=False, gru=False)
    k.map(k.init_root, k.pob + 0xFA000000, 0xFA000000, 32 << 20, 1 << 21, KERNEL | UC)
    k.sync_kernel_half()
    hi_va = k.pob + MMR_HI           # 4 TiB up: its own top-level slot
    k.map(k.init_root, hi_va, MMR_HI, 1 << 26, 1 << 21, KERNEL | UC)   # after the sync
    res = check(k, UV)
    f = next(f for f in res.findings if f.range.name == "MMR_HI" and f.mm == "efi_mm")
    assert (f.status, f.severity) == ("stale", WARNING)
    assert res.verdict == WARNING


def test_a_different_kernel_half_slot_is_not_the_stale_window():
    """efi_mm's slot non-empty but not init_mm's: a table replaced since the last EFI call
    (hot-remove) or corruption, reported with both entries, not as the empty-slot window."""
    k = uv_kernel("UV4", 1, healthy=False, gru=False)
    hi_va = k.pob + MMR_HI
    k.map(k.init_root, hi_va, MMR_HI, 1 << 26, 1 << 21, KERNEL | UC)
    k.sync_kernel_half()
    idx = x86.top_index(hi_va, 4)
    old = k.alloc()                              # efi_mm still points at a table init_mm left
    k.write_entry(k.efi_root, idx, (k.read_entry(k.init_root, idx) & 0xFFF) | old)
    res = check(k, UV)
    f = next(f for f in res.findings if f.range.name == "MMR_HI" and f.mm == "efi_mm")
    assert (f.status, f.severity) == ("diverged", WARNING)
    assert f"table at PA 0x{old:x}" in f.message and "init_mm 0x" in f.message


@pytest.mark.parametrize("kw,state", [
    (dict(system_type=0), uv.NOT_UV_HW),
    (dict(system_type=0, hubless=1), uv.HUBLESS),
])
def test_no_hub_states_have_no_ranges(kw, state):
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    k.set_uv(**kw)
    res = check(k, UV)
    assert res.summaries["uv"]["state"] == state and res.ranges == []


def test_not_a_uv_kernel():
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    res = check(k, UV)
    assert res.summaries["uv"]["state"] == uv.NOT_UV_KERNEL and res.ranges == []


def test_2016_regression_runtime_mmio_only_in_efi_identity():
    k = uv_kernel("UV2", 1, healthy=False, gru=False)
    k.map(k.efi_root, 0xFA000000, 0xFA000000, 32 << 20, 1 << 21, KERNEL | x86.PCD)
    k.add_efi_desc(11, 0xFA000000, 0, (32 << 20) >> 12, (1 << 63) | 1)
    res = check(k, UV)
    f = {(x.mm, x.exp.rule): x for x in res.findings if x.range.name == "LOCAL_MMR"}
    assert f[("efi_mm", "identity")].severity == OK
    assert f[("init_mm", "direct")].status == "missing"
    assert f[("init_mm", "direct")].severity == CRITICAL


# -- the UV BIOS entry (uv_systab->function) --------------------------------------------------
CODE_PA, CODE_VA = 0x3E000000, 0xFFFFFFFEFF000000      # a RuntimeServicesCode region
DATA_PA, DATA_VA = 0x3E100000, 0xFFFFFFFEFF100000      # a RuntimeServicesData region
RT = 1 << 63


def _with_entry(entry, code_flags=KERNEL & ~x86.NX, efi_table=True, **kw):
    k = uv_kernel("UV4", 1, **kw)
    k.uv_state["bios_entry"] = entry
    k.add_efi_desc(5, CODE_PA, CODE_VA, 16, RT | 8)
    k.add_efi_desc(6, DATA_PA, DATA_VA, 16, RT | 8)
    if efi_table:
        for pa, va, fl in ((CODE_PA, CODE_VA, code_flags), (DATA_PA, DATA_VA, KERNEL)):
            k.map(k.efi_root, va, pa, 16 << 12, 4096, fl)
            k.map(k.efi_root, pa, pa, 16 << 12, 4096, fl)
    return k


def _entry(res):
    return [f for f in res.findings if f.range.name == "UV_BIOS_ENTRY"]


def test_bios_entry_in_runtime_code_is_checked_executable_in_efi_mm():
    res = check(_with_entry(CODE_VA + 0x2345), UV)
    (f,) = _entry(res)
    assert (f.mm, f.exp.rule, f.exp.va, f.range.phys) == ("efi_mm", "efi_va", CODE_VA + 0x2000,
                                                          CODE_PA + 0x2000)
    assert (f.status, f.severity) == ("ok", OK)
    assert dict(f.range.attrs)["function"] == hex(CODE_VA + 0x2345)


def test_bios_entry_on_a_non_executable_page_is_flagged():
    res = check(_with_entry(CODE_VA + 0x2345, code_flags=KERNEL), UV)      # NX code
    (f,) = _entry(res)
    assert (f.status, f.severity) == ("wrong-perm", WARNING)


def test_bios_entry_through_the_identity_map():
    res = check(_with_entry(DATA_PA + 0x10), UV)       # 1:1 address, but runtime *data*: NX
    (f,) = _entry(res)
    assert (f.exp.rule, f.range.phys, f.status) == ("identity", DATA_PA, "wrong-perm")


def test_bios_entry_outside_every_runtime_region_is_a_note():
    res = check(_with_entry(0xFFFFFFFEF0000000), UV)
    assert not _entry(res)
    assert any("lies in no EFI runtime region" in n for n in res.notes)


def test_no_uvsystab_is_a_note():
    res = check(_with_entry(None), UV)
    assert not _entry(res)
    assert any("uv_systab is NULL" in n for n in res.notes)


@pytest.mark.parametrize("mapped", [True, False])
def test_old_memmap_checks_the_entry_in_init_mm(mapped):
    """UV1-era efi=old_map: no EFI table; BIOS calls run on the kernel table, so
    __va(function) must be mapped (executable) in init_mm."""
    k = _with_entry(CODE_PA + 0x2345, efi_table=False)
    k.efi_root = None
    k.efi_flags |= 1 << 7               # EFI_ARCH_1: old memory map on such kernels
    k.old_memmap = True
    if mapped:
        k.map(k.init_root, k.pob + CODE_PA, CODE_PA, 16 << 12, 4096, KERNEL & ~x86.NX)
    res = check(k, UV)
    assert res.spaces["efi_mm"].reason.startswith("EFI old memory map")
    (f,) = _entry(res)
    assert (f.mm, f.exp.rule, f.exp.va) == ("init_mm", "direct", k.pob + CODE_PA + 0x2000)
    assert (f.status, f.severity) == (("ok", OK) if mapped else ("missing", CRITICAL))


@pytest.mark.parametrize("window_tib,warned", [(1, True), (11, False)])
def test_mmr_direct_map_address_beyond_the_direct_map_window(window_tib, warned):
    """KASLR sizes the direct-map window from RAM + padding; MMR_HI at ~4 TiB with a 1 TiB
    window is mapped into vmalloc space (arch/x86/mm/kaslr.c, kernel_randomize_memory())."""
    k = uv_kernel("UV4", 1)
    k.vmalloc_base = k.pob + (window_tib << 40)
    res = check(k, UV)
    notes = [n for n in res.notes if "beyond the direct-map window" in n]
    assert bool(notes) == warned
    if warned:
        assert notes[0].startswith("MMR_HI[pnode 0, blade 0] (PA 0x3fff0000000)")


def test_uv4a_is_named_by_its_highest_bit_and_gets_the_52_bit_overlay_mask():
    """v5.10+ writes hub_type UV4|UV4A for a UV4A hub: testing the UV4 bit first named it
    UV4 and masked global_mmr_base to UV4's 46 bits, dropping an MMR_HI above 64 TiB."""
    assert uv.hub_name(8, 4 | 8) == "UV4A" and uv.hub_name(7, 4) == "UV4"
    high = (1 << 48) | MMR_HI                     # above UV4's 46-bit BASE_MASK
    sysm = uv.UVSystem(uv.HUBBED, "UV4A", 8, [uv.Hub(0, 0, 0, 8, high | 1 << 63, 26)])
    (mmr,) = [s for s in uv.segments(sysm) if s[0] == "MMR_HI"]
    assert mmr[1] == high
    sysm4 = uv.UVSystem(uv.HUBBED, "UV4", 7, [uv.Hub(0, 0, 0, 7, high | 1 << 63, 26)])
    (mmr4,) = [s for s in uv.segments(sysm4) if s[0] == "MMR_HI"]
    assert mmr4[1] == MMR_HI                      # UV4 itself has only 46 address bits


def test_segments_are_labelled_by_pnode_and_by_blade_only_where_a_hub_is():
    """map_high() maps max_pnode + 1 segments from pnode 0: with hubs on pnodes 1 and 3 (a
    UV5 of two blades), pnodes 0 and 2 are segments of no blade, and blade numbers are the
    hubs' numa_blade_id, not segment indexes."""
    sysm = uv.UVSystem(uv.HUBBED, "UV5", 9, [uv.Hub(0, 1, 0, 9, MMR_HI | 1 << 63, 25),
                                             uv.Hub(1, 3, 1, 9, MMR_HI | 1 << 63, 25)],
                       (0x7FF00000000, 0x7FF00000000 + 4 * (1 << 25)), True)
    from mmrwatch.collectors.kernel import KernelFacts
    from mmrwatch.collectors import x86
    facts = KernelFacts("6.1", 4, 0xFFFF888000000000, 0, (1 << 52) - 1, 0, x86.CacheModes(None),
                        0, {})
    mmr = [r for r in uv.ranges(sysm, facts, [])[0] if r.name == "MMR_HI"]
    assert [(r.pnode, r.blade) for r in mmr] == [(0, None), (1, 0), (2, None), (3, 1)]
    assert [r.label for r in mmr] == ["MMR_HI[pnode 0]", "MMR_HI[pnode 1, blade 0]",
                                      "MMR_HI[pnode 2]", "MMR_HI[pnode 3, blade 1]"]


@pytest.mark.parametrize("mapped", [True, False])
def test_live_uvsystab_reads_as_zeros_so_its_page_is_checked_in_efi_mm(mapped):
    """/proc/kcore reads the ioremapped UVsystab as zeros: live, mmrwatch says so plainly
    (not "no UVST signature") and checks what it can: uv_systab_phys, the EFI runtime
    descriptor holding it, and that page's mapping in efi_mm (1:1 and at its EFI VA)."""
    k = _with_entry(CODE_PA + 0x10, efi_table=False)
    k.uv_state.update(systab_zeros=True, systab_phys=DATA_PA + 0x1040)
    if mapped:
        for pa, va in ((DATA_PA, DATA_VA), (DATA_PA, DATA_PA)):
            k.map(k.efi_root, va, pa, 16 << 12, 4096, KERNEL)
    t = Target(k.program(live=True), "/proc/kcore", True, "live", None, None)
    res = engine.run_check(t, [engine.uv_source])
    assert not _entry(res)
    assert any(n.startswith("UVsystab cannot be read through /proc/kcore") and
               f"uv_systab_phys 0x{DATA_PA + 0x1040:x}" in n for n in res.notes), res.notes
    tab = [f for f in res.findings if f.range.name == "UV_SYSTAB"]
    assert {(f.exp.rule, f.exp.va) for f in tab} == {("identity", DATA_PA + 0x1000),
                                                    ("efi_va", DATA_VA + 0x1000)}
    assert all(f.range.phys == DATA_PA + 0x1000 for f in tab)
    assert {f.severity for f in tab} == ({OK} if mapped else {CRITICAL})
    # the same zeros in a dump are what they say: no signature
    res = check(k, UV)
    assert any("no UVST signature" in n for n in res.notes)


def test_working_out_ranges_leaves_the_discovery_result_as_discovered():
    """A span no UV system can have (global_mmr_shift 60) found while working out ranges is
    a note and a state range returned by ``ranges``, not written into the discovery result
    (which another check of the same system may reuse)."""
    from mmrwatch.collectors.kernel import KernelFacts
    sysm = uv.UVSystem(uv.HUBBED, "UV3", 5, [uv.Hub(0, 0, 0, 5, MMR_HI | 1 << 63, 60)])
    facts = KernelFacts("6.1", 4, 0xFFFF888000000000, 0, (1 << 52) - 1, 0, x86.CacheModes(None),
                        0, {})
    for _ in range(2):                               # the same answer each time
        out, notes = uv.ranges(sysm, facts, [])
        assert [r.name for r in out if r.kind == "unreadable"] == ["uv-MMR_HI"]
        assert [n for n in notes if n.startswith("UV MMR_HI: ")] == [notes[0]]
        assert "MMR_HI" not in {r.name for r in out}
    assert sysm.notes == [] and sysm.problems == {}


def test_the_bios_entry_and_systab_ranges_return_their_notes():
    """uvbios hands back its range or the note saying why there is none (issue 17 item 3:
    the caller joins the notes; nothing is appended to a list it passed in)."""
    rt = efi.Descriptor(efi.RUNTIME_CODE, 0x7F000000, 0xFFFFFFFEE0000000, 16,
                        efi.EFI_MEMORY_RUNTIME)
    facts = None                                  # not needed off the old memory map
    (note,) = uvbios.entry_range(0x1000, facts, [rt], False)[1]
    assert "lies in no EFI runtime region" in note
    assert uvbios.entry_range(None, facts, [rt], False) == (None, [])
    entry, notes = uvbios.entry_range(0x7F000123, facts, [rt], False)
    assert notes == [] and entry.phys == 0x7F000000 and entry.source == uv.SOURCE_UV
    (note,) = uvbios.systab_range(0x1000, [rt])[1]
    assert "UVsystab (uv_systab_phys 0x1000) lies in no EFI runtime region" in note
    assert uvbios.systab_range(None, [rt]) == (None, [])
    tab, notes = uvbios.systab_range(0x7F000040, [rt])
    assert notes == [] and tab.phys == 0x7F000000
