"""The page-table walker on synthetic kernels: levels, page sizes, PAT, corrupt tables."""
import pytest

from mmrwatch.collectors import kernel, x86
from mmrwatch.collectors.pagetable import Walker, TableReader, extents
from tests.synth import KERNEL, UC, SynthKernel


def _walker(k: SynthKernel) -> Walker:
    prog = k.program()
    return kernel.make_walker(prog, kernel.read_facts(prog))


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("page", [4096, 1 << 21, 1 << 30])
def test_every_page_size_translates(levels, page):
    k = SynthKernel(levels=levels)
    va = k.pob + (8 << 30)
    k.map(k.init_root, va, 0x4000_0000, 2 * page, page)
    w = _walker(k)
    pa, level, val = w.translate(k.init_root, va + page + 0x123)
    assert pa == 0x4000_0000 + page + 0x123
    assert x86.level_size(level) == page
    assert w.translate(k.init_root, va + 2 * page) is None
    ex = list(extents(w, k.init_root, va, va + 2 * page))
    assert [(e.va, e.pa, e.size, e.page_size) for e in ex] == [(va, 0x4000_0000, 2 * page, page)]


def test_extents_split_on_flags_and_pa_discontinuity():
    k = SynthKernel()
    va = k.pob + (1 << 30)
    k.map(k.init_root, va, 0x100000, 0x3000)
    k.map(k.init_root, va + 0x3000, 0x200000, 0x1000)            # PA jumps
    k.map(k.init_root, va + 0x4000, 0x201000, 0x1000, flags=KERNEL | UC)  # cache differs
    w = _walker(k)
    ex = list(extents(w, k.init_root, va, va + 0x5000))
    assert [(e.va - va, e.pa, e.size) for e in ex] == [(0, 0x100000, 0x3000),
                                                       (0x3000, 0x200000, 0x1000),
                                                       (0x4000, 0x201000, 0x1000)]


def test_pat_bit_positions_and_kernel_table():
    # PAT on 4 KiB (bit 7) and 2 MiB (bit 12) leaves selects the same PAT index.
    tbl = [0, 1, 2, 3, 4, 5, 1, 2]           # a made-up PAT layout: idx 4 -> WT, 5 -> WP
    k = SynthKernel(cachemode_tbl=tbl)
    va = k.pob + (2 << 30)
    k.map(k.init_root, va, 0x10_0000, 4096, 4096, KERNEL | x86.PAT_4K)
    k.map(k.init_root, va + (1 << 21), 0x20_0000, 1 << 21, 1 << 21, KERNEL | x86.PAT_4K | x86.PWT)
    prog = k.program()
    facts = kernel.read_facts(prog)
    assert facts.cache.from_kernel
    w = kernel.make_walker(prog, facts)
    e4k, e2m = list(extents(w, k.init_root, va, va + (4 << 20)))
    assert facts.cache.mode(e4k.val, e4k.level) == "WT"
    assert facts.cache.mode(e2m.val, e2m.level) == "WP"
    assert e2m.pa == 0x20_0000          # the PAT bit is not part of the address


def test_default_pat_layout_when_kernel_table_absent():
    k = SynthKernel()
    va = k.pob + (2 << 30)
    k.map(k.init_root, va, 0, 4096, 4096, KERNEL | x86.PCD)
    k.map(k.init_root, va + 4096, 0, 4096, 4096, KERNEL | UC)
    prog = k.program()
    facts = kernel.read_facts(prog)
    assert not facts.cache.from_kernel
    w = kernel.make_walker(prog, facts)
    modes = [facts.cache.mode(e.val, e.level) for e in extents(w, k.init_root, va, va + 8192)]
    assert modes == ["UC-", "UC"]


def test_shared_kernel_half_is_read_once():
    k = SynthKernel()
    k.direct_map_ram()
    k.new_efi_root()
    w = _walker(k)
    a = list(extents(w, k.init_root, k.pob, k.pob + (64 << 20)))
    reads = w.reader.reads
    b = list(extents(w, k.efi_root, k.pob, k.pob + (64 << 20)))
    assert a == b
    assert w.reader.reads == reads + 1      # only efi_mm's own top-level page


def test_linear_leaf_tables_are_read_once_and_not_kept():
    """A whole linear PTE table is decided from one read and remembered as its first entry
    only; efi_mm's revisit through the shared kernel half reads nothing new."""
    k = SynthKernel()
    va, pa = k.pob + (4 << 30), 0x10_0000_0000
    k.map(k.init_root, va, pa, 8 << 20, 4096, KERNEL | UC)      # 4 whole PTE tables
    k.new_efi_root()
    w = _walker(k)
    a = list(extents(w, k.init_root, va, va + (8 << 20)))
    assert [(e.va, e.pa, e.size, e.level) for e in a] == [(va, pa, 8 << 20, x86.PTE)]
    assert w.reader.reads == 3 + 4            # root, PUD, PMD tables + the 4 PTE tables
    assert len(w.reader._cache) == 3          # the PTE tables live on as memo entries
    b = list(extents(w, k.efi_root, va, va + (8 << 20)))
    assert b == a and w.reader.reads == 3 + 4 + 1
    # a partial walk of a memoised table still gets the right slice (re-read once, kept)
    c = list(extents(w, k.init_root, va + 4096, va + 3 * 4096))
    assert [(e.va, e.pa, e.size) for e in c] == [(va + 4096, pa + 4096, 2 * 4096)]


