"""The checker's verdicts on synthetic kernels, written down from the rules, not the tool."""
import pytest

from mmrwatch.collectors import x86
from mmrwatch.collectors.check import CRITICAL, INFO, OK, WARNING
from tests.synth import KERNEL, UC, SynthKernel, check

MMR = 0xFA000000            # a UV-style low MMR range: 32 MiB, UC, in the direct map
MMR_SIZE = 32 << 20
FLASH, FLASH_VA = 0xFFC00000, 0xFFFFFFFEFFC00000
RUNTIME, MMIO, CODE = 1 << 63, 11, 5


def _by(res, name, mm, rule):
    return next(f for f in res.findings if f.range.name == name and f.mm == mm and f.exp.rule == rule)


MMR_TOML = f"""
[[range]]
name = "mmr"
start = {MMR:#x}
size = "32MiB"
va = "direct"
cache = "uncached"
writable = true
executable = false
"""


def _healthy() -> SynthKernel:
    k = SynthKernel()
    k.direct_map_ram()
    k.map(k.init_root, k.pob + MMR, MMR, MMR_SIZE, 1 << 21, KERNEL | UC | x86.G)
    k.new_efi_root()
    return k


def test_healthy_mmr_is_ok_in_both(tmp_path):
    res = check(_healthy(), ranges_toml=MMR_TOML, tmp=tmp_path)
    for mm in ("init_mm", "efi_mm"):
        f = _by(res, "mmr", mm, "direct")
        assert (f.status, f.severity, f.mapped_bytes) == ("ok", OK, MMR_SIZE)
        assert f.cache_modes == ["UC"] and f.page_sizes == [1 << 21]
    assert res.verdict == OK


def test_range_under_a_shared_root_entry_is_walked_once(tmp_path, monkeypatch):
    """efi_mm's copy of init_mm's root entry means the same tree below: one walk answers
    both; a root entry of its own (here: not yet synced) is walked on its own."""
    from mmrwatch.collectors import check as checker
    walks = []
    real = checker.extents
    monkeypatch.setattr(checker, "extents", lambda w, root, lo, hi: walks.append(root) or real(w, root, lo, hi))
    k = _healthy()
    res = check(k, ranges_toml=MMR_TOML, tmp=tmp_path)
    assert [_by(res, "mmr", mm, "direct").status for mm in ("init_mm", "efi_mm")] == ["ok", "ok"]
    assert walks == [k.init_root]
    walks.clear()
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()        # synced before the MMR mapping: efi_mm's slot is stale
    k.map(k.init_root, k.pob + (8 << 40) + MMR, MMR, MMR_SIZE, 1 << 21, KERNEL | UC | x86.G)
    res = check(k, ranges_toml=MMR_TOML.replace(f"start = {MMR:#x}",
                                                f"start = {(8 << 40) + MMR:#x}"), tmp=tmp_path)
    assert _by(res, "mmr", "efi_mm", "direct").status == "stale"
    assert walks[:2] == [k.init_root, k.efi_root]


def test_2016_regression_mmr_only_in_efi_identity_map(tmp_path):
    """The firmware lists the MMRs as runtime MMIO; EFI maps them 1:1, the kernel never."""
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    k.map(k.efi_root, MMR, MMR, MMR_SIZE, 1 << 21, KERNEL | x86.PCD)
    k.add_efi_desc(MMIO, MMR, 0, MMR_SIZE >> 12, RUNTIME | 1)
    res = check(k, ranges_toml=MMR_TOML, tmp=tmp_path)
    f = _by(res, "mmr", "init_mm", "direct")
    assert (f.status, f.severity, f.missing_bytes) == ("missing", CRITICAL, MMR_SIZE)
    assert _by(res, "efi-MMIO-0", "efi_mm", "identity").severity == OK
    assert res.verdict == CRITICAL


