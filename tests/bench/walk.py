"""Walker benchmark: prints ratios measured in one run (not a timed test).

1. targeted check of UV-sized ranges vs drgn's ``follow_phys`` for every 4 KiB page
   (goal: >= 100x faster);
2. the same check vs the floor of reading each covering table page once (goal: <= 3x);
3. full walk of a synthetic 64 TiB direct map, 1 GiB and 2 MiB pages (goal: <= 2 s).

Run: ``.venv/bin/python -m tests.bench.walk``
"""
from __future__ import annotations

import time
from array import array

import drgn
from drgn.helpers.linux.mm import follow_phys

from mmrwatch.collectors import kernel, x86
from mmrwatch.collectors.check import Checker
from mmrwatch.collectors.mm import address_spaces
from mmrwatch.collectors.pagetable import TableReader, Walker, extents
from mmrwatch.collectors.ranges import DIRECT, Expectation, Range
from tests.synth import KERNEL, TABLE, UC, SynthKernel


def _uv_like(page: int) -> tuple[SynthKernel, list[Range]]:
    """Low MMRs (32+32 MiB) and an 8-blade MMR_HI (8 x 64 MiB), UC, checked in both mms."""
    k = SynthKernel(ram_mib=64 if page > 4096 else 96)
    k.direct_map_ram()
    spans = [("LOCAL_MMR", 0xFA000000, 32 << 20, None), ("GLOBAL_MMR32", 0xFC000000, 32 << 20, None)]
    base = 0x3FFF0000000
    spans += [("MMR_HI", base + b * (64 << 20), 64 << 20, b) for b in range(8)]
    for _, pa, size, _ in spans:
        k.map(k.init_root, k.pob + pa, pa, size, page, KERNEL | UC | x86.G)
    k.new_efi_root()
    ranges = [Range(n, pa, size, "bench", n, b, expectations=tuple(
        Expectation(mm, DIRECT, k.pob + pa, frozenset({"UC"}), shared_from=None)
        for mm in ("init_mm", "efi_mm"))) for n, pa, size, b in spans]
    return k, ranges


def best(fn, n=5) -> float:
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def bench_targeted(page: int) -> None:
    k, ranges = _uv_like(page)
    prog = k.program()
    facts = kernel.read_facts(prog)
    spaces = address_spaces(prog, facts)
    total = sum(r.size for r in ranges) * 2

    def ours():
        Checker(facts, spaces, kernel.make_walker(prog, facts)).check(ranges)

    t_ours = best(ours)
    # follow_phys per 4 KiB page on a sample (the whole thing takes minutes), scaled
    sample_pages = 4096
    pages = [(mm, r.expectations[0].va + off) for r in ranges[:1]
             for mm in ("init_mm", "efi_mm") for off in range(0, sample_pages * 2048, 4096)][:sample_pages]
    mm_objs = {"init_mm": prog["init_mm"], "efi_mm": prog["efi_mm"]}

    def theirs():
        for mm, va in pages:
            follow_phys(mm_objs[mm], va)   # public helper; reads mm->pgd

    t_sample = best(theirs, 3)
    t_theirs = t_sample * (total // 4096) / len(pages)
    # the floor: read each table page the check touches, once, and nothing else
    w = kernel.make_walker(prog, facts)
    Checker(facts, spaces, w).check(ranges)
    touched = list(w.reader._cache)

    def floor():
        for pa in touched:
            array("Q", prog.read(pa, 4096, True))

    t_floor = best(floor)
    print(f"targeted check, {page >> 10} KiB pages: {len(ranges)} ranges x 2 mms = {total >> 20} MiB "
          f"in {t_ours * 1e3:.2f} ms, {len(touched)} table pages")
    print(f"  vs follow_phys per 4 KiB page ({total // 4096} pages, {t_theirs:.2f} s extrapolated "
          f"from {len(pages)}): {t_theirs / t_ours:.0f}x faster (goal >= 100x)")
    print(f"  vs reading each covering table page once ({t_floor * 1e3:.2f} ms): "
          f"{t_ours / t_floor:.2f}x the floor (goal <= 3x)")
    if page == 4096:
        _exact_test_cost(prog, touched, t_floor)


def _exact_test_cost(prog, touched: list[int], t_floor: float) -> None:
    """What deciding "this 4 KiB table is one linear run" exactly costs in CPython, per
    table, next to reading it: a big-int identity and bytes.translate of a code template
    plus one compare.  With the read itself, this bounds how close to the floor a walker
    that must look at every entry can get."""
    from mmrwatch.collectors.linear import _ONES, _RAMP
    raws = [prog.read(pa, 4096, True) for pa in touched]
    v0s = [int.from_bytes(r[:8], "little") for r in raws]
    ramp = _RAMP[x86.PTE]
    tmpl = bytes(range(256)) * 16

    def bigint():
        for r, v0 in zip(raws, v0s):
            _ = int.from_bytes(r, "little") == v0 * _ONES + ramp

    def translate():
        for r, v0 in zip(raws, v0s):
            _ = r == tmpl.translate(r[:8] * 32)

    per_read = t_floor / len(touched)
    for name, fn in (("big-int (walker)", bigint), ("bytes.translate", translate)):
        t = best(fn) / len(touched)
        print(f"  exact linear test alone, {name}: {t * 1e6:.2f} us per table = "
              f"{t / per_read:.1f}x one table read ({per_read * 1e6:.2f} us)")


def _huge_direct_map(page: int) -> tuple[SynthKernel, int]:
    """64 TiB direct map built table by table (fast), with ``page``-sized leaves."""
    size = 64 << 40
    ntables_pmd = size >> 30 if page == 1 << 21 else 0     # one PMD table per GiB
    k = SynthKernel(ram_mib=(1 << 20 >> 20) + (ntables_pmd * 4096 >> 20) + 8)
    flags = KERNEL | x86.G | x86.PSE
    npud = size >> 39     # PUD tables needed (each covers 512 GiB)
    for t in range(npud):
        va = k.pob + (t << 39)
        pud = k.table_for(k.init_root, va, x86.PUD)
        if page == 1 << 30:
            ents = array("Q", (((t << 39) + (i << 30)) | flags for i in range(512)))
        else:
            ents = array("Q")
            for i in range(512):
                pmd = k.alloc()
                base = (t << 39) + (i << 30)
                pmds = array("Q", (x | flags for x in range(base, base + (1 << 30), 1 << 21)))
                k.ram[pmd:pmd + 4096] = pmds.tobytes()
                ents.append(pmd | TABLE)
        k.ram[pud:pud + 4096] = ents.tobytes()
    return k, size


def bench_full(page: int) -> None:
    k, size = _huge_direct_map(page)
    prog = k.program()
    facts = kernel.read_facts(prog)
    leaves = 0

    def walk():
        nonlocal leaves
        w = Walker(TableReader(lambda pa, n: prog.read(pa, n, True)), 4, facts.phys_mask)
        ex = list(extents(w, k.init_root, k.pob, k.pob + size))
        leaves = sum(e.size // e.page_size for e in ex)
        assert len(ex) == 1 and not w.errors

    t = best(walk, 3)
    print(f"full walk, 64 TiB direct map in {page >> 20 if page < 1 << 30 else page >> 30}"
          f"{' MiB' if page < 1 << 30 else ' GiB'} pages ({leaves} leaves): {t:.2f} s (goal <= 2 s)")


if __name__ == "__main__":
    print(f"drgn {drgn.__version__}")
    bench_targeted(1 << 21)
    bench_targeted(4096)
    bench_full(1 << 30)
    bench_full(1 << 21)