def test_non_linear_leaf_table_is_kept_and_walked_entry_by_entry():
    k = SynthKernel()
    va, pa = k.pob + (4 << 30), 0x10_0000_0000
    k.map(k.init_root, va, pa, 2 << 20, 4096, KERNEL | UC)
    k.map(k.init_root, va + 5 * 4096, pa + 5 * 4096, 4096, 4096, KERNEL)   # one WB page
    w = _walker(k)
    got = [(e.va - va, e.size // 4096, e.val & UC) for e in extents(w, k.init_root, va, va + (2 << 20))]
    assert got == [(0, 5, UC), (5 * 4096, 1, 0), (6 * 4096, 506, UC)]
    assert len(w.reader._cache) == 4


def test_sme_c_bit_is_stripped():
    c_bit = 1 << 47
    k = SynthKernel(sme_me_mask=c_bit)
    va = k.pob + (3 << 30)
    k.map(k.init_root, va, 0x30_0000, 4096)
    w = _walker(k)
    assert w.translate(k.init_root, va)[0] == 0x30_0000


def test_loop_is_an_error_not_a_hang():
    k = SynthKernel()
    va = k.pob + (4 << 30)
    k.map(k.init_root, va, 0, 4096)
    pud = k.table_for(k.init_root, va, x86.PUD)
    # a PUD entry pointing back at the root table: a cycle
    k.write_entry(pud, 5, k.init_root | 0x63)
    w = _walker(k)
    list(extents(w, k.init_root, va, va + (8 << 30)))
    assert any("loop" in e.message for e in w.errors)


def test_pointer_outside_memory_and_reserved_ps():
    k = SynthKernel(ram_mib=8)
    va = k.pob + (4 << 30)
    k.map(k.init_root, va, 0, 4096)
    pmd = k.table_for(k.init_root, va, x86.PMD)
    k.write_entry(pmd, 7, (1 << 40) | 0x63)                    # table far beyond RAM
    k.write_entry(k.init_root, 300, 0x200000 | 0x63 | x86.PSE)  # PS at p4d: reserved
    w = _walker(k)
    ex = list(extents(w, k.init_root, va, va + (1 << 30)))
    assert ex and ex[0].pa == 0
    msgs = [e.message for e in w.errors]
    assert any("unreadable" in m for m in msgs)
    list(extents(w, k.init_root, x86.canonical(300 << 39, 4), x86.canonical(301 << 39, 4)))
    assert any("PS bit" in e.message for e in w.errors)


def test_misaligned_huge_page_is_reported():
    k = SynthKernel()
    va = k.pob + (5 << 30)
    pmd = k.table_for(k.init_root, va, x86.PMD)
    k.write_entry(pmd, 0, 0x202000 | x86.PSE | KERNEL)   # bit 13: not PAT, misaligned
    w = _walker(k)
    assert list(extents(w, k.init_root, va, va + (2 << 20))) == []
    assert "misaligned" in w.errors[0].message


def test_walk_budget_bounds_a_pathological_tree():
    k = SynthKernel()
    va = k.pob
    for i in range(64):
        k.map(k.init_root, va + i * (1 << 21), 0, 4096)   # 64 PTE tables
    prog = k.program()
    facts = kernel.read_facts(prog)
    w = Walker(TableReader(lambda pa, n: prog.read(pa, n, True)), facts.arch, max_tables=10)
    list(extents(w, k.init_root, va, va + (1 << 30)))
    assert any("budget" in e.message for e in w.errors)


@pytest.mark.parametrize("page", [4096, 1 << 21])
def test_effective_protection_includes_the_leaf_of_whole_linear_tables(page):
    """Whole linear leaf tables take a fast path: their effective protection must still
    combine the leaf entries' bits with the upper levels' (dump_pagetables.c
    effective_prot()), and a following partial table with the same protection continues
    the same extent."""
    k = SynthKernel()
    va = k.pob + (4 << 30)
    span = 512 * page                                    # one whole leaf table
    ro = (KERNEL & ~x86.RW) & ~x86.NX                    # read-only, executable leaves
    k.map(k.init_root, va, 0x4000_0000, span + 3 * page, page, flags=ro)
    w = _walker(k)
    ex = list(extents(w, k.init_root, va, va + span + 3 * page))
    assert [(e.va, e.size) for e in ex] == [(va, span + 3 * page)]
    assert not ex[0].eff & x86.RW and not ex[0].eff & x86.NX
