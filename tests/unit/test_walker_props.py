"""Property: on random page tables our walker agrees with drgn's own C translator."""
from _drgn import _linux_helper_follow_phys
import drgn
from hypothesis import HealthCheck, given, settings, strategies as st

from mmrwatch.collectors import kernel, x86
from mmrwatch.collectors.pagetable import extents
from tests.synth import KERNEL, UC, SynthKernel

PAGES = [4096, 1 << 21, 1 << 30]
FLAGS = [KERNEL, KERNEL | UC, KERNEL | x86.PCD, KERNEL | x86.PAT_4K, KERNEL & ~x86.NX]

mapping = st.tuples(
    st.integers(0, 255),            # top-level slot (user half: efi-style identity space)
    st.integers(0, 511), st.integers(0, 511), st.integers(0, 511),
    st.sampled_from(PAGES), st.integers(0, (1 << 40) - 1), st.sampled_from(FLAGS),
    st.integers(1, 4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(levels=st.sampled_from([4, 5]), maps=st.lists(mapping, min_size=1, max_size=12),
       probes=st.lists(st.integers(0, (1 << 20) - 1), min_size=4, max_size=16))
def test_walker_matches_drgn(levels, maps, probes):
    k = SynthKernel(levels=levels, ram_mib=16)
    k.direct_map_ram()
    root = k.new_efi_root()
    vas = []
    for top, i3, i2, i1, page, pa, flags, n in maps:
        sh = x86.level_shift(x86.top_level(levels))
        va = (top << sh) | (i3 << 30) | (i2 << 21) | (i1 << 12)
        va -= va % page
        pa -= pa % page
        try:
            k.map(root, va, pa, n * page if page != 1 << 30 else page, page, flags)
        except (ValueError, AssertionError, MemoryError):
            continue        # overlaps an existing huge page / out of synthetic RAM
        vas.append(va)
    if not vas:
        return
    prog = k.program()
    facts = kernel.read_facts(prog)
    w = kernel.make_walker(prog, facts)
    pgd = k.pob + root
    for i, p in enumerate(probes):
        va = vas[i % len(vas)] + p * 4096 // 16 + (p & 0xfff)
        mine = w.translate(root, va)
        try:
            theirs = _linux_helper_follow_phys(prog, pgd, va)
        except drgn.FaultError:
            theirs = None
        assert (mine[0] if mine else None) == theirs, hex(va)
    # the extents cover exactly the translated VAs
    for va in vas:
        ex = list(extents(w, root, va, va + 4096))
        assert ex and ex[0].va <= va < ex[0].va + ex[0].size
    assert not w.errors
