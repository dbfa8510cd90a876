"""Reverse lookup on a synthetic kernel: the mappings we laid out, and nothing else."""
from mmrwatch.collectors import kernel, mm, where
from mmrwatch.collectors.ptdump import Marker
from tests.synth import KERNEL, UC, SynthKernel


def test_reverse_finds_every_mapping_we_made():
    k = SynthKernel(ram_mib=16)
    k.direct_map_ram()
    mmr = 0xFA000000
    k.map(k.init_root, k.pob + mmr, mmr, 4 << 20, 1 << 21, KERNEL | UC)
    k.new_efi_root()
    k.map(k.efi_root, mmr, mmr, 4 << 20, 1 << 21, KERNEL | UC)                 # 1:1
    k.map(k.efi_root, 0xFFFFFFEF00000000, mmr + (2 << 20), 4096, 4096, KERNEL)   # EFI VA
    prog = k.program()
    facts = kernel.read_facts(prog)
    spaces = mm.address_spaces(prog, facts)
    markers = [Marker(0, "User Space"), Marker(k.pob, "Low Kernel Mapping"),
               Marker(0xFFFFFFEF00000000, "EFI Runtime Services")]
    walker = kernel.make_walker(prog, facts)
    pa1, pa2, ram = mmr + 0x1234, mmr + (2 << 20) + 8, 0x5000
    hits = {(h.mm, h.pa, h.va, h.page_size, h.area) for s in spaces.values()
            for h in where.reverse(walker, s, [pa1, pa2, ram, 0xDEAD000000], markers)}
    want = {("init_mm", pa1, k.pob + pa1, 1 << 21, "Low Kernel Mapping"),
            ("init_mm", pa2, k.pob + pa2, 1 << 21, "Low Kernel Mapping"),
            ("init_mm", ram, k.pob + ram, 1 << 21, "Low Kernel Mapping"),
            ("efi_mm", pa1, pa1, 1 << 21, "user half (1:1 when VA == PA)"),
            ("efi_mm", pa2, pa2, 1 << 21, "user half (1:1 when VA == PA)"),
            ("efi_mm", pa2, 0xFFFFFFEF00000008, 4096, "EFI Runtime Services"),
            # efi_mm shares init_mm's kernel half: the direct map is reachable there too
            ("efi_mm", pa1, k.pob + pa1, 1 << 21, "Low Kernel Mapping"),
            ("efi_mm", pa2, k.pob + pa2, 1 << 21, "Low Kernel Mapping"),
            ("efi_mm", ram, k.pob + ram, 1 << 21, "Low Kernel Mapping")}
    assert hits == want


def test_parse_phys():
    assert where.parse_phys("fa000000") == where.parse_phys("0xFA000000") == 0xFA000000
    assert where.parse_phys("zz") is None and where.parse_phys("-1") is None