def test_reverse_mapped_in_init_not_shared_into_efi(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root(share_kernel_half=False)   # efi_mm never got the kernel half
    k.map(k.init_root, k.pob + MMR, MMR, MMR_SIZE, 1 << 21, KERNEL | UC)
    # init_mm slot and efi_mm slot differ, and init_mm maps it: the stale window
    res = check(k, ranges_toml=MMR_TOML, tmp=tmp_path)
    f = _by(res, "mmr", "efi_mm", "direct")
    assert (f.status, f.severity) == ("stale", WARNING)
    assert res.verdict == WARNING


def test_missing_from_both_is_critical_not_stale(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    res = check(k, ranges_toml=MMR_TOML, tmp=tmp_path)
    assert _by(res, "mmr", "efi_mm", "direct").severity == CRITICAL
    assert _by(res, "mmr", "init_mm", "direct").severity == CRITICAL


def test_write_back_mmr_is_wrong_cache(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    k.map(k.init_root, k.pob + MMR, MMR, MMR_SIZE, 1 << 21, KERNEL)   # WB!
    k.new_efi_root()
    f = _by(check(k, ranges_toml=MMR_TOML, tmp=tmp_path), "mmr", "init_mm", "direct")
    assert (f.status, f.severity, f.wrong_cache_bytes) == ("wrong-cache", CRITICAL, MMR_SIZE)


def test_hole_inside_range_is_partial(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    k.map(k.init_root, k.pob + MMR, MMR, 16 << 20, 1 << 21, KERNEL | UC)
    k.map(k.init_root, k.pob + MMR + (18 << 20), MMR + (18 << 20), 14 << 20, 1 << 21, KERNEL | UC)
    k.new_efi_root()
    f = _by(check(k, ranges_toml=MMR_TOML, tmp=tmp_path), "mmr", "init_mm", "direct")
    assert (f.status, f.missing_bytes, f.mapped_bytes) == ("partial", 2 << 20, 30 << 20)


def test_misdirected_mapping(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    k.map(k.init_root, k.pob + MMR, MMR + (64 << 20), MMR_SIZE, 1 << 21, KERNEL | UC)
    k.new_efi_root()
    f = _by(check(k, ranges_toml=MMR_TOML, tmp=tmp_path), "mmr", "init_mm", "direct")
    assert (f.status, f.misdirected_bytes) == ("misdirected", MMR_SIZE)


def test_executable_mmr_is_wrong_perm_warning(tmp_path):
    k = SynthKernel()
    k.direct_map_ram()
    k.map(k.init_root, k.pob + MMR, MMR, MMR_SIZE, 1 << 21, (KERNEL & ~x86.NX) | UC)
    k.new_efi_root()
    f = _by(check(k, ranges_toml=MMR_TOML, tmp=tmp_path), "mmr", "init_mm", "direct")
    assert (f.status, f.severity) == ("wrong-perm", WARNING)


def test_efi_runtime_regions_identity_and_efi_va():
    k = _healthy()
    k.map(k.efi_root, FLASH, FLASH, 4 << 20, 1 << 21, KERNEL | x86.PCD)
    k.map(k.efi_root, FLASH_VA, FLASH, 4 << 20, 1 << 21, KERNEL | x86.PCD)
    k.add_efi_desc(MMIO, FLASH, FLASH_VA, 1024, RUNTIME | 1)
    k.add_efi_desc(7, 0x100000, 0, 16, 0xF)        # conventional, not runtime: ignored
    res = check(k)
    assert [r.name for r in res.ranges] == ["efi-MMIO-0"]
    assert _by(res, "efi-MMIO-0", "efi_mm", "identity").cache_modes == ["UC-"]
    assert _by(res, "efi-MMIO-0", "efi_mm", "efi_va").severity == OK
    init = _by(res, "efi-MMIO-0", "init_mm", "direct")
    assert (init.status, init.severity) == ("missing", INFO)     # observed, not required
    assert res.verdict == INFO


def test_runtime_code_must_be_executable_without_mem_attr_table():
    k = _healthy()
    k.map(k.efi_root, 0x200000, 0x200000, 0x2000, 4096, KERNEL)          # NX code
    k.add_efi_desc(CODE, 0x200000, 0, 2, RUNTIME | 0xF)
    f = _by(check(k), "efi-RuntimeServicesCode-0", "efi_mm", "identity")
    assert f.status == "wrong-perm"


@pytest.mark.parametrize("flags,reason", [
    (0b0, "not booted through EFI"),
    (0b1, "runtime services disabled"),
])
def test_efi_mm_without_table_is_a_state(flags, reason, tmp_path):
    k = SynthKernel(efi_flags=flags)
    k.direct_map_ram()
    k.map(k.init_root, k.pob + MMR, MMR, MMR_SIZE, 1 << 21, KERNEL | UC)
    res = check(k, ranges_toml=MMR_TOML, tmp=tmp_path)
    assert reason in res.spaces["efi_mm"].reason
    f = _by(res, "mmr", "efi_mm", "direct")
    assert (f.status, f.severity) == ("skipped", INFO)
    assert res.verdict == OK or res.verdict == INFO


def test_unreadable_tables_are_reported_critical(tmp_path):
    k = _healthy()
    pmd = k.table_for(k.init_root, k.pob + MMR, x86.PMD)
    pud = k.table_for(k.init_root, k.pob + MMR, x86.PUD)
    k.write_entry(pud, (MMR >> 30) & 511, (1 << 41) | 0x63)     # PMD table outside memory
    f = _by(check(k, ranges_toml=MMR_TOML, tmp=tmp_path), "mmr", "init_mm", "direct")
    assert (f.status, f.severity) == ("unreadable", CRITICAL)
    assert pmd  # the old table is simply orphaned
