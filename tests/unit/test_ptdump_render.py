"""``ptdump.render`` on synthetic kernels, against listings written from the kernel's rules
(``note_page()`` / ``printk_prot()`` of arch/x86/mm/dump_pagetables.c, v5.6+ generic
ptdump): one line per run of equal flags and level, closed at every marker; the size in
the largest unit that divides it; the flag columns; holes in a folded p4d are "pgd"; a
marker's ``max_lines`` cuts its lines with "... N entries skipped ...".  The real kernels'
own dumps are compared in tests/test_ptdump_truth.py."""
from mmrwatch.collectors import kernel, ptdump, x86
from tests.synth import KERNEL, UC, SynthKernel

END = 1 << 64


def _render(k: SynthKernel, markers: list[ptdump.Marker]) -> list[str]:
    prog = k.program()
    return ptdump.render(kernel.make_walker(prog, kernel.read_facts(prog)), k.init_root, markers)


def _kernel() -> SynthKernel:
    """4 MiB of 2 MiB global pages at the direct map's start, then two 4 KiB UC pages."""
    k = SynthKernel(ram_mib=4)
    k.map(k.init_root, k.pob, 0, 4 << 20, 1 << 21, KERNEL | x86.G)
    k.map(k.init_root, k.pob + (4 << 20), 4 << 20, 8192, 4096, KERNEL | UC)
    return k


def _markers(pob: int, low_lines: int = 0) -> list[ptdump.Marker]:
    return [ptdump.Marker(0, "User Space"), ptdump.Marker(1 << 63, "Kernel Space"),
            ptdump.Marker(pob, "Low Kernel Mapping", low_lines),
            ptdump.Marker(pob + (1 << 40), "vmalloc() Area"), ptdump.Marker(END - 1, None)]


def test_runs_levels_flags_and_markers_as_the_kernel_prints_them():
    k = _kernel()
    blank = " " * 30
    assert _render(k, _markers(k.pob)) == [
        "---[ User Space ]---",
        # the user half and the guard hole: no table, pgd holes (the p4d is folded)
        f"0x0000000000000000-0xffff880000000000    16777096T {blank}pgd",
        "---[ Kernel Space ]---",
        f"0xffff880000000000-0xffff888000000000         512G {blank}pgd",
        "---[ Low Kernel Mapping ]---",
        "0xffff888000000000-0xffff888000400000           4M     RW         PSE     GLB NX pmd",
        "0xffff888000400000-0xffff888000402000           8K     RW PWT PCD             NX pte",
        f"0xffff888000402000-0xffff888000600000        2040K {blank}pte",
        f"0xffff888000600000-0xffff888040000000        1018M {blank}pmd",
        f"0xffff888040000000-0xffff890000000000         511G {blank}pud",
        f"0xffff890000000000-0xffff898000000000         512G {blank}pgd",
        "---[ vmalloc() Area ]---",
        # "Flush out the last page": the last run ends at address 0 (wrapped)
        f"0xffff898000000000-0x0000000000000000      121344G {blank}pgd",
    ]


def test_a_markers_max_lines_cuts_its_listing():
    k = _kernel()
    out = _render(k, _markers(k.pob, low_lines=2))
    low = out[out.index("---[ Low Kernel Mapping ]---") + 1:out.index("---[ vmalloc() Area ]---")]
    assert [ln.split()[0] for ln in low[:2]] == ["0xffff888000000000-0xffff888000400000",
                                                 "0xffff888000400000-0xffff888000402000"]
    assert low[2:] == ["... 4 entries skipped ... "]


def test_user_and_pat_columns():
    """USR for a user page; PAT is bit 7 in a pte and bit 12 in a large page."""
    none = "    "                             # an unset column: 4 wide
    assert x86.X86_64.prot_columns(x86.P | x86.US | x86.RW | x86.PAT_4K, x86.PTE) == \
        "USR " + "RW " + none * 3 + "PAT " + none + "x  " + "pte"
    assert x86.X86_64.prot_columns(x86.P | x86.PSE | x86.PAT_LARGE, x86.PMD) == \
        none + "ro " + none * 2 + "PSE " + "PAT " + none + "x  " + "pmd"
    assert x86.X86_64.prot_columns(0, x86.PUD) == " " * 30 + "pud"
